"""The real clients against a real server (``python -m app``, uvicorn, offline): the ``openai`` SDK, the
``cohere`` SDK, ``langchain-openai``, raw Jina-style JSON and ``semsearch.client``, incl. the README's
"Use it from existing code" snippets, executed as written (only the URL and key are substituted).

The server has an API key, the pairwise-fusion test reranker and ``max_queue=1`` (one waiting request
per queue), so that concurrent requests really get 429s for the client's retry test; every other test
sends one request at a time.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from semsearch.client import (
    AsyncClient,
    AuthenticationError,
    Client,
    InvalidRequestError,
    OverloadedError,
    UnavailableError,
)

pytest_plugins = ["app_fixtures", "compat_fixtures"]

REPO = Path(__file__).resolve().parents[2]
MODEL = "all-MiniLM-L6-v2"
QUERY = "a large wild cat"
TEXTS = ["a lion resting in the grass", "a spoon for soup", "a small domestic cat", "the price of oil rose"]
README_URL, README_KEY = "http://localhost:8000", "my-api-key"


@pytest.fixture(scope="module")
def server(launch_server: Callable[..., Any], app_index: Path, compat_reranker_dir: Path) -> Any:
    from app_fixtures import API_KEY

    srv = launch_server(app_index, api_key=API_KEY, reranker=str(compat_reranker_dir), max_queue=1)
    srv.wait_started()
    srv.key = API_KEY
    return srv


@pytest.fixture(scope="module")
def http(server: Any) -> httpx.Client:
    return server.client(headers={"Authorization": f"Bearer {server.key}"})  # type: ignore[no-any-return]


def native_embeddings(http: httpx.Client, texts: list[str]) -> np.ndarray:
    response = http.post("/embed", json={"texts": texts})
    assert response.status_code == 200, response.text
    return np.array(response.json()["embeddings"], dtype=np.float32)


def readme_snippet(name: str, server: Any) -> dict[str, Any]:
    """Run the README's ``<!-- tested: NAME -->`` block against ``server``; returns its namespace."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"<!-- tested: {name} -->\n```python\n(.*?)```", readme, re.S)
    assert match, f"README has no tested {name} snippet"
    code = match.group(1).replace(README_URL, server.url).replace(f'"{README_KEY}"', f'"{server.key}"')
    assert server.url in code and server.key in code
    namespace: dict[str, Any] = {}
    exec(compile(code, f"README.md[{name}]", "exec"), namespace)
    return namespace


# ------------------------------------------------------------------------------------------ openai


def test_openai_sdk_base64_default_and_float(server: Any, http: httpx.Client) -> None:
    from openai import OpenAI

    sent: list[dict[str, Any]] = []
    recorder = httpx.Client(event_hooks={"request": [lambda r: sent.append(json.loads(r.read() or b"{}"))]})
    client = OpenAI(base_url=f"{server.url}/v1", api_key=server.key, http_client=recorder, max_retries=0)
    native = native_embeddings(http, TEXTS)

    default = client.embeddings.create(model=MODEL, input=TEXTS)
    assert sent[-1]["encoding_format"] == "base64"  # the SDK's default: the server must speak it
    assert [d.index for d in default.data] == list(range(len(TEXTS)))
    np.testing.assert_allclose([d.embedding for d in default.data], native, atol=1e-6)
    assert default.usage.prompt_tokens > len(TEXTS) and default.model == "sentence-transformers/all-MiniLM-L6-v2"

    as_float = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    assert sent[-1]["encoding_format"] == "float"
    np.testing.assert_allclose([d.embedding for d in as_float.data], native, atol=1e-6)

    single = client.embeddings.create(model="sentence-transformers/all-MiniLM-L6-v2", input=QUERY)
    assert len(single.data) == 1
    np.testing.assert_allclose(single.data[0].embedding, native_embeddings(http, [QUERY])[0], atol=1e-6)
    single_float = client.embeddings.create(model=MODEL, input=QUERY, encoding_format="float")
    np.testing.assert_allclose(single_float.data[0].embedding, single.data[0].embedding, atol=1e-6)

    assert [m.id for m in client.models.list()] == ["sentence-transformers/all-MiniLM-L6-v2", server_reranker(http)]


def server_reranker(http: httpx.Client) -> str:
    return str(http.get("/info").json()["reranker"]["name"])


def test_openai_sdk_errors_carry_the_code(server: Any) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.key, max_retries=0)
    with pytest.raises(openai.NotFoundError) as not_found:
        client.embeddings.create(model="text-embedding-3-small", input="x")
    assert not_found.value.code == "model_not_found" and "all-MiniLM-L6-v2" in not_found.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model=MODEL, input="x", dimensions=256)
    assert bad.value.code == "unsupported_dimensions" and bad.value.param == "dimensions"
    with pytest.raises(openai.BadRequestError) as ids:
        client.embeddings.create(model=MODEL, input=[[101, 2307, 102]])
    assert ids.value.code == "unsupported_parameter" and "token-id" in ids.value.message
    wrong_key = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as auth:
        wrong_key.embeddings.create(model=MODEL, input="x")
    assert auth.value.code == "unauthorized"


def test_readme_openai_snippet(server: Any, http: httpx.Client) -> None:
    ns = readme_snippet("openai", server)
    np.testing.assert_allclose(
        ns["vectors"], native_embeddings(http, ["a large wild cat", "a tool for cutting"]), atol=1e-6
    )


# ------------------------------------------------------------------------------------------ cohere, jina


def native_rerank(http: httpx.Client, texts: list[str]) -> list[dict[str, Any]]:
    response = http.post("/rerank", json={"query": QUERY, "texts": texts})
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


def test_cohere_sdk_v1_and_v2_rerank_give_rerank_scores(server: Any, http: httpx.Client) -> None:
    import cohere

    native = native_rerank(http, TEXTS)
    v1 = cohere.Client(base_url=server.url, api_key=server.key).rerank(
        query=QUERY, documents=TEXTS, return_documents=True
    )
    v2 = cohere.ClientV2(base_url=server.url, api_key=server.key).rerank(model="reranker", query=QUERY, documents=TEXTS)
    for response in (v1, v2):
        assert [r.index for r in response.results] == [r["index"] for r in native]
        np.testing.assert_allclose(
            [r.relevance_score for r in response.results], [r["score"] for r in native], atol=1e-6
        )
    assert [r.document.text for r in v1.results] == [r["text"] for r in native]  # type: ignore[union-attr]
    top = cohere.ClientV2(base_url=server.url, api_key=server.key).rerank(
        model="reranker", query=QUERY, documents=TEXTS, top_n=1
    )
    assert [r.index for r in top.results] == [native[0]["index"]]
    with pytest.raises(cohere.core.ApiError) as wrong:
        cohere.ClientV2(base_url=server.url, api_key=server.key).rerank(
            model="rerank-v3.5", query=QUERY, documents=TEXTS
        )
    assert wrong.value.status_code == 404 and wrong.value.body["error"]["code"] == "model_not_found"


def test_jina_style_raw_json(http: httpx.Client) -> None:
    native = native_rerank(http, TEXTS)
    body = {"model": "reranker", "query": QUERY, "documents": TEXTS, "top_n": 3, "return_documents": True}
    response = http.post("/v1/rerank", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["usage"]["total_tokens"] > 0
    assert [(r["index"], r["document"]["text"]) for r in data["results"]] == [
        (r["index"], r["text"]) for r in native[:3]
    ]
    np.testing.assert_allclose(
        [r["relevance_score"] for r in data["results"]], [r["score"] for r in native[:3]], atol=1e-6
    )


def test_readme_cohere_snippet(server: Any, http: httpx.Client) -> None:
    ns = readme_snippet("cohere", server)
    texts = ["a spoon", "a lion", "a tiger"]
    native = http.post("/rerank", json={"query": QUERY, "texts": texts, "top_k": 2}).json()["results"]
    assert [i for i, _ in ns["ranked"]] == [r["index"] for r in native]
    np.testing.assert_allclose([s for _, s in ns["ranked"]], [r["score"] for r in native], atol=1e-6)


# ------------------------------------------------------------------------------------------ langchain


def test_langchain_openai_embeddings_documents_and_query(server: Any, http: httpx.Client) -> None:
    ns = readme_snippet("langchain", server)
    docs = native_embeddings(http, ["a lion resting in the grass", "a spoon for soup"])
    np.testing.assert_allclose(ns["doc_vectors"], docs, atol=1e-6)
    query = np.array(ns["query_vector"])
    np.testing.assert_allclose(query, native_embeddings(http, [QUERY])[0], atol=1e-6)
    assert float(docs[0] @ query) > float(docs[1] @ query)  # the lion is nearer the wild cat


# ------------------------------------------------------------------------------------------ semsearch client


def test_client_every_native_route(server: Any, http: httpx.Client) -> None:
    with Client(server.url, api_key=server.key, timeout=60) as client:
        assert client.health() == {"status": "ok"}
        assert client.ready()["status"] == "ready"
        info = client.info()
        assert info["api_key_required"] is True and info["reranker"]["configured"] is True

        found = client.search(QUERY, k=3, mode="hybrid", filter={"pos": "n"})
        raw = http.post("/search", json={"query": QUERY, "k": 3, "mode": "hybrid", "filter": {"pos": "n"}}).json()
        assert [h.id for h in found.results] == [h["id"] for h in raw["results"]]
        assert [h.score for h in found.results] == [h["score"] for h in raw["results"]]
        assert all(h.metadata["pos"] == "n" for h in found.results) and found.reranked is False
        reranked = client.search(QUERY, k=2, rerank=True, candidates=5)
        dense = {h.id: h.score for h in client.search(QUERY, k=5).results}  # the 5 candidates, their cosines
        assert reranked.reranked and len(reranked.results) == 2
        for hit in reranked.results:  # retrieval_score: the candidate's cosine, score: the reranker's
            assert hit.retrieval_score == pytest.approx(dense[hit.id], abs=1e-5), (hit, dense)

        batch = client.search_batch([QUERY, "to run fast"], k=2)
        assert len(batch.results) == 2 and [h.id for h in batch.results[0]] == [
            h.id for h in client.search(QUERY, k=2).results
        ]

        vectors = client.embed(TEXTS)
        assert vectors.dimension == 384 and vectors.pooling == "mean"
        np.testing.assert_allclose(vectors.embeddings, native_embeddings(http, TEXTS), atol=1e-6)

        ranked = client.rerank(QUERY, TEXTS, top_k=2)
        assert ranked.scoring == "fused_pairwise"
        assert [(h.index, h.score) for h in ranked.results] == [
            (r["index"], r["score"]) for r in native_rerank(http, TEXTS)[:2]
        ]
        assert client.rerank(QUERY, TEXTS, raw_scores=True).scoring == "sigmoid"

        with pytest.raises(InvalidRequestError) as invalid:
            client.search(QUERY, k=100_000)
        assert invalid.value.status == 422 and invalid.value.code == "invalid_input"
        assert invalid.value.detail[0]["loc"] == ["body", "k"]

    with Client(server.url, api_key="wrong") as wrong, pytest.raises(AuthenticationError) as auth:
        wrong.search(QUERY)
    assert auth.value.status == 401 and auth.value.code == "unauthorized"
    with Client(server.url) as keyless, pytest.raises(AuthenticationError, match="missing API key"):
        keyless.info()
    with Client(server.url) as public:
        assert public.health() == {"status": "ok"}  # public without a key


def test_async_client_every_native_route(server: Any, http: httpx.Client) -> None:
    async def run() -> tuple[Any, ...]:
        # seven concurrent requests against queues of one: some are answered 429 and retried
        async with AsyncClient(server.url, api_key=server.key, timeout=60, max_retries=30) as client:
            return await asyncio.gather(
                client.health(),
                client.ready(),
                client.info(),
                client.search(QUERY, k=3),
                client.search_batch([QUERY, "to run fast"], k=2),
                client.embed(TEXTS),
                client.rerank(QUERY, TEXTS),
            )

    health, ready, info, found, batch, vectors, ranked = asyncio.run(run())
    assert health == {"status": "ok"} and ready["status"] == "ready" and info["count"] > 0
    raw = http.post("/search", json={"query": QUERY, "k": 3}).json()["results"]
    assert [(h.id, h.text, h.score) for h in found.results] == [(r["id"], r["text"], r["score"]) for r in raw]
    assert [len(row) for row in batch.results] == [2, 2]
    np.testing.assert_allclose(vectors.embeddings, native_embeddings(http, TEXTS), atol=1e-6)
    assert [h.index for h in ranked.results] == [r["index"] for r in native_rerank(http, TEXTS)]


def test_client_admin_reload_needs_the_key(server: Any) -> None:
    with Client(server.url, api_key=server.key) as client:
        outcome = client.reload()
    assert outcome["outcome"] == "unchanged" and outcome["version"] == "v000001"
    with Client(server.url) as keyless, pytest.raises(AuthenticationError):
        keyless.reload()


def test_readme_client_snippet(server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    ns = readme_snippet("client", server)
    assert len(ns["hits"]) == 3
    assert capsys.readouterr().out.splitlines()[-1] == "422 invalid_input"


def test_async_client_retries_429_until_served(server: Any, http: httpx.Client) -> None:
    """Six concurrent reranks against a queue of one: the server answers 429 (Retry-After: 1) and the
    client waits and retries until each is served; the same requests without retries fail with the code."""
    texts = [f"{t} number {i}" for i in range(10) for t in TEXTS]  # 40 texts: each rerank takes a while
    expected = native_rerank(http, texts)[:3]

    def count_429() -> float:
        metrics = http.get("/metrics").text
        return sum(float(m) for m in re.findall(r'route="/rerank",status="429"} (\S+)', metrics))

    async def run(max_retries: int) -> list[Any]:
        async with AsyncClient(server.url, api_key=server.key, timeout=120, max_retries=max_retries) as client:
            calls = [client.rerank(QUERY, texts, top_k=3) for _ in range(6)]
            return await asyncio.gather(*calls, return_exceptions=True)

    before = count_429()
    results = asyncio.run(run(max_retries=60))
    assert count_429() > before, "no 429 was answered: the retry path was not exercised"
    for result in results:
        assert not isinstance(result, BaseException), result
        assert [(h.index, h.score) for h in result.results] == [(r["index"], r["score"]) for r in expected]

    failures = [r for r in asyncio.run(run(max_retries=0)) if isinstance(r, BaseException)]
    assert failures and all(isinstance(f, OverloadedError) and f.code == "overloaded" for f in failures)


def test_client_retry_wait_honours_retry_after() -> None:
    client = Client("http://127.0.0.1:9", backoff_s=0.25, max_wait_s=5)
    assert client._wait_s(0, httpx.Response(429, headers={"Retry-After": "2"})) == 2.0
    assert client._wait_s(0, httpx.Response(429, headers={"Retry-After": "600"})) == 5.0  # capped
    assert client._wait_s(2, httpx.Response(503)) == 1.0  # no header: 0.25 * 2**2
    date = httpx.Response(503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert client._wait_s(0, date) == 0.0  # a date in the past: retry at once
    client.close()


def test_client_without_reranker_raises_unavailable(launch_server: Callable[..., Any], app_index: Path) -> None:
    """503 is retried, then raised with the server's code (no reranker configured)."""
    srv = launch_server(app_index)
    srv.wait_started()
    with Client(srv.url, max_retries=1, backoff_s=0.01) as client, pytest.raises(UnavailableError) as err:
        client.rerank(QUERY, TEXTS)
    assert err.value.status == 503 and err.value.code == "no_reranker"
