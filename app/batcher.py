"""Micro-batching: concurrent requests share one ``Encoder.encode`` call and one search per group.

Requests (:class:`Job`) wait in a bounded queue. A collector task on the event loop takes the first
waiting job, waits up to ``window_s`` for more (or until ``max_batch`` texts), and hands the batch to a
single worker thread, which

1. encodes every text of the batch that needs a vector in ONE ``Encoder.encode`` call,
2. borrows the current version of each collection in it once for the whole batch (hot reload never splits a batch),
3. runs one ``semsearch.search.modes.search`` per group of search jobs with the same collection (the job's
   ``indexes`` holder: collections with the same model share one batcher), ``mode`` and ``filter``
   (with the group's largest ``k``; each job keeps its own top ``k``),

and the collector resolves each job's future. A search job with a filter the current version has not
evaluated yet first waits on a thread of its own (:meth:`MicroBatcher._match_filter`): the first
evaluation of a filter reads every row's metadata (up to ~2 s on a big index, docs/reliability.md),
so it runs before the job joins a batch, and only that request waits for it; in the batch the
matching rows then come from the version's cache. While the worker is busy the next batch forms in the
queue, so batches grow with load even with ``window_s = 0``. ``max_batch = 1`` disables batching: each
request is encoded alone (the baseline of ``bench/http_bench.py``). A full queue raises
:class:`~app.errors.OverloadedError` (HTTP 429) instead of growing.

**One request cannot hold the others** (``max_batch_tokens``, docs/reliability.md). Each text's cost is
estimated without tokenising (:func:`estimate_tokens`: characters/4 + 2, at most the encoder's
``max_seq_length``), and a batch's cost is its padded size (texts x the longest estimate). A job that
fits what is left of the budget is taken whole (small requests, in arrival order); a job that does
not (``/embed`` of 64 long texts, a 64-query ``/search/batch``, the texts of a ``/rerank``) is *bulk*:
it is encoded in chunks of at most the budget, each chunk a batch of its own, and batches of small
requests and chunks of bulk ones alternate while both wait. So a short query waits for at most one
chunk, never for a whole bulk request, and bulk requests still progress under a stream of small ones.
The encoder is per-row deterministic (padding and batchmates do not change a text's vector), so a
chunked request's vectors equal those of one batch; a search job is searched once, in the batch of its
last chunk, so it still reads one index version. A job whose client went away is dropped between chunks.

A batch is an optimisation, never a shared fate: input is validated at the edge (``app.schemas``), and
should the shared ``encode`` or a group's search still fail, the batch is retried job by job, so the
error goes to the job that caused it alone and its batchmates get their results.

**Queries first.** The texts of online writes (``--writable``, :meth:`MicroBatcher.embed_writes`) wait
in a second, lower-priority lane: a batch is taken from it only when no query or embed job is waiting,
in chunks of at most ``write_batch_tokens``, so a steady write load delays a query by at most one
write chunk.
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
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from app.errors import ApiError, OverloadedError
from app.metrics import Metrics
from app.services import IndexHolder, version_name
from semsearch.models import Encoder
from semsearch.search import CompiledFilter, Group, Grouping, Hit, Mode, compile_filter, search, search_groups

log = logging.getLogger(__name__)

FILTER_WORKERS = 1  # first evaluations of filters at once, beside the encoder thread (SQLite releases the GIL)


@dataclass(frozen=True)
class SearchSpec:
    """How to search a job's queries."""

    k: int
    mode: Mode = "dense"
    filter: dict[str, Any] | None = None
    with_dense_scores: bool = False  # lexical hits get their cosine (``dense_score``) too, e.g. for reranking
    grouping: Grouping | None = None  # groups instead of hits (semsearch.search.grouping), from ``offset`` on
    offset: int = 0
    compiled: CompiledFilter | None = None  # ``filter`` compiled once, when the job is submitted

    @property
    def search_filter(self) -> CompiledFilter | dict[str, Any] | None:
        return self.compiled if self.compiled is not None else self.filter

    @property
    def needs_vectors(self) -> bool:
        return self.mode != "lexical" or self.with_dense_scores

    @property
    def group(self) -> tuple[str, str, bool]:
        """Jobs with the same group are searched together (with the group's largest k)."""
        key = json.dumps(self.filter, sort_keys=True, default=str) if self.filter else ""
        if self.grouping is not None:
            key += f"\x00{self.grouping}\x00{self.offset}"
        return self.mode, key, self.needs_vectors


@dataclass
class SearchOutcome:
    hits: list[list[Hit]]
    index_version: str
    groups: list[list[Group]] | None = None  # with ``SearchSpec.grouping`` (then ``hits`` is empty)


def estimate_tokens(text: str, max_seq_length: int) -> int:
    """A text's token count as the budget counts it, without tokenising (tokenising 64 long texts costs
    ~0.3 s on the event loop): ~4 characters per WordPiece token in English, plus [CLS] and [SEP], at most
    what the encoder reads. Scripts with more tokens per character (CJK) count less than they cost, but
    never more than ``max_seq_length``, so the longest possible chunk is bounded all the same."""
    return min(max_seq_length, len(text) // 4 + 2)


@dataclass
class Job:
    """One request: texts to embed, or queries to search (``spec`` set).

    ``costs`` are the texts' estimated tokens (0 for a search that encodes nothing); ``cursor`` is how
    many texts have been handed to a batch, ``parts`` the vectors of the chunks already encoded."""

    texts: list[str]
    spec: SearchSpec | None
    future: asyncio.Future[Any]
    costs: list[int] = field(default_factory=list)
    cursor: int = 0
    indexes: IndexHolder | None = None  # the job's collection (None: the batcher's own index)
    parts: list[np.ndarray] = field(default_factory=list)
    prompt: str = ""  # prepended to each text when encoding (a search: the index's query prompt)

    @property
    def needs_vectors(self) -> bool:
        return self.spec is None or self.spec.needs_vectors

    def padded_cost(self, start: int, end: int) -> int:
        """What encoding texts ``start:end`` in one padded batch costs: rows x the longest row."""
        return (end - start) * max(self.costs[start:end], default=0)


@dataclass(frozen=True)
class Piece:
    """Texts ``start:end`` of a job, encoded in one batch; ``last`` when they finish the job."""

    job: Job
    start: int
    end: int

    @property
    def last(self) -> bool:
        return self.end == len(self.job.texts)

    @property
    def texts(self) -> list[str]:
        return self.job.texts[self.start : self.end]


class _Partial:
    """A chunk's vectors, kept on the job until its last chunk is encoded."""

    __slots__ = ("vectors",)

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors


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
        max_batch_tokens: int = 256,
        filter_workers: int = FILTER_WORKERS,
        write_batch_tokens: int = 2048,
    ) -> None:
        self.encoder = encoder
        self.indexes = indexes
        self.metrics = metrics
        self.window_s = window_s
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self.max_batch_tokens = max_batch_tokens
        self.max_seq_length = int(getattr(encoder, "max_seq_length", None) or 512)
        self._last_was_bulk = False  # small batches and bulk chunks alternate while both wait
        self._pending: deque[Job] = deque()
        self._writes: deque[Job] = deque()  # the low-priority lane: texts of online writes
        self.write_batch_tokens = write_batch_tokens
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
        for job in [*self._pending, *self._writes]:
            if not job.future.done():
                job.future.set_exception(ApiError(503, "shutting_down", "the service is shutting down"))
        self._pending.clear()
        self._writes.clear()
        self.metrics.queue_depth.set(0)
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        await asyncio.to_thread(self._filter_executor.shutdown, wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ API (event loop)

    async def search(
        self, queries: Sequence[str], spec: SearchSpec, indexes: IndexHolder | None = None
    ) -> SearchOutcome:
        """Top-``spec.k`` hits for each query, all from one index version (of ``indexes``, the collection's
        holder, when collections share this batcher's encoder; default: the batcher's own)."""
        holder = indexes or self.indexes
        if spec.filter:
            compiled = compile_filter(spec.filter)
            spec = replace(spec, compiled=compiled)  # once per request, carried by the job
            await self._match_filter(compiled, holder)
        outcome: SearchOutcome = await self._submit(
            list(queries), spec, getattr(self.encoder, "query_prompt", None) or "", holder
        )
        return outcome

    async def embed(self, texts: Sequence[str], prompt: str = "") -> np.ndarray:
        """Unit vectors of ``texts`` (the index's encoder), each prefixed with ``prompt``."""
        vectors: np.ndarray = await self._submit(list(texts), None, prompt)
        return vectors

    async def embed_writes(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors of a write's texts, encoded in the low-priority lane (after waiting queries)."""
        self._check_running()
        job = Job(list(texts), None, asyncio.get_running_loop().create_future())
        job.costs = [estimate_tokens(t, self.max_seq_length) for t in texts]
        self._writes.append(job)
        self._wakeup.set()
        vectors: np.ndarray = await job.future
        return vectors

    @property
    def depth(self) -> int:
        return len(self._pending)

    def _check_running(self) -> None:
        if self._task is None or self._task.done():
            raise ApiError(503, "not_ready", "the encoder worker is not running")

    async def _match_filter(self, compiled: CompiledFilter, holder: IndexHolder | None = None) -> None:
        """Evaluate a filter the current version has not cached on the filter thread, not in a batch.

        Only this request waits for it (behind at most ``filter_workers`` evaluations running and the
        others waiting, at most ``max_queue``: then 429); its batchmates never do. The result is cached
        for the version, so the job's search in the batch reads it from the cache. Should a reload swap
        in a new version between the two, the worker evaluates the filter on the new segments.
        """
        self._check_running()
        holder = holder or self.indexes
        if not compiled or holder.current.filter_cached(compiled):
            return
        if self._filtering >= self.max_queue:
            raise OverloadedError("filter", self.max_queue, self.retry_after_s)
        self._filtering += 1
        try:
            await asyncio.get_running_loop().run_in_executor(self._filter_executor, self._match, compiled, holder)
        finally:
            self._filtering -= 1

    def _match(self, compiled: CompiledFilter, holder: IndexHolder) -> None:
        with holder.use() as index:
            index.matching_iids(compiled)  # cached per segment (per version when sharded)

    async def _submit(
        self, texts: list[str], spec: SearchSpec | None, prompt: str = "", holder: IndexHolder | None = None
    ) -> Any:
        self._check_running()
        if len(self._pending) >= self.max_queue:
            raise OverloadedError("encoder", self.max_queue, self.retry_after_s)
        job = Job(texts, spec, asyncio.get_running_loop().create_future(), prompt=prompt, indexes=holder)
        if job.needs_vectors:
            job.costs = [estimate_tokens(t, self.max_seq_length) for t in texts]
        else:
            job.costs = [0] * len(texts)
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

    def _take_batch(self) -> list[Piece]:
        """The next batch: small jobs taken whole, or one chunk of the oldest bulk job (see the module doc).

        Small: the job's remaining texts fit ``max_batch`` texts and ``max_batch_tokens`` (padded) on top
        of the jobs already taken. While both kinds wait, a batch of small jobs and a bulk chunk alternate.
        """
        small: list[Piece] = []
        bulk: Job | None = None
        texts, width = 0, 0  # the small batch so far: rows and longest estimate
        for job in self._pending:
            if job.future.done():  # the client went away (or an earlier chunk failed)
                continue
            n = len(job.texts) - job.cursor
            job_width = max(job.costs[job.cursor :], default=0)
            new_width = max(width, job_width)
            if not job.needs_vectors or (
                texts + n <= self.max_batch and (texts + n) * new_width <= self.max_batch_tokens
            ):  # fits (a lexical search encodes nothing: always whole)
                small.append(Piece(job, job.cursor, len(job.texts)))
                if job.needs_vectors:
                    texts, width = texts + n, new_width
            elif bulk is None and job.cursor == 0 and n <= self.max_batch and n * job_width <= self.max_batch_tokens:
                continue  # fits an empty batch: small, in the next one
            elif bulk is None:
                bulk = job
        if bulk is not None and (not small or not self._last_was_bulk):
            batch = [self._chunk(bulk)]
            self._last_was_bulk = True
        else:
            batch = small
            self._last_was_bulk = False
        for piece in batch:
            piece.job.cursor = piece.end
        self._pending = deque(j for j in self._pending if j.cursor < len(j.texts) and not j.future.done())
        self.metrics.queue_depth.set(len(self._pending))
        return batch

    def _take_write_chunk(self) -> list[Piece]:
        """One chunk of the oldest write job (writes go one chunk at a time, so queries cut in between)."""
        while self._writes and self._writes[0].future.done():
            self._writes.popleft()
        if not self._writes:
            return []
        piece = self._chunk(self._writes[0], self.write_batch_tokens)
        piece.job.cursor = piece.end
        if piece.last:
            self._writes.popleft()
        return [piece]

    def _chunk(self, job: Job, budget: int | None = None) -> Piece:
        """The longest run of the job's next texts within the budget (at least one text)."""
        end = job.cursor + 1
        while (
            end < len(job.texts)
            and end - job.cursor < self.max_batch
            and job.padded_cost(job.cursor, end + 1) <= (budget or self.max_batch_tokens)
        ):
            end += 1
        return Piece(job, job.cursor, end)

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending and not self._writes:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self._pending and self.window_s > 0 and self.max_batch > 1:
                await self._wait_for_more()
            batch = self._take_batch() if self._pending else self._take_write_chunk()
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self._run_batch, batch)
            except asyncio.CancelledError:  # stopping: nobody will deliver this batch's results
                for piece in batch:
                    if not piece.job.future.done():
                        piece.job.future.set_exception(ApiError(503, "shutting_down", "the service is shutting down"))
                raise
            except Exception as e:  # the worker itself failed: every job of the batch gets the error
                results = [e] * len(batch)
            for piece, result in zip(batch, results, strict=True):
                job = piece.job
                if job.future.done():
                    continue
                if isinstance(result, _Partial):
                    job.parts.append(result.vectors)
                elif isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)
            if any(not piece.last for piece in batch) or self._writes:
                self._wakeup.set()  # the rest of a bulk job is still waiting

    # ------------------------------------------------------------------ worker thread

    def _run_batch(self, batch: list[Piece]) -> list[Any]:
        started = time.perf_counter()
        results: list[Any] = [None] * len(batch)
        to_encode = [i for i, piece in enumerate(batch) if piece.job.needs_vectors]
        texts = [t for i in to_encode for t in batch[i].texts]
        vectors: dict[int, np.ndarray] = {}
        if texts:
            self.metrics.encode_batch_size.observe(len(texts))
            try:
                prompts = [batch[i].job.prompt for i in to_encode for _ in batch[i].texts]
                matrix = self._encode(texts, prompts)
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
        groups: dict[tuple[int, Any], list[int]] = {}  # by collection, then the spec's group
        holders: dict[int, IndexHolder] = {}
        for i, piece in enumerate(batch):
            if results[i] is not None:  # its encode failed
                continue
            job = piece.job
            if not piece.last:
                results[i] = _Partial(vectors[i])
                continue
            if i in vectors and job.parts:  # the job's earlier chunks, then this one
                vectors[i] = np.concatenate([*job.parts, vectors[i]])
            if job.spec is None:
                results[i] = vectors[i]
            else:
                holder = job.indexes or self.indexes
                holders[id(holder)] = holder
                groups.setdefault((id(holder), job.spec.group), []).append(i)
        for key, holder in holders.items():  # each collection's version borrowed once for the batch
            with holder.use() as index:
                version = version_name(index)
                for (owner, _), members in groups.items():
                    if owner == key:
                        self._search_group(batch, members, vectors, index, version, results)
        self.metrics.encode_seconds.observe(time.perf_counter() - started)
        return results

    def _encode(self, texts: list[str], prompts: list[str]) -> np.ndarray:
        if any(prompts):  # (raw text: the plain call, which any encoder-like object answers)
            return self.encoder.encode(texts, batch_size=len(texts), prompt=prompts)
        return self.encoder.encode(texts, batch_size=len(texts))

    def _encode_one_by_one(
        self, batch: list[Piece], to_encode: list[int], vectors: dict[int, np.ndarray], results: list[Any]
    ) -> None:
        """The shared encode failed: encode each job alone; a job that still fails gets its own error."""
        for i in to_encode:
            texts = batch[i].texts
            try:
                vectors[i] = self._encode(texts, [batch[i].job.prompt] * len(texts))
            except Exception as e:
                log.warning("encoding failed for one job of a micro-batch (%s: %s)", type(e).__name__, e)
                results[i] = e

    @staticmethod
    def _search_group(
        batch: list[Piece],
        members: list[int],
        vectors: dict[int, np.ndarray],
        index: Any,
        version: str,
        results: list[Any],
    ) -> None:
        """One search for the group; if it fails, one search per job (errors stay with their job)."""

        def search_together(jobs: list[int]) -> None:
            first = batch[jobs[0]].job.spec
            assert first is not None
            k = max(batch[i].job.spec.k for i in jobs)  # type: ignore[union-attr]
            queries = [q for i in jobs for q in batch[i].job.texts]
            matrix = np.concatenate([vectors[i] for i in jobs]) if first.needs_vectors else None
            if first.grouping is not None:
                groups = search_groups(
                    index,
                    queries,
                    matrix,
                    k,
                    first.mode,
                    first.search_filter,
                    grouping=first.grouping,
                    offset=first.offset,
                )
                row = 0
                for i in jobs:
                    job_k, n = batch[i].job.spec.k, len(batch[i].job.texts)  # type: ignore[union-attr]
                    results[i] = SearchOutcome([], version, [g[:job_k] for g in groups[row : row + n]])
                    row += n
                return
            hits = search(index, queries, matrix, k, mode=first.mode, filter=first.search_filter)
            row = 0
            for i in jobs:
                job_k = batch[i].job.spec.k  # type: ignore[union-attr]
                n = len(batch[i].job.texts)
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
