"""The compatible routes in process: /v1/embeddings, /v1/models, /v1/rerank, /v2/rerank, their error shape,
and /rerank's card score for a reranker that fuses pairwise (the ``make reranker`` card's shape).

The real SDKs against a real server are in ``test_app_sdks.py``.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.runtime import Runtime
from app.settings import Settings
from semsearch.models.reranker import Reranker, fuse_logits

pytest_plugins = ["app_fixtures", "compat_fixtures"]

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
QUERY = "a large wild cat"
TEXTS = ["a lion resting in the grass", "a spoon for soup", "a small domestic cat", "the price of oil rose"]


@pytest.fixture(scope="module")
def cclient(app_settings: Callable[..., Settings], compat_reranker_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(app_settings(reranker=str(compat_reranker_dir))), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def runtime(cclient: TestClient) -> Runtime:
    rt: Runtime = cclient.app.state.runtime  # type: ignore[attr-defined]
    return rt


@pytest.fixture(scope="module")
def reranker(runtime: Runtime) -> Reranker:
    assert runtime.services.reranker is not None
    return runtime.services.reranker


def openai_error(response: Any, status: int, code: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape, exactly its four keys."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["code"] == code and isinstance(error["message"], str) and error["message"], error
    assert error["param"] == param, error
    return dict(error)


def test_models_list_the_encoder_then_the_reranker(cclient: TestClient, compat_reranker_dir: Path) -> None:
    body = cclient.get("/v1/models").json()
    assert body["object"] == "list"
    encoder, reranker = body["data"]
    assert encoder["id"] == MODEL and encoder["object"] == "model" and encoder["owned_by"] == "semsearch"
    assert encoder["kind"] == "embedding" and encoder["aliases"] == ["all-MiniLM-L6-v2"]
    assert reranker["id"] == str(compat_reranker_dir) and reranker["kind"] == "rerank"
    assert reranker["aliases"] == ["reranker"] and isinstance(reranker["created"], int)
    assert cclient.get("/v1/models/all-MiniLM-L6-v2").json()["id"] == MODEL
    assert cclient.get(f"/v1/models/{MODEL}").json()["id"] == MODEL
    openai_error(cclient.get("/v1/models/gpt-4"), 404, "model_not_found", "model")


def test_models_without_reranker_list_only_the_encoder(app_client: TestClient) -> None:
    assert [m["id"] for m in app_client.get("/v1/models").json()["data"]] == [MODEL]


def test_embeddings_float_and_base64_equal_embed(cclient: TestClient, runtime: Runtime) -> None:
    native = np.array(cclient.post("/embed", json={"texts": TEXTS}).json()["embeddings"], dtype=np.float32)
    as_float = cclient.post("/v1/embeddings", json={"model": MODEL, "input": TEXTS}).json()
    assert as_float["object"] == "list" and as_float["model"] == MODEL
    assert [d["index"] for d in as_float["data"]] == list(range(len(TEXTS)))
    assert all(d["object"] == "embedding" for d in as_float["data"])
    np.testing.assert_allclose([d["embedding"] for d in as_float["data"]], native, atol=1e-6)

    as_b64 = cclient.post(
        "/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": TEXTS, "encoding_format": "base64"}
    ).json()
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in as_b64["data"]])
    assert decoded.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(decoded, native, atol=1e-6)

    tokens = int(runtime.services.encoder.token_lengths(TEXTS).sum())
    assert as_float["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


def test_embeddings_of_one_string_and_own_dimensions(cclient: TestClient) -> None:
    native = cclient.post("/embed", json={"texts": [QUERY]}).json()["embeddings"][0]
    body = cclient.post("/v1/embeddings", json={"model": MODEL, "input": QUERY, "dimensions": 384, "user": "u1"}).json()
    assert len(body["data"]) == 1
    np.testing.assert_allclose(body["data"][0]["embedding"], native, atol=1e-6)


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"model": "text-embedding-3-small", "input": "x"}, 404, "model_not_found", "model"),
        ({"model": "reranker", "input": "x"}, 404, "model_not_found", "model"),
        ({"model": MODEL, "input": "x", "dimensions": 128}, 400, "unsupported_dimensions", "dimensions"),
        ({"model": MODEL, "input": [101, 2307, 102]}, 400, "unsupported_parameter", "input"),
        ({"model": MODEL, "input": [[101, 2307, 102]]}, 400, "unsupported_parameter", "input"),
        ({"model": MODEL, "input": []}, 400, "invalid_input", "input"),
        ({"model": MODEL, "input": ["ok", " "]}, 400, "invalid_input", "input.1"),
        ({"model": MODEL, "input": ["t"] * 65}, 400, "invalid_input", "input"),
        ({"model": MODEL, "input": "x" * 4001}, 400, "invalid_input", "input"),
        ({"input": "x"}, 400, "invalid_input", "model"),
        ({"model": MODEL, "input": "x", "encoding_format": "int8"}, 400, "invalid_input", "encoding_format"),
        ({"model": MODEL, "input": "x", "temperature": 1}, 400, "invalid_input", "temperature"),
    ],
)
def test_embeddings_refusals_are_clear_and_in_openai_shape(
    cclient: TestClient, body: dict[str, Any], status: int, code: str, param: str
) -> None:
    error = openai_error(cclient.post("/v1/embeddings", json=body), status, code, param)
    assert error["type"] == "invalid_request_error"
    if code == "model_not_found":
        assert MODEL in error["message"] and "/v1/models" in error["message"]
    if code == "unsupported_dimensions":
        assert "384" in error["message"] and "Matryoshka" in error["message"]


def test_errors_on_compat_paths_keep_status_and_headers(cclient: TestClient) -> None:
    openai_error(cclient.get("/v1/nothing"), 404, "not_found")
    bad_json = cclient.post("/v1/embeddings", content=b"{", headers={"content-type": "application/json"})
    assert openai_error(bad_json, 400, "invalid_input", None)["type"] == "invalid_request_error"
    # the native routes keep the native shape
    native = cclient.post("/embed", json={"texts": []}).json()["error"]
    assert set(native) == {"code", "message", "detail"}


def test_rerank_serves_the_cards_pairwise_fusion(cclient: TestClient, runtime: Runtime, reranker: Reranker) -> None:
    """The card stores pairwise statistics: /rerank's score is Reranker.score_pairs fused with the cosine
    (both orders, the card's weight), i.e. what ``indexer eval sts`` measures, and a text's score does not
    depend on the other texts of the request."""
    body = cclient.post("/rerank", json={"query": QUERY, "texts": TEXTS}).json()
    assert body["scoring"] == "fused_pairwise"
    vectors = runtime.services.encoder.encode([QUERY, *TEXTS])
    cosines = vectors[1:] @ vectors[0]
    pairs = [(QUERY, t) for t in TEXTS]
    expected = reranker.score_pairs(pairs, cosine_scores=cosines.tolist())
    # the same number from the primitives: mean logit of both orders, fixed z-statistics, weight 0.4
    logits = (reranker.logits(pairs).astype(np.float64) + reranker.logits([(t, QUERY) for t in TEXTS])) / 2
    assert reranker.fusion is not None and reranker.fusion.pairwise_stats is not None
    np.testing.assert_allclose(expected, fuse_logits(logits, cosines, 0.4, reranker.fusion.pairwise_stats), atol=1e-6)
    order = np.argsort(-expected, kind="stable")
    assert [r["index"] for r in body["results"]] == order.tolist()
    np.testing.assert_allclose([r["score"] for r in body["results"]], expected[order], atol=1e-4)
    alone = cclient.post("/rerank", json={"query": QUERY, "texts": [TEXTS[2]]}).json()["results"][0]["score"]
    assert alone == pytest.approx(float(expected[2]), abs=1e-4)


def test_v1_and_v2_rerank_give_rerank_scores(cclient: TestClient, reranker: Reranker) -> None:
    """Jina/Cohere raw JSON: same scores and order as /rerank; top_n, return_documents, {"text"} documents."""
    native = cclient.post("/rerank", json={"query": QUERY, "texts": TEXTS}).json()["results"]
    for path in ("/v1/rerank", "/v2/rerank"):
        documents: list[Any] = [TEXTS[0], {"text": TEXTS[1]}, *TEXTS[2:]]
        body = cclient.post(path, json={"query": QUERY, "documents": documents, "return_documents": True}).json()
        assert set(body) == {"id", "results", "model", "usage"}
        assert body["model"] == reranker.name
        assert [r["index"] for r in body["results"]] == [r["index"] for r in native]
        np.testing.assert_allclose(
            [r["relevance_score"] for r in body["results"]], [r["score"] for r in native], atol=1e-6
        )
        assert [r["document"]["text"] for r in body["results"]] == [r["text"] for r in native]
        assert body["usage"]["total_tokens"] == reranker.token_count(QUERY, TEXTS) > 0
        top = cclient.post(path, json={"model": "reranker", "query": QUERY, "documents": TEXTS, "top_n": 2}).json()
        assert [r["index"] for r in top["results"]] == [r["index"] for r in native[:2]]
        assert all("document" not in r for r in top["results"])
    raw = cclient.post("/v1/rerank", json={"query": QUERY, "documents": TEXTS, "raw_scores": True}).json()
    raw_native = cclient.post("/rerank", json={"query": QUERY, "texts": TEXTS, "raw_scores": True}).json()
    assert [r["relevance_score"] for r in raw["results"]] == [r["score"] for r in raw_native["results"]]


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"model": "rerank-v3.5", "query": QUERY, "documents": ["a"]}, 404, "model_not_found", "model"),
        ({"model": MODEL, "query": QUERY, "documents": ["a"]}, 404, "model_not_found", "model"),
        ({"query": QUERY, "documents": []}, 400, "invalid_input", "documents"),
        ({"query": " ", "documents": ["a"]}, 400, "invalid_input", "query"),
        ({"query": QUERY, "documents": ["a"], "top_n": 0}, 400, "invalid_input", "top_n"),
        ({"query": QUERY, "documents": ["a"] * 201}, 400, "invalid_input", "documents"),
        ({"query": QUERY, "documents": [{"title": "a"}]}, 400, "invalid_input", "documents.0.str"),
        ({"query": QUERY, "documents": ["a"], "rank_fields": ["title"]}, 400, "unsupported_parameter", "rank_fields"),
        (
            {"query": QUERY, "documents": ["a"], "max_chunks_per_doc": 2},
            400,
            "unsupported_parameter",
            "max_chunks_per_doc",
        ),
    ],
)
def test_rerank_refusals_in_openai_shape(
    cclient: TestClient, body: dict[str, Any], status: int, code: str, param: str
) -> None:
    openai_error(cclient.post("/v1/rerank", json=body), status, code, param)


def test_compat_rerank_without_reranker_is_503(app_client: TestClient) -> None:
    error = openai_error(app_client.post("/v1/rerank", json={"query": QUERY, "documents": ["a"]}), 503, "no_reranker")
    assert error["type"] == "server_error" and "--reranker" in error["message"]


def test_compat_routes_are_in_the_metrics(cclient: TestClient) -> None:
    cclient.post("/v1/embeddings", json={"model": MODEL, "input": "x"})
    cclient.post("/v1/rerank", json={"query": QUERY, "documents": ["a"]})
    text = cclient.get("/metrics").text
    assert 'route="/v1/embeddings",status="200"' in text
    assert 'route="/v1/rerank",status="200"' in text


def test_rerank_refuses_a_blank_text_like_embed(cclient: TestClient) -> None:
    """/rerank scored empty texts while /embed refused them (issue 20): now both refuse a blank text, and
    the compatible rerank routes too (400 in OpenAI's shape); a real text beside it still fuses."""
    r = cclient.post("/rerank", json={"query": QUERY, "texts": ["", "a lion"]})
    assert r.status_code == 422 and r.json()["error"]["detail"][0]["loc"] == ["body", "texts", "0"], r.text
    error = openai_error(cclient.post("/v1/rerank", json={"query": QUERY, "documents": [" ", "a lion"]}), 400,
                         "invalid_input", "documents.0.str")  # fmt: skip
    assert "empty or only whitespace" in error["message"]
    body = cclient.post("/rerank", json={"query": QUERY, "texts": ["a lion"]})
    assert body.status_code == 200 and body.json()["scoring"] == "fused_pairwise", body.text
