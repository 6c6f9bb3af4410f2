"""Micro-batching: concurrent requests share one ``Encoder.encode`` call and one search per group.

Requests (:class:`Job`) wait in a bounded queue. A collector task on the event loop takes the first
waiting job, waits up to ``window_s`` for more (or until ``max_batch`` texts), and hands the batch to a
single worker thread, which

1. encodes every text of the batch that needs a vector in ONE ``Encoder.encode`` call,
2. borrows the current index version once for the whole batch (hot reload never splits a batch),
3. runs one ``semsearch.search.search`` per group of search jobs with the same ``mode`` and ``filter``
   (with the group's largest ``k``; each job keeps its own top ``k``),

and the collector resolves each job's future. A search job with a filter the current version has not
evaluated yet first waits on a thread of its own (:meth:`MicroBatcher._match_filter`): the first
evaluation of a filter reads every row's metadata (up to ~2 s on a big index, docs/reliability.md),
so it runs before the job joins a batch, and only that request waits for it; in the batch the
matching rows then come from the version's cache. While the worker is busy the next batch forms in the
queue, so batches grow with load even with ``window_s = 0``. ``max_batch = 1`` disables batching: each
request is encoded alone (the baseline of ``bench/http_bench.py``). A full queue raises
:class:`~app.errors.OverloadedError` (HTTP 429) instead of growing.

A batch is an optimisation, never a shared fate: input is validated at the edge (``app.schemas``), and
should the shared ``encode`` or a group's search still fail, the batch is retried job by job, so the
error goes to the job that caused it alone and its batchmates get their results.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.errors import ApiError, OverloadedError
from app.metrics import Metrics
from app.services import IndexHolder, version_name
from semsearch.encoder import Encoder
from semsearch.filters import CompiledFilter, compile_filter
from semsearch.search import Mode, search
from semsearch.search_index import Hit

log = logging.getLogger(__name__)

FILTER_WORKERS = 1  # first evaluations of filters at once, beside the encoder thread (SQLite releases the GIL)


@dataclass(frozen=True)
class SearchSpec:
    """How to search a job's queries."""

    k: int
    mode: Mode = "dense"
    filter: dict[str, Any] | None = None
    with_dense_scores: bool = False  # lexical hits get their cosine (``dense_score``) too, e.g. for reranking

    @property
    def needs_vectors(self) -> bool:
        return self.mode != "lexical" or self.with_dense_scores

    @property
    def group(self) -> tuple[str, str, bool]:
        """Jobs with the same group are searched together (with the group's largest k)."""
        key = json.dumps(self.filter, sort_keys=True, default=str) if self.filter else ""
        return self.mode, key, self.needs_vectors


@dataclass
class SearchOutcome:
    hits: list[list[Hit]]
    index_version: str


@dataclass
class Job:
    """One request: texts to embed, or queries to search (``spec`` set)."""

    texts: list[str]
    spec: SearchSpec | None
    future: asyncio.Future[Any]

    @property
    def needs_vectors(self) -> bool:
        return self.spec is None or self.spec.needs_vectors


class MicroBatcher:
    """Collects concurrent encode/search requests into batches run on one worker thread."""

    def __init__(
        self,
        encoder: Encoder,
        indexes: IndexHolder,
        metrics: Metrics,
        *,
        window_s: float,
        max_batch: int,
        max_queue: int,
        retry_after_s: int,
        filter_workers: int = FILTER_WORKERS,
    ) -> None:
        self.encoder = encoder
        self.indexes = indexes
        self.metrics = metrics
        self.window_s = window_s
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self._pending: deque[Job] = deque()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="semsearch-encode")
        self._filter_executor = ThreadPoolExecutor(max_workers=filter_workers, thread_name_prefix="semsearch-filter")
        self._filtering = 0  # requests waiting for a filter's first evaluation (bounded by max_queue)
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._collect(), name="semsearch-batcher")

    async def stop(self) -> None:
        """Stop collecting: waiting and in-progress requests get 503 (uvicorn lets in-flight requests
        finish before the lifespan stops us, so normally there are none); the worker thread completes
        its current batch before the executor is shut down."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._pending:
            job = self._pending.popleft()
            if not job.future.done():
                job.future.set_exception(ApiError(503, "shutting_down", "the service is shutting down"))
        self.metrics.queue_depth.set(0)
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        await asyncio.to_thread(self._filter_executor.shutdown, wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ API (event loop)

    async def search(self, queries: Sequence[str], spec: SearchSpec) -> SearchOutcome:
        """Top-``spec.k`` hits for each query, all from one index version."""
        if spec.filter:
            await self._match_filter(compile_filter(spec.filter))
        outcome: SearchOutcome = await self._submit(list(queries), spec)
        return outcome

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors of ``texts`` (the index's encoder)."""
        vectors: np.ndarray = await self._submit(list(texts), None)
        return vectors

    @property
    def depth(self) -> int:
        return len(self._pending)

    def _check_running(self) -> None:
        if self._task is None or self._task.done():
            raise ApiError(503, "not_ready", "the encoder worker is not running")

    async def _match_filter(self, compiled: CompiledFilter) -> None:
        """Evaluate a filter the current version has not cached on the filter thread, not in a batch.

        Only this request waits for it (behind at most ``filter_workers`` evaluations running and the
        others waiting, at most ``max_queue``: then 429); its batchmates never do. The result is cached
        for the version, so the job's search in the batch reads it from the cache. Should a reload swap
        in a new version between the two, the worker evaluates the filter on the new segments.
        """
        self._check_running()
        if not compiled or self.indexes.current.filter_cached(compiled):
            return
        if self._filtering >= self.max_queue:
            raise OverloadedError("filter", self.max_queue, self.retry_after_s)
        self._filtering += 1
        try:
            await asyncio.get_running_loop().run_in_executor(self._filter_executor, self._match, compiled)
        finally:
            self._filtering -= 1

    def _match(self, compiled: CompiledFilter) -> None:
        with self.indexes.use() as index:
            index.matching_iids(compiled)  # cached per segment (per version when sharded)

    async def _submit(self, texts: list[str], spec: SearchSpec | None) -> Any:
        self._check_running()
        if len(self._pending) >= self.max_queue:
            raise OverloadedError("encoder", self.max_queue, self.retry_after_s)
        job = Job(texts, spec, asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self.metrics.queue_depth.set(len(self._pending))
        self._wakeup.set()
        return await job.future

    # ------------------------------------------------------------------ collector (event loop)

    def _queued_texts(self) -> int:
        return sum(len(j.texts) for j in self._pending)

    async def _wait_for_more(self) -> None:
        """Wait up to the window for the batch to fill (returns early when it is full)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.window_s
        while self._queued_texts() < self.max_batch:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _take_batch(self) -> list[Job]:
        """Waiting jobs up to ``max_batch`` texts (at least one job; a job is never split)."""
        batch: list[Job] = []
        size = 0
        while self._pending and (not batch or size + len(self._pending[0].texts) <= self.max_batch):
            job = self._pending.popleft()
            if job.future.done():  # the client went away
                continue
            batch.append(job)
            size += len(job.texts)
        self.metrics.queue_depth.set(len(self._pending))
        return batch

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self.window_s > 0 and self.max_batch > 1:
                await self._wait_for_more()
            batch = self._take_batch()
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self._run_batch, batch)
            except asyncio.CancelledError:  # stopping: nobody will deliver this batch's results
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(ApiError(503, "shutting_down", "the service is shutting down"))
                raise
            except Exception as e:  # the worker itself failed: every job of the batch gets the error
                results = [e] * len(batch)
            for job, result in zip(batch, results, strict=True):
                if job.future.done():
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)

    # ------------------------------------------------------------------ worker thread

    def _run_batch(self, batch: list[Job]) -> list[Any]:
        started = time.perf_counter()
        results: list[Any] = [None] * len(batch)
        to_encode = [i for i, job in enumerate(batch) if job.needs_vectors]
        texts = [t for i in to_encode for t in batch[i].texts]
        vectors: dict[int, np.ndarray] = {}
        if texts:
            self.metrics.encode_batch_size.observe(len(texts))
            try:
                matrix = self.encoder.encode(texts, batch_size=len(texts))
            except Exception as e:
                if len(to_encode) == 1:
                    results[to_encode[0]] = e
                else:
                    self._encode_one_by_one(batch, to_encode, vectors, results)
            else:
                row = 0
                for i in to_encode:
                    n = len(batch[i].texts)
                    vectors[i] = matrix[row : row + n]
                    row += n
        groups: dict[tuple[str, str, bool], list[int]] = {}
        for i, job in enumerate(batch):
            if results[i] is not None:  # its encode failed
                continue
            if job.spec is None:
                results[i] = vectors[i]
            else:
                groups.setdefault(job.spec.group, []).append(i)
        if groups:
            with self.indexes.use() as index:
                version = version_name(index)
                for members in groups.values():
                    self._search_group(batch, members, vectors, index, version, results)
        self.metrics.encode_seconds.observe(time.perf_counter() - started)
        return results

    def _encode_one_by_one(
        self, batch: list[Job], to_encode: list[int], vectors: dict[int, np.ndarray], results: list[Any]
    ) -> None:
        """The shared encode failed: encode each job alone; a job that still fails gets its own error."""
        for i in to_encode:
            try:
                vectors[i] = self.encoder.encode(batch[i].texts, batch_size=len(batch[i].texts))
            except Exception as e:
                log.warning("encoding failed for one job of a micro-batch (%s: %s)", type(e).__name__, e)
                results[i] = e

    @staticmethod
    def _search_group(
        batch: list[Job],
        members: list[int],
        vectors: dict[int, np.ndarray],
        index: Any,
        version: str,
        results: list[Any],
    ) -> None:
        """One search for the group; if it fails, one search per job (errors stay with their job)."""

        def search_together(jobs: list[int]) -> None:
            first = batch[jobs[0]].spec
            assert first is not None
            k = max(batch[i].spec.k for i in jobs)  # type: ignore[union-attr]
            queries = [q for i in jobs for q in batch[i].texts]
            matrix = np.concatenate([vectors[i] for i in jobs]) if first.needs_vectors else None
            hits = search(index, queries, matrix, k, mode=first.mode, filter=first.filter)
            row = 0
            for i in jobs:
                job_k = batch[i].spec.k  # type: ignore[union-attr]
                n = len(batch[i].texts)
                results[i] = SearchOutcome([h[:job_k] for h in hits[row : row + n]], version)
                row += n

        try:
            search_together(members)
        except Exception as e:
            if len(members) == 1:
                results[members[0]] = e
                return
            for i in members:
                try:
                    search_together([i])
                except Exception as job_error:
                    results[i] = job_error
