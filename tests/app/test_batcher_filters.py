"""A filter's first evaluation never holds up unrelated requests (issue 13, finding 4's leftover).

Matching a new filter reads every row's metadata in SQLite (about 2 s at the bounds over 100,000 rows,
docs/reliability.md): it runs on the micro-batcher's filter thread before the job joins a batch, so
plain queries and embeddings keep being answered meanwhile. The index is a real one (synthetic rows
written by the core writer, real FAISS and SQLite); the encoder is a tiny fake, and the "slow
filter" is the real ``matching_iids`` held at a gate, so the test checks the order of events, not
the clock.
"""

from __future__ import annotations

import asyncio
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import DIM, META, synthetic_row

from app.batcher import MicroBatcher, SearchSpec
from app.errors import OverloadedError
from app.metrics import Metrics
from app.services import IndexHolder
from semsearch.index.layout import IndexRoot
from semsearch.index.writer import IndexWriter
from semsearch.search.filters import compile_filter
from semsearch.search.modes import search
from semsearch.search.reader import SearchIndex
from semsearch.search.sharded import load_local

HANG_GUARD_S = 20  # only so that a regression fails instead of hanging; nothing here is timed


class FakeEncoder:
    """A seeded unit vector per text (the real model is not what this test is about)."""

    dim = DIM

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        out = np.stack([np.random.default_rng(zlib.crc32(t.encode())).standard_normal(DIM) for t in texts])
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def _build(path: Path, shards: int | None = None) -> Path:
    rng = np.random.default_rng(5)
    root = IndexRoot(path)
    with root.lock():
        writer = IndexWriter(root, "build", META, {"type": "flat", "params": {}}, shards=shards)
        rows = [synthetic_row(rng, f"r{i}") for i in range(120)]
        writer.add_chunk([r for r, _ in rows], np.stack([v for _, v in rows]), [], len(rows), "error")
        writer.commit({"kind": "build"})
    return path


@pytest.fixture()
def index(tmp_path) -> Iterator[SearchIndex]:
    idx = SearchIndex.load(_build(tmp_path / "idx"))
    yield idx
    idx.close()


class Gate:
    """Wraps an index's ``matching_iids``: records (thread, was it cached) and holds cache misses."""

    def __init__(self, index: Any) -> None:
        self.real = index.matching_iids
        self.index = index
        self.calls: list[tuple[str, bool]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        index.matching_iids = self

    def __call__(self, compiled: Any) -> np.ndarray:
        cached = self.index.filter_cached(compiled)
        self.calls.append((threading.current_thread().name, cached))
        if not cached:
            self.entered.set()
            if not self.release.wait(HANG_GUARD_S):
                raise RuntimeError("the gate was never opened")
        iids: np.ndarray = self.real(compiled)
        return iids


def _batcher(index: Any, max_queue: int = 16) -> MicroBatcher:
    return MicroBatcher(
        FakeEncoder(),  # type: ignore[arg-type]
        IndexHolder(index),
        Metrics(),
        window_s=0.02,
        max_batch=64,
        max_queue=max_queue,
        retry_after_s=1,
    )


def test_a_new_filter_is_evaluated_off_the_encoder_thread(index) -> None:
    gate = Gate(index)
    flt = {"g": 1}

    async def scenario() -> tuple[Any, list[Any], bool, Any]:
        b = _batcher(index)
        b.start()
        try:
            filtered = asyncio.create_task(b.search(["q0"], SearchSpec(k=5, filter=flt)))
            assert await asyncio.to_thread(gate.entered.wait, HANG_GUARD_S)  # its evaluation has begun
            # while that filter is still being evaluated, unrelated requests are answered
            try:
                plain = await asyncio.wait_for(
                    asyncio.gather(b.search(["q1"], SearchSpec(k=5)), b.embed(["some text"])), HANG_GUARD_S
                )
            except TimeoutError:  # they waited for the filter (reported below, once the threads are done)
                plain = []
            still_waiting = not filtered.done()
            gate.release.set()
            first = await asyncio.wait_for(filtered, HANG_GUARD_S)
            again = await asyncio.wait_for(b.search(["q2"], SearchSpec(k=5, filter=flt)), HANG_GUARD_S)
            return first, plain, still_waiting, again
        finally:
            gate.release.set()
            await b.stop()

    first, plain, still_waiting, again = asyncio.run(scenario())
    assert plain, "the plain requests waited for the filter's first evaluation"
    assert still_waiting  # they were answered while it was still being evaluated
    plain_search, embedded = plain
    assert len(plain_search.hits[0]) == 5 and embedded.shape == (1, DIM)
    # the one uncached evaluation ran on the filter thread; the encoder thread only read the cache
    misses = [name for name, cached in gate.calls if not cached]
    assert len(misses) == 1 and misses[0].startswith("semsearch-filter"), gate.calls
    assert all(cached for name, cached in gate.calls if name.startswith("semsearch-encode")), gate.calls
    # and the filtered answers are the right ones
    want = search(index, ["q0"], FakeEncoder().encode(["q0"]), 5, filter=flt)
    assert [h.id for h in first.hits[0]] == [h.id for h in want[0]] and all(h.metadata["g"] == 1 for h in want[0])
    assert [h.metadata["g"] for h in again.hits[0]] == [1] * 5
    # the second request with the same filter found it cached: no second evaluation
    assert sum(1 for name, _ in gate.calls if name.startswith("semsearch-filter")) == 1


def test_filters_waiting_for_their_first_evaluation_are_bounded(index) -> None:
    gate = Gate(index)

    async def scenario() -> tuple[Any, BaseException | None]:
        b = _batcher(index, max_queue=1)
        b.start()
        try:
            held = asyncio.create_task(b.search(["q0"], SearchSpec(k=3, filter={"g": 0})))
            assert await asyncio.to_thread(gate.entered.wait, HANG_GUARD_S)
            refused: BaseException | None = None
            try:
                await b.search(["q1"], SearchSpec(k=3, filter={"g": 2}))
            except OverloadedError as e:
                refused = e
            gate.release.set()
            return await asyncio.wait_for(held, HANG_GUARD_S), refused
        finally:
            gate.release.set()
            await b.stop()

    held, refused = asyncio.run(scenario())
    assert isinstance(refused, OverloadedError) and refused.status == 429
    assert refused.detail == {"queue": "filter", "max_queue": 1}
    assert [h.metadata["g"] for h in held.hits[0]] == [0, 0, 0]


def test_filter_cached_per_version_unsharded_and_sharded(tmp_path) -> None:
    compiled = compile_filter({"g": 2})
    one = SearchIndex.load(_build(tmp_path / "one"))
    many = load_local(_build(tmp_path / "many", shards=2))
    try:
        for idx in (one, many):
            assert not idx.filter_cached(compiled)
            first = idx.matching_iids(compiled)
            assert idx.filter_cached(compiled) and not idx.filter_cached(compile_filter({"g": 1}))
            assert np.array_equal(idx.matching_iids(compiled), first)
        assert many.matching_iids(compiled) is many.matching_iids(compiled)  # the version's union, cached
        assert np.array_equal(one.matching_iids(compiled), many.matching_iids(compiled))
    finally:
        one.close()
        many.close()
