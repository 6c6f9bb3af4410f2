"""The HTTP contract through the in-process app (lifespan on): routes, shapes, limits and every error."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.runtime import Runtime
from app.settings import Settings
from semsearch.search.modes import search as core_search

pytest_plugins = ["app_fixtures"]

Check = Callable[..., dict[str, Any]]


@pytest.fixture(scope="module")
def runtime(app_client: TestClient) -> Runtime:
    rt: Runtime = app_client.app.state.runtime  # type: ignore[attr-defined]
    return rt


def direct_search(rt: Runtime, query: str, k: int, **kwargs: Any) -> list[dict[str, Any]]:
    """The same search through the core, without HTTP or batching."""
    vectors = rt.services.encoder.encode([query])
    with rt.services.indexes.use() as index:
        hits = core_search(index, [query], vectors, k, **kwargs)[0]
    return [{"id": h.id, "text": h.text, "score": h.score, "metadata": h.metadata} for h in hits]


# ------------------------------------------------------------------------------------------- search


def test_search_returns_cosine_ranked_results(app_client: TestClient, runtime: Runtime) -> None:
    response = app_client.post("/search", json={"query": "a large wild cat", "k": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"results", "took_ms", "index_version", "reranked"}
    assert body["index_version"] == "v000001" and body["reranked"] is False
    assert isinstance(body["took_ms"], float) and body["took_ms"] >= 0
    results = body["results"]
    assert len(results) == 5
    assert all(set(r) == {"id", "text", "score", "metadata"} for r in results)
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert "cat" in results[0]["text"]
    assert set(results[0]["metadata"]) == {"lemma", "pos", "lexname"}
    expected = direct_search(runtime, "a large wild cat", 5)
    assert [r["id"] for r in results] == [e["id"] for e in expected]
    np.testing.assert_allclose(scores, [e["score"] for e in expected], rtol=1e-5, atol=1e-6)


def test_search_default_k_is_10(app_client: TestClient) -> None:
    assert len(app_client.post("/search", json={"query": "a musical instrument"}).json()["results"]) == 10


def test_get_search_equals_post(app_client: TestClient) -> None:
    got = app_client.get("/search", params={"q": "a tool for cutting", "k": 4})
    posted = app_client.post("/search", json={"query": "a tool for cutting", "k": 4})
    assert got.status_code == 200, got.text
    assert [r["id"] for r in got.json()["results"]] == [r["id"] for r in posted.json()["results"]]


def test_batch_search_equals_single_searches(app_client: TestClient) -> None:
    queries = ["a large wild cat", "to move quickly on foot", "a feeling of happiness"]
    response = app_client.post("/search/batch", json={"queries": queries, "k": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"results", "took_ms", "index_version", "reranked"}
    assert len(body["results"]) == 3
    for query, results in zip(queries, body["results"], strict=True):
        single = app_client.post("/search", json={"query": query, "k": 3}).json()["results"]
        assert [r["id"] for r in results] == [r["id"] for r in single]


def test_filter_and_mode_are_passed_to_the_core(app_client: TestClient, runtime: Runtime) -> None:
    response = app_client.post("/search", json={"query": "to move quickly", "k": 5, "filter": {"pos": "verb"}})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert results and all(r["metadata"]["pos"] == "verb" for r in results)
    expected = direct_search(runtime, "to move quickly", 5, filter={"pos": "verb"})
    assert [r["id"] for r in results] == [e["id"] for e in expected]
    got = app_client.get("/search", params={"q": "to move quickly", "k": 5, "filter": json.dumps({"pos": "verb"})})
    assert [r["id"] for r in got.json()["results"]] == [e["id"] for e in expected]
    for mode in ("lexical", "hybrid"):
        response = app_client.post("/search", json={"query": "domestic cat", "k": 3, "mode": mode})
        assert response.status_code == 200, response.text
        expected = direct_search(runtime, "domestic cat", 3, mode=mode)
        assert [r["id"] for r in response.json()["results"]] == [e["id"] for e in expected]


def test_embed_returns_the_index_encoder_vectors(app_client: TestClient, runtime: Runtime) -> None:
    texts = ["a large wild cat", "a tool for cutting"]
    response = app_client.post("/embed", json={"texts": texts})
    assert response.status_code == 200, response.text
    body = response.json()
    manifest = runtime.services.indexes.current.manifest
    assert body["model"] == manifest.model and body["pooling"] == manifest.pooling
    assert body["dimension"] == manifest.dimension == 384
    vectors = np.asarray(body["embeddings"], dtype=np.float32)
    assert vectors.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors, runtime.services.encoder.encode(texts), atol=1e-5)


# ------------------------------------------------------------------------------------------- status


def test_health_ready_info(app_client: TestClient) -> None:
    assert app_client.get("/health").json() == {"status": "ok"}
    assert app_client.get("/ready").json() == {"status": "ready", "index_version": "v000001"}
    info = app_client.get("/info").json()
    assert info["index_version"] == "v000001" and info["count"] == info["index"]["count"] > 300
    assert info["index"]["model"] == info["encoder"]["model"] and info["encoder"]["pooling"] == "mean"
    assert info["reranker"]["configured"] is False and "--reranker" in info["reranker"]["help"]
    assert info["last_reload_error"] is None
    assert info["limits"]["max_k"] == 100 and info["api_key_required"] is False


def test_metrics_are_prometheus_text(app_client: TestClient) -> None:
    app_client.post("/search", json={"query": "a dog", "k": 2})
    app_client.post("/search", json={"query": " ", "k": 2})
    response = app_client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'semsearch_http_requests_total{method="POST",route="/search",status="200"}' in text
    assert 'semsearch_http_requests_total{method="POST",route="/search",status="422"}' in text
    assert 'semsearch_http_request_duration_seconds_bucket{le="0.1",method="POST",route="/search",status="200"}' in text
    for name in ("semsearch_encode_batch_size_bucket", "semsearch_queue_depth", "semsearch_reloads_total"):
        assert name in text
    count = app_client.get("/info").json()["count"]
    assert f"semsearch_index_size {float(count)}" in text


# (method, path) -> (request model or None, 200 response model or None): the routes docs/api.md lists
OPENAPI_OPERATIONS: dict[tuple[str, str], tuple[str | None, str | None]] = {
    ("post", "/search"): ("SearchRequest", "SearchResponse"),
    ("get", "/search"): (None, "SearchResponse"),
    ("post", "/search/batch"): ("BatchSearchRequest", "BatchSearchResponse"),
    ("post", "/embed"): ("EmbedRequest", "EmbedResponse"),
    ("post", "/rerank"): ("RerankRequest", "RerankResponse"),
    ("get", "/health"): (None, "Status"),
    ("get", "/ready"): (None, "Status"),
    ("get", "/info"): (None, None),
    ("get", "/metrics"): (None, None),
    ("post", "/admin/reload"): (None, "ReloadResponse"),
    ("post", "/v1/embeddings"): ("EmbeddingsRequest", "EmbeddingsResponse"),
    ("get", "/v1/models"): (None, "ModelList"),
    ("post", "/v1/rerank"): ("CompatRerankRequest", "CompatRerankResponse"),
    ("post", "/v2/rerank"): ("CompatRerankRequest", "CompatRerankResponse"),
}
ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}


def _ref(node: dict[str, Any] | None) -> str | None:
    schema = (node or {}).get("content", {}).get("application/json", {}).get("schema", {})
    return schema["$ref"].rsplit("/", 1)[-1] if "$ref" in schema else None


def test_openapi_describes_the_routes_models_and_limits(app_client: TestClient) -> None:
    """/openapi.json (what /docs renders and clients are generated from) has every route with its
    request and response models, the error shape, and the limits this service was started with."""
    settings: Settings = app_client.app.state.settings  # type: ignore[attr-defined]
    docs = app_client.get("/docs")
    assert docs.status_code == 200 and "/openapi.json" in docs.text
    doc = app_client.get("/openapi.json").json()
    operations = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert set(OPENAPI_OPERATIONS) <= operations, set(OPENAPI_OPERATIONS) - operations
    assert not any(p in doc["paths"] for p in ("/", "/favicon.ico"))  # the page is not API
    for (method, path), (request, response) in OPENAPI_OPERATIONS.items():
        op = doc["paths"][path][method]
        assert _ref(op.get("requestBody")) == request, (method, path, op.get("requestBody"))
        if response is not None:
            assert _ref(op["responses"]["200"]) == response, (method, path, op["responses"]["200"])
        if path not in ("/health", "/metrics") and not path.startswith("/v"):
            assert op["responses"]["401"]["content"]["application/json"]["schema"] == ERROR_REF, (method, path)
        if method == "post" and not path.startswith("/v"):
            assert op["responses"]["413"]["content"]["application/json"]["schema"] == ERROR_REF, (method, path)
    assert set(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    for path in ("/search", "/search/batch", "/embed", "/rerank"):
        op = doc["paths"][path]["post"]
        assert {"422", "429", "503"} <= set(op["responses"]), (path, sorted(op["responses"]))
        assert _ref(op["responses"]["422"]) == "ErrorResponse", path

    schemas = doc["components"]["schemas"]
    models = ("SearchRequest", "BatchSearchRequest", "EmbedRequest", "RerankRequest", "SearchHit")
    props = {name: schemas[name]["properties"] for name in models}
    assert props["SearchRequest"]["query"]["maxLength"] == settings.max_query_chars
    assert set(props["SearchRequest"]) == {
        *("query", "k", "mode", "filter", "rerank", "candidates"),
        *("offset", "group_by", "group_size", "return_document"),  # #24: documents and pages
    }
    for model in ("SearchRequest", "BatchSearchRequest"):
        assert props[model]["k"]["maximum"] == settings.max_k and props[model]["k"]["default"] == 10
        assert props[model]["candidates"]["maximum"] == settings.max_candidates
    for model, field, items, chars in (
        ("BatchSearchRequest", "queries", settings.max_batch_queries, settings.max_query_chars),
        ("EmbedRequest", "texts", settings.max_embed_texts, settings.max_text_chars),
        ("RerankRequest", "texts", settings.max_rerank_texts, settings.max_text_chars),
    ):
        node = props[model][field]
        assert (node["maxItems"], node["items"]["maxLength"]) == (items, chars), (model, node)
    assert props["RerankRequest"]["query"]["maxLength"] == settings.max_query_chars
    assert set(props["SearchHit"]) == {"id", "text", "score", "metadata", "source", "retrieval_score"}
    assert set(schemas["SearchResponse"]["required"]) == {"results", "took_ms", "index_version", "reranked"}
    assert set(schemas["ErrorBody"]["properties"]) == {"code", "message", "detail"}
    get = {p["name"]: p for p in doc["paths"]["/search"]["get"]["parameters"]}
    assert set(get) == {
        *("q", "k", "mode", "filter", "rerank", "candidates"),
        *("offset", "group_by", "group_size", "return_document"),
    }
    assert get["q"]["schema"]["maxLength"] == settings.max_query_chars and get["q"]["required"] is True
    assert get["k"]["schema"]["maximum"] == settings.max_k
    assert set(get["filter"]["content"]) == {"application/json"}


def test_web_page_is_served(app_client: TestClient) -> None:
    page = app_client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<label for="q">' in page.text and 'aria-live="polite"' in page.text
    for asset in ("/static/app.js", "/static/app.css"):
        response = app_client.get(asset)
        assert response.status_code == 200
        assert "://" not in response.text  # no CDN, no external resources
    assert "://" not in page.text


# ------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"query": ""}, "query"),
        ({"query": "   \n\t"}, "query"),
        ({"query": "x" * 1001}, "query"),
        ({"query": "cat", "k": 0}, "k"),
        ({"query": "cat", "k": 101}, "k"),
        ({"query": "cat", "k": -3}, "k"),
        ({"query": "cat", "k": "five"}, "k"),
        ({"query": "cat", "k": 2.5}, "k"),
        ({"query": 42}, "query"),
        ({"query": ["cat"]}, "query"),
        ({}, "query"),
        ({"query": "cat", "mode": "semantic"}, "mode"),
        ({"query": "cat", "filter": "pos=noun"}, "filter"),
        ({"query": "cat", "filter": {"pos": {"near": 1}}}, None),
        ({"query": "cat", "candidates": 0}, "candidates"),
        ({"query": "cat", "candidates": 201}, "candidates"),
        ({"query": "cat", "top_k": 3}, "top_k"),
    ],
)
def test_invalid_search_input_is_422(app_client: TestClient, check_error: Check, body: Any, where: str | None) -> None:
    error = check_error(app_client.post("/search", json=body), 422, "invalid_input")
    if where is not None:  # the first problem is at that field, and the message names it
        loc = error["detail"][0]["loc"]
        assert loc[:2] == ["body", where], error
        assert error["message"].startswith(".".join(loc[1:]) + ": "), error


@pytest.mark.parametrize(
    "raw",
    [b'{"query": "cat",', b"not json", b'["a list"]', b'"a string"', b""],
)
def test_malformed_body_is_422(app_client: TestClient, check_error: Check, raw: bytes) -> None:
    check_error(app_client.post("/search", content=raw, headers={"content-type": "application/json"}), 422)


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"q": ""},
        {"q": "  "},
        {"q": "cat", "k": "0"},
        {"q": "cat", "k": "1000"},
        {"q": "cat", "k": "x"},
        {"q": "cat", "filter": "{bad"},
        {"q": "cat", "filter": "[1]"},
        {"q": "x" * 1001},
    ],
)
def test_invalid_get_search_is_422(app_client: TestClient, check_error: Check, params: dict[str, str]) -> None:
    check_error(app_client.get("/search", params=params), 422, "invalid_input")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/search/batch", {"queries": []}),
        ("/search/batch", {"queries": ["ok", " "]}),
        ("/search/batch", {"queries": ["q"] * 65}),
        ("/search/batch", {"queries": "not a list"}),
        ("/embed", {"texts": []}),
        ("/embed", {"texts": ["t"] * 65}),
        ("/embed", {"texts": ["x" * 4001]}),
        ("/embed", {"texts": [""]}),
    ],
)
def test_batch_and_embed_limits(app_client: TestClient, check_error: Check, path: str, body: Any) -> None:
    check_error(app_client.post(path, json=body), 422, "invalid_input")


def test_unknown_route_and_method(app_client: TestClient, check_error: Check) -> None:
    check_error(app_client.get("/nope"), 404, "not_found")
    error_405 = app_client.delete("/search")
    check_error(error_405, 405, "method_not_allowed")
    assert error_405.headers["allow"] == "GET, HEAD, POST"  # every method of /search, sorted (docs/api.md)
    embed_405 = app_client.get("/embed")
    check_error(embed_405, 405, "method_not_allowed")
    assert embed_405.headers["allow"] == "POST"


def test_rerank_without_reranker_is_503(app_client: TestClient, check_error: Check) -> None:
    for response in (
        app_client.post("/rerank", json={"query": "cat", "texts": ["a cat", "a dog"]}),
        app_client.post("/search", json={"query": "cat", "rerank": True}),
        app_client.get("/search", params={"q": "cat", "rerank": "true"}),
        app_client.post("/search/batch", json={"queries": ["cat"], "rerank": True}),
    ):
        error = check_error(response, 503, "no_reranker")
        assert "--reranker" in error["message"] and "make reranker" in error["message"]


def test_admin_without_configured_key_is_403(app_client: TestClient, check_error: Check) -> None:
    error = check_error(app_client.post("/admin/reload"), 403, "admin_disabled")
    assert "SEMSEARCH_API_KEY" in error["message"]


def test_unexpected_error_is_500_without_internals(
    app_client: TestClient,
    runtime: Runtime,
    check_error: Check,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internal detail /etc/passwd")

    monkeypatch.setattr(runtime.services.encoder, "encode", broken)
    response = app_client.post("/search", json={"query": "cat"})
    error = check_error(response, 500, "internal_error")
    assert "secret" not in response.text and "Traceback" not in response.text
    assert error["detail"] is None
    assert "secret internal detail" in caplog.text  # logged for the operator
    monkeypatch.undo()
    assert app_client.post("/search", json={"query": "cat"}).status_code == 200  # the worker survived


def test_not_ready_before_startup(app_settings: Callable[..., Settings], check_error: Check) -> None:
    app = create_app(app_settings())
    test_client = TestClient(app)  # no `with`: the lifespan (model and index loading) has not run
    assert test_client.get("/health").status_code == 200
    check_error(test_client.get("/ready"), 503, "not_ready")
    check_error(test_client.post("/search", json={"query": "cat"}), 503, "not_ready")
    check_error(test_client.get("/info"), 503, "not_ready")


def test_oversized_body_is_413(app_client: TestClient, check_error: Check) -> None:
    big = json.dumps({"texts": ["x" * 1000] * 2100})  # over the 2 MB default
    check_error(app_client.post("/embed", content=big, headers={"content-type": "application/json"}), 413)

    def chunks() -> Any:  # no Content-Length: counted while reading
        for _ in range(2100):
            yield b"x" * 1000

    check_error(app_client.post("/search", content=chunks(), headers={"content-type": "application/json"}), 413)


def test_cors_is_off_by_default_and_configurable(app_settings: Callable[..., Settings]) -> None:
    preflight = {"Origin": "http://ui.example", "Access-Control-Request-Method": "POST"}
    off = TestClient(create_app(app_settings()))  # CORS needs no lifespan
    assert "access-control-allow-origin" not in off.options("/search", headers=preflight).headers
    on = TestClient(create_app(app_settings(cors_origins="http://ui.example")))
    response = on.options("/search", headers={**preflight, "Access-Control-Request-Headers": "authorization"})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "http://ui.example"
    assert "authorization" in response.headers["access-control-allow-headers"].lower()
    other = on.options("/search", headers={**preflight, "Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers
