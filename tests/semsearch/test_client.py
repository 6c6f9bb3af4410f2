"""``semsearch.client`` without a server: the sync and async clients over ``httpx.MockTransport``
send the same requests, read the same answers and retry alike (the real server: tests/app/test_app_sdks.py)."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from semsearch.client import (
    AsyncClient,
    BatchSearchResult,
    Client,
    DeleteResult,
    Document,
    EmbedResult,
    Hit,
    InvalidRequestError,
    RerankHit,
    RerankResult,
    SearchResult,
    ServiceError,
    Source,
    UnavailableError,
    UpsertResult,
)

HIT = {"id": 7, "text": "a cat", "score": 0.5, "metadata": {"pos": "n"}, "source": {"doc_id": "d1", "start": 0}}
ANSWERS: dict[str, Any] = {
    "/search": {"results": [HIT], "took_ms": 1.5, "index_version": "v000002", "reranked": False},
    "/search/batch": {"results": [[HIT], []], "took_ms": 2.0, "index_version": "v000002", "reranked": True},
    "/embed": {"embeddings": [[0.6, 0.8]], "model": "m", "pooling": "mean", "dimension": 2},
    "/rerank": {
        "results": [{"index": 1, "text": "b", "score": 0.9}],
        "model": "r",
        "took_ms": 3.0,
        "scoring": "sigmoid",
    },
    "/info": {"index": {"count": 1}},
    "/health": {"status": "ok"},
    "/ready": {"status": "ready"},
    "/admin/reload": {"outcome": "unchanged", "version": "v000002"},
}
Handler = Callable[[httpx.Request], httpx.Response]


def serve(requests: list[tuple[str, str, Any]]) -> Handler:
    """Answers every route with its canned body and records (method, path, JSON body)."""

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        requests.append((request.method, request.url.path, body))
        return httpx.Response(200, json=ANSWERS[request.url.path])

    return handle


def every_call(client: Any) -> Iterator[Any]:
    """Each method once (the async client's give coroutines)."""
    yield client.search("a cat", k=3, mode="hybrid", filter={"pos": "n"}, candidates=20)
    yield client.search_batch(["a cat", "a dog"], k=2, rerank=True)
    yield client.embed(["a cat"])
    yield client.rerank("a cat", ["a", "b"], top_k=1)
    yield client.rerank("a cat", ["a", "b"], raw_scores=True)
    yield client.info()
    yield client.health()
    yield client.ready()
    yield client.reload()


def sync_results(handler: Handler, **options: Any) -> list[Any]:
    with Client(
        "http://svc/", api_key="k", http_client=httpx.Client(transport=httpx.MockTransport(handler)), **options
    ) as client:
        return list(every_call(client))


def async_results(handler: Handler, **options: Any) -> list[Any]:
    async def run() -> list[Any]:
        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        async with AsyncClient("http://svc/", api_key="k", http_client=http, **options) as client:
            return [await call for call in every_call(client)]

    return asyncio.run(run())


def test_both_clients_send_the_same_requests_and_read_the_same_answers() -> None:
    sent_sync: list[tuple[str, str, Any]] = []
    sent_async: list[tuple[str, str, Any]] = []
    got_sync = sync_results(serve(sent_sync))
    got_async = async_results(serve(sent_async))
    assert sent_sync == sent_async
    assert got_sync == got_async
    assert sent_sync[:5] == [
        (
            "POST",
            "/search",
            {"query": "a cat", "k": 3, "mode": "hybrid", "rerank": False, "filter": {"pos": "n"}, "candidates": 20},
        ),
        ("POST", "/search/batch", {"queries": ["a cat", "a dog"], "k": 2, "mode": "dense", "rerank": True}),
        ("POST", "/embed", {"texts": ["a cat"]}),
        ("POST", "/rerank", {"query": "a cat", "texts": ["a", "b"], "raw_scores": False, "top_k": 1}),
        ("POST", "/rerank", {"query": "a cat", "texts": ["a", "b"], "raw_scores": True}),
    ]
    assert [(m, p) for m, p, _ in sent_sync[5:]] == [
        ("GET", "/info"),
        ("GET", "/health"),
        ("GET", "/ready"),
        ("POST", "/admin/reload"),
    ]
    hit = Hit(7, "a cat", 0.5, {"pos": "n"}, Source("d1", 0, None), None)
    assert got_sync[0] == SearchResult([hit], 1.5, "v000002", False)
    assert got_sync[1] == BatchSearchResult([[hit], []], 2.0, "v000002", True)
    assert got_sync[2] == EmbedResult([[0.6, 0.8]], "m", "mean", 2)
    assert got_sync[3] == RerankResult([RerankHit(1, "b", 0.9)], "r", 3.0, "sigmoid")
    assert got_sync[5:] == [ANSWERS[p] for p in ("/info", "/health", "/ready", "/admin/reload")]


def test_the_api_key_is_sent_as_a_bearer_token() -> None:
    seen: list[str | None] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json=ANSWERS["/health"])

    with Client("http://svc", api_key="s3cret", http_client=httpx.Client(transport=httpx.MockTransport(handle))) as c:
        c.health()
    with Client("http://svc", http_client=httpx.Client(transport=httpx.MockTransport(handle))) as c:
        c.health()
    assert seen == ["Bearer s3cret", None]


def flaky(failures: list[Any]) -> tuple[Handler, list[str]]:
    """Answers with ``failures`` in turn (a status, or an exception to raise), then with 200."""
    paths: list[str] = []
    pending = list(failures)

    def handle(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        if pending:
            failure = pending.pop(0)
            if isinstance(failure, Exception):
                raise failure
            error = {
                "error": {"code": "overloaded" if failure == 429 else "not_ready", "message": "busy", "detail": None}
            }
            return httpx.Response(failure, json=error, headers={"Retry-After": "0"})
        return httpx.Response(200, json=ANSWERS[request.url.path])

    return handle, paths


@pytest.mark.parametrize("results", [sync_results, async_results], ids=["sync", "async"])
def test_429_503_and_connection_failures_are_retried_until_served(results: Any) -> None:
    handler, paths = flaky([429, httpx.ConnectError("refused"), 503])
    got = results(handler, max_retries=3, backoff_s=0.0)
    assert paths[:4] == ["/search"] * 4  # three failures, then the answer
    assert got[0].index_version == "v000002" and len(paths) == 4 + 8  # the other calls: one request each


@pytest.mark.parametrize("results", [sync_results, async_results], ids=["sync", "async"])
def test_after_the_retries_the_last_failure_is_raised(results: Any) -> None:
    handler, paths = flaky([503, 503])
    with pytest.raises(UnavailableError) as error:
        results(handler, max_retries=1, backoff_s=0.0)
    assert (error.value.status, error.value.code, error.value.message) == (503, "not_ready", "busy")
    assert paths == ["/search", "/search"]

    handler, paths = flaky([httpx.ConnectError("refused")])
    with pytest.raises(httpx.ConnectError):
        results(handler, max_retries=0)
    assert paths == ["/search"]


@pytest.mark.parametrize("results", [sync_results, async_results], ids=["sync", "async"])
def test_other_errors_are_raised_at_once_with_the_servers_code(results: Any) -> None:
    paths: list[str] = []
    detail = [{"loc": ["body", "k"], "msg": "too large"}]

    def refuse(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        return httpx.Response(
            422, json={"error": {"code": "invalid_input", "message": "k: too large", "detail": detail}}
        )

    with pytest.raises(InvalidRequestError) as error:
        results(refuse, max_retries=3)
    assert (error.value.status, error.value.code, error.value.message, error.value.detail) == (
        422,
        "invalid_input",
        "k: too large",
        detail,
    )
    assert paths == ["/search"]

    def crash(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, text="Internal Server Error")

    with pytest.raises(ServiceError) as error:
        results(crash, max_retries=3)
    assert type(error.value) is ServiceError and (error.value.status, error.value.code) == (500, "http_500")


def test_methods_keep_their_names_signatures_and_kinds() -> None:
    client, aclient = Client("http://svc"), AsyncClient("http://svc")
    for name in ("search", "search_batch", "embed", "rerank", "info", "health", "ready", "reload", *WRITE_METHODS):
        method, amethod = getattr(client, name), getattr(aclient, name)
        assert method.__name__ == amethod.__name__ == name
        assert method.__doc__ and method.__doc__ == amethod.__doc__
        assert inspect.signature(method) == inspect.signature(amethod)
        assert not inspect.iscoroutinefunction(method) and inspect.iscoroutinefunction(amethod)
    params = inspect.signature(client.search).parameters
    assert list(params) == ["query", "k", "mode", "filter", "rerank", "candidates"]
    assert params["k"].default == 10 and params["k"].kind is inspect.Parameter.KEYWORD_ONLY
    client.close()
    asyncio.run(aclient.aclose())


# ------------------------------------------------------------------------------- online writes (#22)

WRITE_METHODS = ("upsert", "delete", "get")
STORED = {"id": "cat/1", "text": "a cat", "metadata": {"pos": "n"}}


def documents_server(requests: list[tuple[str, str, Any]]) -> Handler:
    """The write routes of a ``--writable`` service: one stored document, ``cat/1``."""

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        path = request.url.raw_path.decode()
        requests.append((request.method, path, body))
        if path == "/documents":
            return httpx.Response(
                200, json={"upserted": len(body["documents"]), "seq": 4, "visible": True, "took_ms": 1}
            )
        if path == "/documents/delete":
            answer = {"deleted": 1, "missing": body["ids"][1:], "seq": 5, "visible": body["wait"], "took_ms": 2.5}
            return httpx.Response(200, json=answer)
        if path == "/documents/cat%2F1":
            return httpx.Response(200, json=STORED)
        if path.startswith("/documents/"):
            error = {"code": "not_found", "message": "no document with id 'x'", "detail": {"id": "x"}}
            return httpx.Response(404, json={"error": error})
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "no route", "detail": None}})

    return handle


def write_calls(client: Any) -> Iterator[Any]:
    yield client.upsert([{"id": "cat/1", "text": "a cat", "metadata": {"pos": "n"}}, Document(2, "a dog")])
    yield client.upsert([Document("x", "y")], wait=False)
    yield client.delete(["cat/1", 9], wait=False)
    yield client.get("cat/1")
    yield client.get(7)


def test_write_methods_send_the_same_requests_and_read_the_same_answers() -> None:
    sent: dict[str, list[tuple[str, str, Any]]] = {"sync": [], "async": []}
    with Client(
        "http://svc", http_client=httpx.Client(transport=httpx.MockTransport(documents_server(sent["sync"])))
    ) as c:
        got_sync = list(write_calls(c))

    async def run() -> list[Any]:
        http = httpx.AsyncClient(transport=httpx.MockTransport(documents_server(sent["async"])))
        async with AsyncClient("http://svc", http_client=http) as client:
            return [await call for call in write_calls(client)]

    got_async = asyncio.run(run())
    assert sent["sync"] == sent["async"]
    assert got_sync == got_async
    assert sent["sync"] == [
        (
            "POST",
            "/documents",
            {
                "documents": [
                    {"id": "cat/1", "text": "a cat", "metadata": {"pos": "n"}},
                    {"id": 2, "text": "a dog", "metadata": {}},
                ],
                "wait": True,
            },
        ),
        ("POST", "/documents", {"documents": [{"id": "x", "text": "y", "metadata": {}}], "wait": False}),
        ("POST", "/documents/delete", {"ids": ["cat/1", 9], "wait": False}),
        ("GET", "/documents/cat%2F1", None),  # the id is one path segment, escaped
        ("GET", "/documents/7", None),
    ]
    assert got_sync == [
        UpsertResult(2, 4, True, 1.0),
        UpsertResult(1, 4, True, 1.0),
        DeleteResult(1, [9], 5, False, 2.5),
        Document("cat/1", "a cat", {"pos": "n"}),
        None,  # no document with this id
    ]


def test_get_raises_on_a_404_that_is_not_a_missing_document() -> None:
    """A server without the /documents routes answers an unknown route's 404: an error, not "no such document"."""

    def no_route(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "no route", "detail": None}})

    with (
        Client("http://svc", http_client=httpx.Client(transport=httpx.MockTransport(no_route))) as c,
        pytest.raises(InvalidRequestError) as error,
    ):
        c.get("x")
    assert error.value.status == 404


@pytest.mark.parametrize("status", [403, 507])
def test_write_refusals_raise_with_the_servers_code(status: int) -> None:
    """403 writes_disabled (a read-only service) and 507 (the WAL's disk is full) are not retried."""
    codes = {403: "writes_disabled", 507: "insufficient_storage"}
    paths: list[str] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        return httpx.Response(status, json={"error": {"code": codes[status], "message": "no", "detail": None}})

    with (
        Client("http://svc", max_retries=3, http_client=httpx.Client(transport=httpx.MockTransport(refuse))) as c,
        pytest.raises(ServiceError) as error,
    ):
        c.upsert([Document("a", "b")])
    assert (error.value.status, error.value.code) == (status, codes[status])
    assert paths == ["/documents"]


def test_writes_are_retried_on_429_like_reads() -> None:
    answers = [
        httpx.Response(429, json={"error": {"code": "overloaded", "message": "full"}}, headers={"Retry-After": "0"})
    ]

    def handle(request: httpx.Request) -> httpx.Response:
        if answers:
            return answers.pop()
        return httpx.Response(200, json={"deleted": 0, "missing": ["a"], "seq": 1, "visible": True, "took_ms": 0.1})

    with Client("http://svc", backoff_s=0, http_client=httpx.Client(transport=httpx.MockTransport(handle))) as c:
        assert c.delete(["a"]) == DeleteResult(0, ["a"], 1, True, 0.1)
