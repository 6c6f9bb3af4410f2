"""Cross-encoder scoring off the event loop: one worker thread, a bounded number of waiting requests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from app.errors import ApiError, OverloadedError
from app.metrics import Metrics
from semsearch.rerank import Reranker
from semsearch.search import rerank
from semsearch.search_index import Hit

NO_RERANKER = (
    "no reranker is configured: start the service with --reranker PATH_OR_NAME (or SEMSEARCH_RERANKER), "
    "e.g. a folder trained with `make reranker`"
)


class RerankRunner:
    """Runs :meth:`Reranker.score` in its own worker thread; 503 without a reranker, 429 when full."""

    def __init__(self, reranker: Reranker | None, metrics: Metrics, *, max_queue: int, retry_after_s: int) -> None:
        self.reranker = reranker
        self.metrics = metrics
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self._in_flight = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="semsearch-rerank")

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
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, work)
        finally:
            self._in_flight -= 1
            self.metrics.rerank_in_flight.set(self._in_flight)
            self.metrics.rerank_seconds.observe(time.perf_counter() - started)

    async def stop(self) -> None:
        await asyncio.to_thread(self._executor.shutdown, wait=True)
