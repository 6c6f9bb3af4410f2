"""Cross-encoder scoring off the event loop, in chunks: a bounded number of waiting requests, and no
request holds the cross-encoder for longer than one chunk while others wait.

Each request runs on a thread of its own (up to :data:`RERANK_THREADS`; more wait for a free one). The
reranker's backend is wrapped (:class:`ChunkedLogits`): a call's (query, text) pairs are split, in the
backend's own order (longest first), into chunks of at most ``max_batch_tokens`` (padded, estimated as
the batcher does), and every chunk takes a turn of the one cross-encoder (:class:`Turns`). A call of one
chunk is *small* and goes before the chunks of bulk calls (the oldest bulk call first); while both wait,
turns alternate, so a search's rerank of a few candidates waits for at most one chunk of a 200-text
``/rerank``, and the bulk call still progresses. The scores are the backend's for the same pairs (each
row is scored on its own; padding does not change it), fused afterwards as before.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np

from app.errors import ApiError, OverloadedError
from app.metrics import Metrics
from semsearch.models import Reranker
from semsearch.search import Hit, rerank

RERANK_THREADS = 16  # rerank requests in progress at once (their chunks take turns); more wait for a thread

_request = threading.local()  # the arrival number of the request a rerank thread is running


class Turns:
    """One holder of the cross-encoder at a time; waiting chunks by kind, then request arrival.

    No polling: a waiter sleeps on a condition until the holder hands over (a handful of threads)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._busy = False
        self._last_bulk = False
        self._waiting: set[tuple[int, int, int]] = set()  # (bulk, request, ticket)
        self._tickets = itertools.count()
        self.granted: list[tuple[bool, int]] = []  # (bulk, request) of recent turns, for tests (bounded)

    def _next(self) -> tuple[int, int, int]:
        small = [w for w in self._waiting if not w[0]]
        bulk = [w for w in self._waiting if w[0]]
        if small and bulk:
            return min(small) if self._last_bulk else min(bulk)
        return min(small or bulk)

    @contextmanager
    def turn(self, bulk: bool, request: int) -> Iterator[None]:
        with self._cond:
            entry = (int(bulk), request, next(self._tickets))
            self._waiting.add(entry)
            while self._busy or self._next() != entry:
                self._cond.wait()
            self._waiting.discard(entry)
            self._busy = True
            self._last_bulk = bulk
            self.granted.append((bulk, request))
            del self.granted[:-1000]
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()


def pair_tokens(a: str, b: str, max_length: int) -> int:
    """A pair's tokens as the budget counts them (see ``app.batcher.estimate_tokens``): [CLS] a [SEP] b [SEP]."""
    return min(max_length, (len(a) + len(b)) // 4 + 3)


class ChunkedLogits:
    """A reranker backend (``logits(pairs, batch_size)``) run in budgeted chunks, each in its turn."""

    def __init__(self, inner: Any, turns: Turns, max_tokens: int, max_length: int) -> None:
        self.inner = inner
        self.turns = turns
        self.max_tokens = max_tokens
        self.max_length = max_length

    def chunks(self, pairs: Sequence[tuple[str, str]], batch_size: int) -> list[list[int]]:
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))  # stable
        chunks: list[list[int]] = []
        width = 0  # the current chunk's widest pair: its first (longest first)
        for i in order:
            if chunks and len(chunks[-1]) < batch_size and (len(chunks[-1]) + 1) * width <= self.max_tokens:
                chunks[-1].append(i)
            else:
                chunks.append([i])
                width = pair_tokens(*pairs[i], self.max_length)
        return chunks

    def logits(self, pairs: Sequence[tuple[str, str]], batch_size: int) -> np.ndarray:
        out = np.empty(len(pairs), dtype=np.float32)
        chunks = self.chunks(pairs, batch_size)
        request = getattr(_request, "number", 0)
        for idx in chunks:
            with self.turns.turn(len(chunks) > 1, request):
                out[idx] = self.inner.logits([pairs[i] for i in idx], len(idx))
        return out


NO_RERANKER = (
    "no reranker is configured: start the service with --reranker PATH_OR_NAME (or SEMSEARCH_RERANKER), "
    "e.g. a folder trained with `make reranker`"
)


class RerankRunner:
    """Runs :meth:`Reranker.score` in its own worker thread; 503 without a reranker, 429 when full."""

    def __init__(
        self,
        reranker: Reranker | None,
        metrics: Metrics,
        *,
        max_queue: int,
        retry_after_s: int,
        max_batch_tokens: int = 256,
    ) -> None:
        self.reranker = reranker
        self.metrics = metrics
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self.turns = Turns()
        self._requests = itertools.count(1)
        if reranker is not None:  # chunk its backend (once: a reranker may serve several app instances)
            inner = reranker._backend
            if isinstance(inner, ChunkedLogits):
                inner = inner.inner
            reranker._backend = ChunkedLogits(inner, self.turns, max_batch_tokens, reranker.max_length)
        self._in_flight = 0
        self._executor = ThreadPoolExecutor(max_workers=RERANK_THREADS, thread_name_prefix="semsearch-rerank")

    def require(self) -> Reranker:
        """The reranker, or a 503 that says how to configure one."""
        if self.reranker is None:
            raise ApiError(503, "no_reranker", NO_RERANKER, {"configure": "--reranker", "train": "make reranker"})
        return self.reranker

    async def score(self, query: str, texts: Sequence[str]) -> np.ndarray:
        """Scores of ``texts`` for ``query`` (input order): ``Reranker.score`` without retrieval scores."""
        reranker = self.require()
        scores: np.ndarray = await self._run(lambda: reranker.score(query, list(texts)))
        return scores

    async def score_texts(
        self, query: str, texts: Sequence[str], cosines: Sequence[float] | None, *, count_tokens: bool = False
    ) -> tuple[np.ndarray, str, int]:
        """``Reranker.score_texts`` (the card's score; ``cosines=None``: sigmoid) plus, when asked, the
        tokens the cross-encoder read, in one job of the worker thread."""
        reranker = self.require()

        def work() -> tuple[np.ndarray, str, int]:
            scores, kind = reranker.score_texts(query, list(texts), cosines)
            return scores, kind, reranker.token_count(query, list(texts)) if count_tokens else 0

        result: tuple[np.ndarray, str, int] = await self._run(work)
        return result

    async def rerank(self, queries: Sequence[str], results: Sequence[Sequence[Hit]], k: int) -> list[list[Hit]]:
        """Each query's hits rescored (fused with their cosine when the reranker says so), top ``k``."""
        reranker = self.require()
        reranked: list[list[Hit]] = await self._run(lambda: rerank(reranker, queries, results, k))
        return reranked

    async def _run(self, work: Callable[[], Any]) -> Any:
        if self._in_flight >= self.max_queue:
            raise OverloadedError("reranker", self.max_queue, self.retry_after_s)
        self._in_flight += 1
        self.metrics.rerank_in_flight.set(self._in_flight)
        started = time.perf_counter()
        number = next(self._requests)

        def numbered() -> Any:
            _request.number = number  # its chunks' place among bulk calls: arrival order
            return work()

        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, numbered)
        finally:
            self._in_flight -= 1
            self.metrics.rerank_in_flight.set(self._in_flight)
            self.metrics.rerank_seconds.observe(time.perf_counter() - started)

    async def stop(self) -> None:
        await asyncio.to_thread(self._executor.shutdown, wait=True)
