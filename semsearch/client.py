"""A small typed Python client for the semsearch service's native API (sync and async, over httpx).

>>> from semsearch.client import Client
>>> with Client("http://localhost:8000", api_key="...") as client:   # doctest: +SKIP
...     hits = client.search("a large wild cat", k=3).results

``Client`` and ``AsyncClient`` have the same methods (``search``, ``search_batch``, ``embed``, ``rerank``,
``info``, ``health``, ``ready``, ``reload``, and the online writes of a ``--writable`` service: ``upsert``,
``delete``, ``get``). A 429 or 503 answer is retried up to ``max_retries`` times, waiting what
the server's ``Retry-After`` says (else an exponential backoff from ``backoff_s``, at most
``max_wait_s``); connection failures are retried the same way. Every other error raises a
:class:`ServiceError` subclass that carries the server's ``status``, ``code``, ``message`` and ``detail``.

Writes are safe to retry: a 429 or 503 answer (queue full, WAL unavailable) wrote nothing, and an upsert
or delete sent twice (a connection lost after the server acknowledged it) leaves the same documents; only
the counts of a repeated delete differ (its ids are then ``missing``). ``get`` of an id that names no
document returns ``None`` (the service's 404 ``not_found`` for that id); every other 404 raises.

This is the only HTTP module of the ``semsearch`` package; it needs httpx and nothing of the service.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import time
import urllib.parse
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, ParamSpec, TypeVar, overload

import httpx

Mode = Literal["dense", "lexical", "hybrid"]
T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")
H = TypeVar("H", httpx.Client, httpx.AsyncClient)

RETRY_STATUSES = frozenset({429, 503})

# --------------------------------------------------------------------------------------------- errors


class ServiceError(Exception):
    """An error answer of the service: ``status`` (HTTP), ``code`` (stable, e.g. ``invalid_input``),
    ``message`` (human-readable) and ``detail`` (structured, may be ``None``)."""

    def __init__(self, status: int, code: str, message: str, detail: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail


class AuthenticationError(ServiceError):
    """401/403: missing or wrong API key (or admin routes disabled)."""


class InvalidRequestError(ServiceError):
    """400/404/413/422: the request was refused as it is; fix it before sending it again."""


class OverloadedError(ServiceError):
    """429 after the retries: the service's queue stayed full."""


class UnavailableError(ServiceError):
    """503 after the retries: not ready, or no reranker configured (``code == "no_reranker"``)."""


def error_from_response(response: httpx.Response) -> ServiceError:
    """The exception for an error answer (the service's ``{"error": {"code", "message", "detail"}}``)."""
    status = response.status_code
    try:
        error = response.json()["error"]
        code, message, detail = str(error["code"]), str(error["message"]), error.get("detail")
    except (ValueError, KeyError, TypeError):
        code, message, detail = f"http_{status}", response.text[:500] or response.reason_phrase, None
    if status in (401, 403):
        cls: type[ServiceError] = AuthenticationError
    elif status == 429:
        cls = OverloadedError
    elif status == 503:
        cls = UnavailableError
    elif 400 <= status < 500:
        cls = InvalidRequestError
    else:
        cls = ServiceError
    return cls(status, code, message, detail)


# ------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Source:
    doc_id: str
    start: int | None = None
    end: int | None = None


@dataclass(frozen=True)
class Hit:
    """One search result: ``score`` is the cosine (BM25 / hybrid score by mode; the reranker's when reranked)."""

    id: int | str
    text: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)
    source: Source | None = None
    retrieval_score: float | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Hit:
        source = data.get("source")
        return cls(
            id=data["id"],
            text=data["text"],
            score=float(data["score"]),
            metadata=dict(data.get("metadata") or {}),
            source=Source(**source) if source else None,
            retrieval_score=data.get("retrieval_score"),
        )


@dataclass(frozen=True)
class _SearchAnswer(Generic[R]):
    results: R
    took_ms: float
    index_version: str
    reranked: bool


class SearchResult(_SearchAnswer[list[Hit]]):
    """The hits of one query, best first; ``index_version``: the index version that answered."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SearchResult:
        return cls([Hit.from_json(h) for h in data["results"]], *_answer_info(data))


class BatchSearchResult(_SearchAnswer[list[list[Hit]]]):
    """One hit list per query, in order (one index version answered them all)."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BatchSearchResult:
        return cls([[Hit.from_json(h) for h in row] for row in data["results"]], *_answer_info(data))


def _answer_info(data: Mapping[str, Any]) -> tuple[float, str, bool]:
    """``took_ms``, ``index_version`` and ``reranked`` of a search answer."""
    return float(data["took_ms"]), str(data["index_version"]), bool(data["reranked"])


@dataclass(frozen=True)
class EmbedResult:
    """Unit vectors (cosine = dot product), one per text, in order."""

    embeddings: list[list[float]]
    model: str
    pooling: str
    dimension: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EmbedResult:
        return cls(data["embeddings"], str(data["model"]), str(data["pooling"]), int(data["dimension"]))


@dataclass(frozen=True)
class RerankHit:
    index: int
    text: str
    score: float


@dataclass(frozen=True)
class RerankResult:
    """Texts best first; ``scoring`` says what the score is (``fused_pairwise``, ``fused_per_query``, ``sigmoid``)."""

    results: list[RerankHit]
    model: str
    took_ms: float
    scoring: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RerankResult:
        hits = [RerankHit(int(r["index"]), str(r["text"]), float(r["score"])) for r in data["results"]]
        return cls(hits, str(data["model"]), float(data["took_ms"]), str(data.get("scoring", "")))


@dataclass(frozen=True)
class Document:
    """A stored document (``get``), or one to write (``upsert`` takes these or mappings with the same keys)."""

    id: int | str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Document:
        return cls(data["id"], str(data["text"]), dict(data.get("metadata") or {}))

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "metadata": dict(self.metadata)}


@dataclass(frozen=True)
class UpsertResult:
    """``upserted``: documents written (all of the request's); ``seq``: the request's write-ahead log
    sequence number; ``visible``: searches already see them (true when sent with ``wait=True``)."""

    upserted: int
    seq: int
    visible: bool
    took_ms: float

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UpsertResult:
        return cls(int(data["upserted"]), int(data["seq"]), bool(data["visible"]), float(data["took_ms"]))


@dataclass(frozen=True)
class DeleteResult:
    """``deleted``: ids that named a live document; ``missing``: the ids that named none."""

    deleted: int
    missing: list[int | str]
    seq: int
    visible: bool
    took_ms: float

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DeleteResult:
        return cls(
            int(data["deleted"]), list(data["missing"]), int(data["seq"]), bool(data["visible"]), float(data["took_ms"])
        )


# ----------------------------------------------------------------------------------- calls (sans-IO)


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One request of the API and how to read its answer; building one does no I/O."""

    method: str
    path: str
    parse: Callable[[Any], T]
    json: Any = None
    params: Mapping[str, Any] | None = None
    none_if_absent: bool = False  # a 404 ``not_found`` naming the requested id reads as ``None``


def _search_options(k: int, mode: Mode, filter: Mapping[str, Any] | None, rerank: bool, candidates: int | None) -> dict:
    body: dict[str, Any] = {"k": k, "mode": mode, "rerank": rerank}
    if filter is not None:
        body["filter"] = dict(filter)
    if candidates is not None:
        body["candidates"] = candidates
    return body


def _search(
    query: str,
    *,
    k: int = 10,
    mode: Mode = "dense",
    filter: Mapping[str, Any] | None = None,
    rerank: bool = False,
    candidates: int | None = None,
) -> _Call[SearchResult]:
    """``POST /search``: the top ``k`` sentences for ``query``."""
    body = {"query": query, **_search_options(k, mode, filter, rerank, candidates)}
    return _Call("POST", "/search", SearchResult.from_json, body)


def _search_batch(
    queries: Sequence[str],
    *,
    k: int = 10,
    mode: Mode = "dense",
    filter: Mapping[str, Any] | None = None,
    rerank: bool = False,
    candidates: int | None = None,
) -> _Call[BatchSearchResult]:
    """``POST /search/batch``: one result list per query, in order."""
    body = {"queries": list(queries), **_search_options(k, mode, filter, rerank, candidates)}
    return _Call("POST", "/search/batch", BatchSearchResult.from_json, body)


def _embed(texts: Sequence[str]) -> _Call[EmbedResult]:
    """``POST /embed``: unit vectors of ``texts``."""
    return _Call("POST", "/embed", EmbedResult.from_json, {"texts": list(texts)})


def _rerank(
    query: str, texts: Sequence[str], *, top_k: int | None = None, raw_scores: bool = False
) -> _Call[RerankResult]:
    """``POST /rerank``: ``texts`` best first by the reranker card's score (``raw_scores``: the
    cross-encoder alone)."""
    body: dict[str, Any] = {"query": query, "texts": list(texts), "raw_scores": raw_scores}
    if top_k is not None:
        body["top_k"] = top_k
    return _Call("POST", "/rerank", RerankResult.from_json, body)


def _upsert(documents: Sequence[Document | Mapping[str, Any]], *, wait: bool = True) -> _Call[UpsertResult]:
    """``POST /documents`` (``--writable`` service): insert or replace ``documents`` by id, all of them or
    none. ``wait``: return once they are searchable (else once durable: in the write-ahead log)."""
    docs = [d.to_json() if isinstance(d, Document) else dict(d) for d in documents]
    return _Call("POST", "/documents", UpsertResult.from_json, {"documents": docs, "wait": wait})


def _delete(ids: Sequence[int | str], *, wait: bool = True) -> _Call[DeleteResult]:
    """``POST /documents/delete`` (``--writable`` service): delete documents by id; ids that named no
    document are listed in ``missing``. ``wait``: return once the deletes are visible to searches."""
    return _Call("POST", "/documents/delete", DeleteResult.from_json, {"ids": list(ids), "wait": wait})


def _get(id: int | str) -> _Call[Document | None]:
    """``GET /documents/{id}``: the document (with ``--writable``: every acknowledged write, searchable yet
    or not), or ``None`` when no document has this id."""
    path = "/documents/" + urllib.parse.quote(str(id), safe="")
    return _Call("GET", path, Document.from_json, none_if_absent=True)


def _json_object(data: Any) -> dict[str, Any]:
    return dict(data)


def _plain(method: str, path: str, doc: str) -> Callable[[], _Call[dict[str, Any]]]:
    """The builder of a call without arguments whose answer is returned as the JSON object it is."""
    call: _Call[dict[str, Any]] = _Call(method, path, _json_object)

    def build() -> _Call[dict[str, Any]]:
        return call

    build.__doc__ = doc
    return build


class _Endpoint(Generic[P, T]):
    """A method of both clients, defined once by the function that builds its :class:`_Call`:
    ``client.search(...)`` sends ``_search(...)`` through the client's transport, so it returns a
    :class:`SearchResult` on :class:`Client` and an awaitable of one on :class:`AsyncClient`."""

    def __init__(self, build: Callable[P, _Call[T]]) -> None:
        self.build = build
        self.name = build.__name__  # the attribute name, once set on a class
        self.__doc__ = build.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, client: None, owner: type | None = None) -> _Endpoint[P, T]: ...

    @overload
    def __get__(self, client: AsyncClient, owner: type | None = None) -> Callable[P, Coroutine[Any, Any, T]]: ...

    @overload
    def __get__(self, client: Client, owner: type | None = None) -> Callable[P, T]: ...

    def __get__(self, client: Any, owner: type | None = None) -> Any:
        if client is None:
            return self
        method = functools.wraps(self.build)(client._method(self.build))
        method.__name__, method.__qualname__ = self.name, f"{type(client).__name__}.{self.name}"
        return method


# ------------------------------------------------------------------------------ the one API, retries


class _Base(Generic[H]):
    """What the sync and async clients share: the API's methods, the retry policy and the error mapping.
    A transport (:class:`Client`, :class:`AsyncClient`) only sends a :class:`_Call` and sleeps between
    attempts, as :meth:`_retry_in` says."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = 30.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_wait_s: float = 30.0,
        http_client: H | None = None,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_wait_s = max_wait_s
        self.timeout = timeout
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http: H = http_client or self._new_http(timeout)

    def _new_http(self, timeout: float | httpx.Timeout) -> H:
        raise NotImplementedError

    def _method(self, build: Callable[P, _Call[T]]) -> Callable[P, Any]:
        raise NotImplementedError

    search = _Endpoint(_search)
    search_batch = _Endpoint(_search_batch)
    embed = _Endpoint(_embed)
    rerank = _Endpoint(_rerank)
    info = _Endpoint(_plain("GET", "/info", "``GET /info``: index, encoder, reranker, limits."))
    health = _Endpoint(_plain("GET", "/health", "``GET /health``."))
    ready = _Endpoint(_plain("GET", "/ready", "``GET /ready`` (UnavailableError while not ready, after the retries)."))
    reload = _Endpoint(_plain("POST", "/admin/reload", "``POST /admin/reload``: load ``current`` now (API key)."))
    upsert = _Endpoint(_upsert)
    delete = _Endpoint(_delete)
    get = _Endpoint(_get)

    def _request(self, call: _Call[Any]) -> dict[str, Any]:
        """The arguments of ``httpx.Client.request`` (or ``AsyncClient.request``) for ``call``."""
        return {
            "method": call.method,
            "url": self.base_url + call.path,
            "json": call.json,
            "params": call.params,
            "headers": self.headers,
        }

    def _retry_in(self, attempt: int, outcome: httpx.Response | httpx.TransportError) -> float | None:
        """Seconds to wait before retrying after attempt ``attempt`` (0-based) ended in ``outcome``
        (an answer, or a connection failure), or ``None``: no retry, :meth:`_result` is final."""
        if attempt >= self.max_retries:
            return None
        if isinstance(outcome, httpx.TransportError):
            return self._wait_s(attempt, None)
        if outcome.status_code in RETRY_STATUSES:
            return self._wait_s(attempt, outcome)
        return None

    def _wait_s(self, attempt: int, response: httpx.Response | None) -> float:
        """Seconds before retry ``attempt`` (0-based): the server's Retry-After, else exponential backoff."""
        if response is not None:
            header = response.headers.get("retry-after")
            if header:
                seconds = _parse_retry_after(header)
                if seconds is not None:
                    return min(max(seconds, 0.0), self.max_wait_s)
        return min(self.backoff_s * (2**attempt), self.max_wait_s)

    @staticmethod
    def _result(call: _Call[T], outcome: httpx.Response | httpx.TransportError) -> T:
        """The parsed answer of the last attempt; raises its connection failure or its error answer."""
        if isinstance(outcome, httpx.TransportError):
            raise outcome
        if outcome.status_code >= 400:
            error = error_from_response(outcome)
            if call.none_if_absent and _names_no_document(error):
                return None  # type: ignore[return-value]  # such calls are _Call[X | None]
            raise error
        return call.parse(outcome.json())


def _names_no_document(error: ServiceError) -> bool:
    """The document route's 404 (``not_found`` with the id in its detail), not an unknown route's 404
    (a server without ``/documents``), which stays an error."""
    return error.status == 404 and error.code == "not_found" and isinstance(error.detail, dict) and "id" in error.detail


def _parse_retry_after(value: str) -> float | None:
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return when.timestamp() - time.time()


# ---------------------------------------------------------------------------------------- transports


class Client(_Base[httpx.Client]):
    """Synchronous client. ``Client(base_url, api_key=None, timeout=30, max_retries=3, backoff_s=0.5,
    max_wait_s=30)``; use as a context manager or call :meth:`close`. ``http_client`` replaces the
    internal ``httpx.Client``."""

    def _new_http(self, timeout: float | httpx.Timeout) -> httpx.Client:
        return httpx.Client(timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _method(self, build: Callable[P, _Call[T]]) -> Callable[P, T]:
        def method(*args: P.args, **kwargs: P.kwargs) -> T:
            return self._send(build(*args, **kwargs))

        return method

    def _send(self, call: _Call[T]) -> T:
        attempt = 0
        while True:
            try:
                outcome: httpx.Response | httpx.TransportError = self._http.request(**self._request(call))
            except httpx.TransportError as error:
                outcome = error
            wait_s = self._retry_in(attempt, outcome)
            if wait_s is None:
                return self._result(call, outcome)
            time.sleep(wait_s)
            attempt += 1


class AsyncClient(_Base[httpx.AsyncClient]):
    """Asynchronous client with the same arguments and methods as :class:`Client`
    (``await client.search(...)``); use as an async context manager or call :meth:`aclose`."""

    def _new_http(self, timeout: float | httpx.Timeout) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def _method(self, build: Callable[P, _Call[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        async def method(*args: P.args, **kwargs: P.kwargs) -> T:
            return await self._send(build(*args, **kwargs))

        return method

    async def _send(self, call: _Call[T]) -> T:
        attempt = 0
        while True:
            try:
                outcome: httpx.Response | httpx.TransportError = await self._http.request(**self._request(call))
            except httpx.TransportError as error:
                outcome = error
            wait_s = self._retry_in(attempt, outcome)
            if wait_s is None:
                return self._result(call, outcome)
            await asyncio.sleep(wait_s)
            attempt += 1
