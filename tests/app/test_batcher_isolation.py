"""A micro-batch is an optimisation, never a shared fate (issue 13, finding 1): when the shared encode
or a group's search fails because of one job, only that job gets the error.

A tiny fake encoder (and, for the search case, a fake ``search``) keeps this unit test fast; the real
model and a real server are exercised in ``test_app_hostile.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import app.batcher as batcher_module
from app.batcher import MicroBatcher, SearchSpec
from app.metrics import Metrics
from semsearch.search.reader import Hit


class FakeEncoder:
    """Vectors [len(text), 1]; a text containing "BAD" raises like the tokenizer on a lone surrogate."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        self.calls.append(list(texts))
        if any("BAD" in t for t in texts):
            raise TypeError("TextEncodeInput must be Union[TextInputSequence, Tuple[InputSequence, InputSequence]]")
        return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)


class FakeIndex:
    directory = Path("/fake/versions/v000007")

    def filter_cached(self, compiled: Any) -> bool:
        return True  # nothing to evaluate first: fake_search ignores the filter


class FakeHolder:
    current = FakeIndex()

    @contextlib.contextmanager
    def use(self) -> Iterator[FakeIndex]:
        yield FakeIndex()


def fake_search(index: Any, queries: list[str], vectors: Any, k: int, **kwargs: Any) -> list[list[Hit]]:
    if any("BOOM" in q for q in queries):
        raise RuntimeError("this query breaks the search")
    return [[Hit(id=q, text=q, score=1.0, metadata={}, iid=0)] for q in queries]


async def run_together(batcher: MicroBatcher, *calls: Any) -> list[Any]:
    """Submit all calls before the collector runs, so they form one micro-batch."""
    batcher.start()
    try:
        return await asyncio.gather(*calls, return_exceptions=True)
    finally:
        await batcher.stop()


def make_batcher(encoder: FakeEncoder) -> MicroBatcher:
    return MicroBatcher(
        encoder,  # type: ignore[arg-type]
        FakeHolder(),  # type: ignore[arg-type]
        Metrics(),
        window_s=0.05,
        max_batch=64,
        max_queue=16,
        retry_after_s=1,
    )


def test_a_failing_encode_fails_only_its_own_job() -> None:
    encoder = FakeEncoder()

    async def scenario() -> list[Any]:
        b = make_batcher(encoder)
        return await run_together(b, b.embed(["good one"]), b.embed(["ok", "BAD text"]), b.embed(["another good"]))

    good, bad, other = asyncio.run(scenario())
    assert encoder.calls[0] == ["good one", "ok", "BAD text", "another good"]  # they were batchmates
    assert isinstance(bad, TypeError)
    assert isinstance(good, np.ndarray) and good.tolist() == [[8.0, 1.0]]
    assert isinstance(other, np.ndarray) and other.tolist() == [[12.0, 1.0]]


def test_a_failing_search_fails_only_its_own_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batcher_module, "search", fake_search)
    encoder = FakeEncoder()
    spec = SearchSpec(k=1, mode="dense", filter={"pos": "noun"})  # one group: searched together

    async def scenario() -> list[Any]:
        b = make_batcher(encoder)
        return await run_together(b, b.search(["fine"], spec), b.search(["BOOM"], spec), b.search(["also"], spec))

    fine, boom, also = asyncio.run(scenario())
    assert len(encoder.calls) == 1  # one encode for the batch
    assert isinstance(boom, RuntimeError)
    assert fine.hits[0][0].id == "fine" and fine.index_version == "v000007"
    assert also.hits[0][0].id == "also"


def test_a_lone_failing_job_does_not_fail_jobs_that_need_no_vectors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batcher_module, "search", fake_search)
    encoder = FakeEncoder()

    async def scenario() -> list[Any]:
        b = make_batcher(encoder)
        lexical = SearchSpec(k=1, mode="lexical")
        return await run_together(b, b.embed(["BAD"]), b.search(["words"], lexical))

    bad, lexical = asyncio.run(scenario())
    assert isinstance(bad, TypeError)
    assert lexical.hits[0][0].id == "words"
