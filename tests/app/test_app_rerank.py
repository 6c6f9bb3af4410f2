"""Serving a cross-encoder reranker: /rerank, /search with rerank, /info, and the limits.

The reranker is a real (untrained) CrossEncoder on the packaged MiniLM weights with a fresh one-output
head and a hand-written ``semsearch_reranker.json`` configuring z-score fusion, so both scoring paths
of ``Reranker.score`` are served. Its order is arbitrary but deterministic, which is what these tests
need: the service must return exactly the reranker's order, never the retrieval order.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from app.main import create_app
from app.runtime import Runtime
from app.settings import Settings
from semsearch.models.reranker import RERANKER_META_FILE, Reranker, fuse_logits
from semsearch.models.source import resolve_model
from semsearch.search.modes import search as core_search

pytest_plugins = ["app_fixtures"]

Check = Callable[..., dict[str, Any]]
QUERY = "a large wild cat"


@pytest.fixture(scope="session")
def reranker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sentence_transformers import CrossEncoder

    out = tmp_path_factory.mktemp("reranker") / "model"
    torch.manual_seed(0)
    CrossEncoder(str(resolve_model(None).path), num_labels=1).save(str(out))
    meta = {
        "base_model": "sentence-transformers/all-MiniLM-L6-v2",
        "fusion": {"mode": "zscore", "weight": 0.3},
    }
    (out / RERANKER_META_FILE).write_text(json.dumps(meta))
    return out


@pytest.fixture(scope="module")
def rclient(app_settings: Callable[..., Settings], reranker_dir: Path) -> Iterator[TestClient]:
    app = create_app(app_settings(reranker=str(reranker_dir)))
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def runtime(rclient: TestClient) -> Runtime:
    rt: Runtime = rclient.app.state.runtime  # type: ignore[attr-defined]
    return rt


@pytest.fixture(scope="module")
def reranker(runtime: Runtime) -> Reranker:
    assert runtime.services.reranker is not None
    return runtime.services.reranker


def test_info_shows_the_reranker_and_its_card(rclient: TestClient, reranker_dir: Path) -> None:
    info = rclient.get("/info").json()["reranker"]
    assert info["configured"] is True and info["status"] == "loaded"
    assert info["path"] == str(reranker_dir.resolve()) and info["kind"] == "cross-encoder"
    assert info["fusion"] == {"mode": "zscore", "weight": 0.3, "pairwise_weight": 0.3, "scope": "per_query"}
    assert info["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"


RERANK_TEXTS = [
    "a spoon for soup",
    "a lion resting in the grass",
    "the price of oil rose",
    "a small domestic cat",
    "to run quickly",
    "a tiger in the jungle",
]


def test_rerank_route_returns_the_cards_fused_score(rclient: TestClient, runtime: Runtime, reranker: Reranker) -> None:
    """This card fuses per query (no stored statistics): /rerank's score is the core's fusion of the
    cross-encoder with the bi-encoder cosine of each text, not the cross-encoder alone."""
    texts = RERANK_TEXTS
    response = rclient.post("/rerank", json={"query": QUERY, "texts": texts})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"results", "took_ms", "model", "scoring"}
    assert body["scoring"] == "fused_per_query"
    vectors = runtime.services.encoder.encode([QUERY, *texts])
    cosines = vectors[1:] @ vectors[0]
    expected = reranker.score(QUERY, texts, retrieval_scores=cosines.tolist())
    assert not np.allclose(expected, reranker.score(QUERY, texts))  # the fusion changes the scores
    order = np.argsort(-expected, kind="stable")
    results = body["results"]
    assert [r["index"] for r in results] == order.tolist()
    assert all(texts[r["index"]] == r["text"] for r in results)
    np.testing.assert_allclose([r["score"] for r in results], expected[order], rtol=1e-4, atol=1e-5)
    top = rclient.post("/rerank", json={"query": QUERY, "texts": texts, "top_k": 2}).json()["results"]
    assert [r["index"] for r in top] == order[:2].tolist()


def test_rerank_raw_scores_are_the_cross_encoder_alone(rclient: TestClient, reranker: Reranker) -> None:
    texts = RERANK_TEXTS
    body = rclient.post("/rerank", json={"query": QUERY, "texts": texts, "raw_scores": True}).json()
    assert body["scoring"] == "sigmoid"
    expected = reranker.score(QUERY, texts)
    order = np.argsort(-expected, kind="stable")
    assert [r["index"] for r in body["results"]] == order.tolist()
    np.testing.assert_allclose([r["score"] for r in body["results"]], expected[order], rtol=1e-5)
    assert all(0.0 <= r["score"] <= 1.0 for r in body["results"])


def test_search_with_rerank_applies_the_cross_encoder(
    rclient: TestClient, runtime: Runtime, reranker: Reranker
) -> None:
    """Fails if rerank were skipped: the order and scores must be the reranker's, not the cosine's."""
    k, candidates = 5, 20
    response = rclient.post("/search", json={"query": QUERY, "k": k, "rerank": True, "candidates": candidates})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["reranked"] is True
    results = body["results"]
    assert len(results) == k and all(set(r) >= {"id", "text", "score", "retrieval_score", "metadata"} for r in results)

    vectors = runtime.services.encoder.encode([QUERY])
    with runtime.services.indexes.use() as index:
        hits = core_search(index, [QUERY], vectors, candidates)[0]
    cosines = [h.score for h in hits]
    expected = reranker.score(QUERY, [h.text for h in hits], retrieval_scores=cosines)
    order = np.argsort(-expected, kind="stable")[:k]
    assert [r["id"] for r in results] == [hits[i].id for i in order]
    np.testing.assert_allclose([r["score"] for r in results], expected[order], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose([r["retrieval_score"] for r in results], [cosines[i] for i in order], rtol=1e-5)
    assert all(abs(r["score"] - r["retrieval_score"]) > 1e-6 for r in results)
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)

    plain = rclient.post("/search", json={"query": QUERY, "k": k}).json()
    assert plain["reranked"] is False and all("retrieval_score" not in r for r in plain["results"])


def test_get_and_batch_search_rerank_too(rclient: TestClient) -> None:
    single = rclient.post("/search", json={"query": QUERY, "k": 3, "rerank": True}).json()
    got = rclient.get("/search", params={"q": QUERY, "k": 3, "rerank": "true"}).json()
    batch = rclient.post("/search/batch", json={"queries": [QUERY, "to run fast"], "k": 3, "rerank": True}).json()
    assert got["reranked"] is True and batch["reranked"] is True
    assert [r["id"] for r in got["results"]] == [r["id"] for r in single["results"]]
    assert [r["id"] for r in batch["results"][0]] == [r["id"] for r in single["results"]]


def test_rerank_in_hybrid_mode_fuses_with_the_hybrid_score(
    rclient: TestClient, runtime: Runtime, reranker: Reranker
) -> None:
    """Hybrid candidates are fused with their hybrid score (not the cosine, which would drop the BM25
    evidence); the response's retrieval_score stays the cosine."""
    body = rclient.post("/search", json={"query": QUERY, "k": 3, "rerank": True, "mode": "hybrid"}).json()
    assert body["reranked"] is True
    vectors = runtime.services.encoder.encode([QUERY])
    with runtime.services.indexes.use() as index:
        hits = core_search(index, [QUERY], vectors, 50, mode="hybrid")[0]
    texts = [h.text for h in hits]
    expected = reranker.score(QUERY, texts, retrieval_scores=[h.score for h in hits])
    with_cosine = reranker.score(QUERY, texts, retrieval_scores=[h.dense_score for h in hits])  # type: ignore[misc]
    assert not np.allclose(expected, with_cosine)
    order = np.argsort(-expected, kind="stable")[:3]
    assert [r["id"] for r in body["results"]] == [hits[i].id for i in order]
    np.testing.assert_allclose([r["score"] for r in body["results"]], expected[order], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose([r["retrieval_score"] for r in body["results"]], [hits[i].dense_score for i in order])


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/rerank", {"query": QUERY, "texts": []}),
        ("/rerank", {"query": QUERY, "texts": ["t"] * 201}),
        ("/rerank", {"query": QUERY, "texts": ["x" * 4001]}),
        ("/rerank", {"query": " ", "texts": ["a"]}),
        ("/rerank", {"query": QUERY, "texts": ["a"], "top_k": 0}),
        ("/rerank", {"query": QUERY, "texts": "a"}),
        ("/rerank", {"query": QUERY, "texts": ["a"], "raw_scores": "yes"}),
        ("/search", {"query": QUERY, "rerank": True, "candidates": 201}),
        ("/search", {"query": QUERY, "rerank": "yes"}),
    ],
)
def test_rerank_limits_are_422(rclient: TestClient, check_error: Check, path: str, body: Any) -> None:
    check_error(rclient.post(path, json=body), 422, "invalid_input")


def test_default_reranker_backend_auto_serves_int8_when_the_cache_is_writable(
    app_settings: Callable[..., Settings], reranker_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service's default (``auto``) serves the int8 export of a local folder (made once in the cache):
    /info names the backend that runs and /rerank's raw scores are that export's."""
    monkeypatch.setenv("SEMSEARCH_CACHE_DIR", str(tmp_path))
    with TestClient(create_app(app_settings(reranker=str(reranker_dir), reranker_backend="auto"))) as client:
        assert client.get("/info").json()["reranker"]["backend"] == "onnx-int8"
        body = client.post("/rerank", json={"query": QUERY, "texts": RERANK_TEXTS, "raw_scores": True}).json()
    assert list(tmp_path.glob("onnx/*-cross-encoder/model-int8-*.onnx"))
    int8 = Reranker(reranker_dir, backend="onnx-int8", backend_options={"cache_dir": tmp_path / "onnx"})
    expected = int8.score(QUERY, RERANK_TEXTS)
    assert not np.allclose(expected, Reranker(reranker_dir).score(QUERY, RERANK_TEXTS), rtol=0, atol=1e-6)
    served = sorted(body["results"], key=lambda r: r["index"])
    np.testing.assert_allclose([r["score"] for r in served], expected, rtol=1e-5)


def test_retrieval_weight_and_onnx_backend_settings(
    app_settings: Callable[..., Settings], reranker_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SEMSEARCH_RETRIEVAL_WEIGHT / SEMSEARCH_RERANKER_BACKEND reach the served reranker: /info says so and /search's
    scores are the ONNX logits fused with that weight."""
    monkeypatch.setenv("SEMSEARCH_CACHE_DIR", str(tmp_path))
    settings = app_settings(reranker=str(reranker_dir), retrieval_weight=0.9, reranker_backend="onnx")
    with TestClient(create_app(settings)) as client:
        info = client.get("/info").json()["reranker"]
        assert info["backend"] == "onnx" and info["fusion"]["weight"] == 0.9
        assert info["fusion"]["pairwise_weight"] == 0.3  # the folder's STS weight is kept for pairs
        body = client.post("/search", json={"query": QUERY, "k": 5, "rerank": True, "candidates": 10}).json()
        rt: Runtime = client.app.state.runtime  # type: ignore[attr-defined]
        vectors = rt.services.encoder.encode([QUERY])
        with rt.services.indexes.use() as index:
            hits = core_search(index, [QUERY], vectors, 10)[0]
    reference = Reranker(reranker_dir)  # torch
    logits = reference.logits([(QUERY, h.text) for h in hits])
    expected = fuse_logits(logits, [h.score for h in hits], 0.9)
    order = np.argsort(-expected, kind="stable")[:5]
    assert [r["id"] for r in body["results"]] == [hits[i].id for i in order]
    np.testing.assert_allclose([r["score"] for r in body["results"]], expected[order], atol=1e-3)
    assert list(tmp_path.glob("onnx/*-cross-encoder/model.onnx"))
