"""A small typed Python client for the semsearch service's native API (sync and async, over httpx).

>>> from semsearch.client import Client
>>> with Client("http://localhost:8000", api_key="...") as client:   # doctest: +SKIP
...     hits = client.search("a large wild cat", k=3).results

``Client`` and ``AsyncClient`` have the same methods (``search``, ``search_batch``, ``embed``, ``rerank``,
``info``, ``health``, ``ready``, ``reload``). A 429 or 503 answer is retried up to ``max_retries`` times, waiting what
the server's ``Retry-After`` says (else an exponential backoff from ``backoff_s``, at most
``max_wait_s``); connection failures are retried the same way. Every other error raises a
:class:`ServiceError` subclass that carries the server's ``status``, ``code``, ``message`` and ``detail``.

This is the only HTTP module of the ``semsearch`` package; it needs httpx and nothing of the service.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import httpx

Mode = Literal["dense", "lexical", "hybrid"]
T = TypeVar("T")

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
class SearchResult:
    results: list[Hit]
    took_ms: float
    index_version: str
    reranked: bool

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SearchResult:
        hits = [Hit.from_json(h) for h in data["results"]]
        return cls(hits, float(data["took_ms"]), str(data["index_version"]), bool(data["reranked"]))


@dataclass(frozen=True)
class BatchSearchResult:
    results: list[list[Hit]]
    took_ms: float
    index_version: str
    reranked: bool

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BatchSearchResult:
        rows = [[Hit.from_json(h) for h in row] for row in data["results"]]
        return cls(rows, float(data["took_ms"]), str(data["index_version"]), bool(data["reranked"]))


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


# ------------------------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class _Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[Any], T]
    json: Any = None
    params: Mapping[str, Any] | None = None


def _search_options(k: int, mode: Mode, filter: Mapping[str, Any] | None, rerank: bool, candidates: int | None) -> dict:
    body: dict[str, Any] = {"k": k, "mode": mode, "rerank": rerank}
    if filter is not None:
        body["filter"] = dict(filter)
    if candidates is not None:
        body["candidates"] = candidates
    return body


def _identity(data: Any) -> Any:
    return data


class _Base:
    """What the sync and async clients share: the calls, the retry policy and the error mapping."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        timeout: float | httpx.Timeout,
        max_retries: int,
        backoff_s: float,
        max_wait_s: float,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_wait_s = max_wait_s
        self.timeout = timeout
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    # the calls (one definition for both clients)

    @staticmethod
    def _search(
        query: str, k: int, mode: Mode, filter: Mapping[str, Any] | None, rerank: bool, candidates: int | None
    ) -> _Call[SearchResult]:
        body = {"query": query, **_search_options(k, mode, filter, rerank, candidates)}
        return _Call("POST", "/search", SearchResult.from_json, body)

    @staticmethod
    def _search_batch(
        queries: Sequence[str],
        k: int,
        mode: Mode,
        filter: Mapping[str, Any] | None,
        rerank: bool,
        candidates: int | None,
    ) -> _Call[BatchSearchResult]:
        body = {"queries": list(queries), **_search_options(k, mode, filter, rerank, candidates)}
        return _Call("POST", "/search/batch", BatchSearchResult.from_json, body)

    @staticmethod
    def _embed(texts: Sequence[str]) -> _Call[EmbedResult]:
        return _Call("POST", "/embed", EmbedResult.from_json, {"texts": list(texts)})

    @staticmethod
    def _rerank(query: str, texts: Sequence[str], top_k: int | None, raw_scores: bool) -> _Call[RerankResult]:
        body: dict[str, Any] = {"query": query, "texts": list(texts), "raw_scores": raw_scores}
        if top_k is not None:
            body["top_k"] = top_k
        return _Call("POST", "/rerank", RerankResult.from_json, body)

    # retries

    def _wait_s(self, attempt: int, response: httpx.Response | None) -> float:
        """Seconds before retry ``attempt`` (0-based): the server's Retry-After, else exponential backoff."""
        if response is not None:
            header = response.headers.get("retry-after")
            if header:
                seconds = _parse_retry_after(header)
                if seconds is not None:
                    return min(max(seconds, 0.0), self.max_wait_s)
        return min(self.backoff_s * (2**attempt), self.max_wait_s)

    def _should_retry(self, attempt: int, response: httpx.Response) -> bool:
        return attempt < self.max_retries and response.status_code in RETRY_STATUSES

    @staticmethod
    def _result(call: _Call[T], response: httpx.Response) -> T:
        if response.status_code >= 400:
            raise error_from_response(response)
        return call.parse(response.json())


def _parse_retry_after(value: str) -> float | None:
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return when.timestamp() - time.time()


class Client(_Base):
    """Synchronous client. ``Client(base_url, api_key=None, timeout=30, max_retries=3)``; use as a context
    manager or call :meth:`close`. ``http_client`` replaces the internal ``httpx.Client``."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = 30.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_wait_s: float = 30.0,
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            backoff_s=backoff_s,
            max_wait_s=max_wait_s,
        )
        self._http = http_client or httpx.Client(timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: _Call[T]) -> T:
        url = self.base_url + call.path
        attempt = 0
        while True:
            try:
                response = self._http.request(
                    call.method, url, json=call.json, params=call.params, headers=self.headers
                )
            except httpx.TransportError:
                if attempt >= self.max_retries:
                    raise
                time.sleep(self._wait_s(attempt, None))
                attempt += 1
                continue
            if not self._should_retry(attempt, response):
                return self._result(call, response)
            time.sleep(self._wait_s(attempt, response))
            attempt += 1

    def search(
        self,
        query: str,
        *,
        k: int = 10,
        mode: Mode = "dense",
        filter: Mapping[str, Any] | None = None,
        rerank: bool = False,
        candidates: int | None = None,
    ) -> SearchResult:
        """``POST /search``: the top ``k`` sentences for ``query``."""
        return self._send(self._search(query, k, mode, filter, rerank, candidates))

    def search_batch(
        self,
        queries: Sequence[str],
        *,
        k: int = 10,
        mode: Mode = "dense",
        filter: Mapping[str, Any] | None = None,
        rerank: bool = False,
        candidates: int | None = None,
    ) -> BatchSearchResult:
        """``POST /search/batch``: one result list per query, in order."""
        return self._send(self._search_batch(queries, k, mode, filter, rerank, candidates))

    def embed(self, texts: Sequence[str]) -> EmbedResult:
        """``POST /embed``: unit vectors of ``texts``."""
        return self._send(self._embed(texts))

    def rerank(
        self, query: str, texts: Sequence[str], *, top_k: int | None = None, raw_scores: bool = False
    ) -> RerankResult:
        """``POST /rerank``: ``texts`` best first by the reranker card's score (``raw_scores``: the
        cross-encoder alone)."""
        return self._send(self._rerank(query, texts, top_k, raw_scores))

    def info(self) -> dict[str, Any]:
        """``GET /info``: index, encoder, reranker, limits."""
        result: dict[str, Any] = self._send(_Call("GET", "/info", _identity))
        return result

    def health(self) -> dict[str, Any]:
        """``GET /health``."""
        result: dict[str, Any] = self._send(_Call("GET", "/health", _identity))
        return result

    def ready(self) -> dict[str, Any]:
        """``GET /ready`` (raises :class:`UnavailableError` while not ready, after the retries)."""
        result: dict[str, Any] = self._send(_Call("GET", "/ready", _identity))
        return result

    def reload(self) -> dict[str, Any]:
        """``POST /admin/reload``: load the index's ``current`` version now (needs the API key)."""
        result: dict[str, Any] = self._send(_Call("POST", "/admin/reload", _identity))
        return result


class AsyncClient(_Base):
    """Asynchronous client with the same methods as :class:`Client` (``await client.search(...)``)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = 30.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_wait_s: float = 30.0,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            backoff_s=backoff_s,
            max_wait_s=max_wait_s,
        )
        self._http = http_client or httpx.AsyncClient(timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: _Call[T]) -> T:
        url = self.base_url + call.path
        attempt = 0
        while True:
            try:
                response = await self._http.request(
                    call.method, url, json=call.json, params=call.params, headers=self.headers
                )
            except httpx.TransportError:
                if attempt >= self.max_retries:
                    raise
                await asyncio.sleep(self._wait_s(attempt, None))
                attempt += 1
                continue
            if not self._should_retry(attempt, response):
                return self._result(call, response)
            await asyncio.sleep(self._wait_s(attempt, response))
            attempt += 1

    async def search(
        self,
        query: str,
        *,
        k: int = 10,
        mode: Mode = "dense",
        filter: Mapping[str, Any] | None = None,
        rerank: bool = False,
        candidates: int | None = None,
    ) -> SearchResult:
        """``POST /search``."""
        return await self._send(self._search(query, k, mode, filter, rerank, candidates))

    async def search_batch(
        self,
        queries: Sequence[str],
        *,
        k: int = 10,
        mode: Mode = "dense",
        filter: Mapping[str, Any] | None = None,
        rerank: bool = False,
        candidates: int | None = None,
    ) -> BatchSearchResult:
        """``POST /search/batch``."""
        return await self._send(self._search_batch(queries, k, mode, filter, rerank, candidates))

    async def embed(self, texts: Sequence[str]) -> EmbedResult:
        """``POST /embed``."""
        return await self._send(self._embed(texts))

    async def rerank(
        self, query: str, texts: Sequence[str], *, top_k: int | None = None, raw_scores: bool = False
    ) -> RerankResult:
        """``POST /rerank``."""
        return await self._send(self._rerank(query, texts, top_k, raw_scores))

    async def info(self) -> dict[str, Any]:
        """``GET /info``."""
        result: dict[str, Any] = await self._send(_Call("GET", "/info", _identity))
        return result

    async def health(self) -> dict[str, Any]:
        """``GET /health``."""
        result: dict[str, Any] = await self._send(_Call("GET", "/health", _identity))
        return result

    async def ready(self) -> dict[str, Any]:
        """``GET /ready``."""
        result: dict[str, Any] = await self._send(_Call("GET", "/ready", _identity))
        return result

    async def reload(self) -> dict[str, Any]:
        """``POST /admin/reload``."""
        result: dict[str, Any] = await self._send(_Call("POST", "/admin/reload", _identity))
        return result
