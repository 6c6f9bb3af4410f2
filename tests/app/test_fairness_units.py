"""One request cannot hold the others (issue 20, item 7), at the scheduling level: a big request is
encoded / reranked in budgeted chunks, and a short request is served between two of them.

Fake models keep these fast and deterministic: the first chunk of the big request is held at a gate
until the short request has been submitted, then the order of the model calls is the evidence (no
timing). ``test_app_fairness.py`` shows the same through a real server with the real model.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
from test_batcher_isolation import FakeHolder

from app.batcher import MicroBatcher, estimate_tokens
from app.metrics import Metrics
from app.rerank_worker import ChunkedLogits, Turns, _request

LONG = "word " * 400  # 2,000 characters: 256 estimated tokens (the cap), one per chunk at the default budget


class GatedEncoder:
    """Vectors [len(text), position-free hash]; the first call waits until ``release`` is set."""

    max_seq_length = 256

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        self.calls.append(list(texts))
        if len(self.calls) == 1:
            self.entered.set()
            assert self.release.wait(30)
        return np.array([[len(t), sum(map(ord, t)) % 997] for t in texts], dtype=np.float32)


def make_batcher(encoder: Any, **kwargs: Any) -> MicroBatcher:
    options: dict[str, Any] = {"window_s": 0.0, "max_batch": 32, "max_queue": 16, "retry_after_s": 1}
    options.update(kwargs)
    return MicroBatcher(encoder, FakeHolder(), Metrics(), **options)  # type: ignore[arg-type]


def test_the_estimate_is_capped_at_what_the_encoder_reads() -> None:
    assert estimate_tokens("a large wild cat", 256) == 6
    assert estimate_tokens(LONG, 256) == 256
    assert estimate_tokens("x" * 10**6, 128) == 128


def test_a_short_query_is_encoded_between_chunks_of_a_big_embed() -> None:
    encoder = GatedEncoder()
    big = [f"{i} {LONG}" for i in range(6)]

    async def scenario() -> tuple[np.ndarray, np.ndarray, list[str]]:
        b = make_batcher(encoder)
        b.start()
        done: list[str] = []

        async def tagged(name: str, coro: Any) -> Any:
            result = await coro
            done.append(name)
            return result

        try:
            bulk = asyncio.create_task(tagged("bulk", b.embed(big)))
            assert await asyncio.to_thread(encoder.entered.wait, 30)  # the first chunk is being encoded
            short = asyncio.create_task(tagged("short", b.embed(["a large wild cat"])))
            await asyncio.sleep(0.05)  # the short request is queued behind the held chunk
            encoder.release.set()
            return await bulk, await short, done
        finally:
            await b.stop()

    vectors, short, done = asyncio.run(scenario())
    assert encoder.calls[0] == big[:1]  # one long text per chunk at the 256-token budget
    assert encoder.calls[1] == ["a large wild cat"]  # served right after the first chunk
    assert [len(c) for c in encoder.calls[2:]] == [1] * 5 and [t for c in encoder.calls[2:] for t in c] == big[1:]
    assert done == ["short", "bulk"]
    expected = np.array([[len(t), sum(map(ord, t)) % 997] for t in big], dtype=np.float32)
    assert np.array_equal(vectors, expected)  # the chunks put back together, in order
    assert short.tolist() == [[16.0, sum(map(ord, "a large wild cat")) % 997]]


def test_small_requests_do_not_starve_a_bulk_one() -> None:
    """With short queries always waiting, small batches and bulk chunks alternate."""
    encoder = GatedEncoder()
    big = [f"{i} {LONG}" for i in range(3)]

    async def scenario() -> None:
        b = make_batcher(encoder, max_batch=1)  # one short query per batch: they keep the queue full
        b.start()
        try:
            bulk = asyncio.create_task(b.embed(big))
            assert await asyncio.to_thread(encoder.entered.wait, 30)
            shorts = [asyncio.create_task(b.embed([f"short {i}"])) for i in range(6)]
            await asyncio.sleep(0.05)
            encoder.release.set()
            await asyncio.gather(bulk, *shorts)
        finally:
            await b.stop()

    asyncio.run(scenario())
    kinds = ["bulk" if c[0] in big else "short" for c in encoder.calls]
    assert kinds[:2] == ["bulk", "short"], kinds
    # never two short batches in a row while the bulk job waits: it ends within its 3 chunks + 2 turns
    assert max(i for i, kind in enumerate(kinds) if kind == "bulk") <= 4, kinds


def test_a_search_split_in_chunks_is_searched_once_with_all_its_queries(monkeypatch: Any) -> None:
    from test_batcher_isolation import fake_search

    import app.batcher as batcher_module
    from app.batcher import SearchSpec

    searched: list[list[str]] = []

    def recording_search(index: Any, queries: list[str], vectors: Any, k: int, **kw: Any) -> Any:
        searched.append(list(queries))
        assert vectors.shape == (len(queries), 2)
        return fake_search(index, queries, vectors, k, **kw)

    monkeypatch.setattr(batcher_module, "search", recording_search)
    encoder = GatedEncoder()
    encoder.release.set()
    queries = [f"query {i} {LONG[:600]}" for i in range(5)]  # 160 tokens each: one per chunk

    async def scenario() -> Any:
        b = make_batcher(encoder)
        b.start()
        try:
            return await b.search(queries, SearchSpec(k=1))
        finally:
            await b.stop()

    outcome = asyncio.run(scenario())
    assert len(encoder.calls) == 5 and searched == [queries]
    assert [h[0].id for h in outcome.hits] == queries


class GatedLogits:
    """A reranker backend: logit = len(a) + len(b) / 1000; the first call waits for ``release``."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[str, str]]] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def logits(self, pairs: list[tuple[str, str]], batch_size: int) -> np.ndarray:
        self.calls.append(list(pairs))
        if len(self.calls) == 1:
            self.entered.set()
            assert self.release.wait(30)
        return np.array([len(a) + len(b) / 1000 for a, b in pairs], dtype=np.float32)


def test_a_small_rerank_takes_its_turn_between_chunks_of_a_big_one() -> None:
    inner = GatedLogits()
    chunked = ChunkedLogits(inner, Turns(), max_tokens=256, max_length=512)
    big = [("query", f"{i} {LONG[: 900 - i]}") for i in range(4)]  # ~230 tokens each: one per chunk
    small = [("query", "a cat"), ("query", "a dog")]
    results: dict[str, np.ndarray] = {}

    def run(name: str, pairs: list[tuple[str, str]], number: int) -> None:
        _request.number = number
        results[name] = chunked.logits(pairs, 32)

    bulk = threading.Thread(target=run, args=("bulk", big, 1))
    bulk.start()
    assert inner.entered.wait(30)
    short = threading.Thread(target=run, args=("small", small, 2))
    short.start()
    while not chunked.turns._waiting:  # the small call is waiting for its turn
        threading.Event().wait(0.01)
    inner.release.set()
    bulk.join(30)
    short.join(30)
    assert inner.calls[0] == big[:1] and inner.calls[1] == small
    assert [p for c in inner.calls[2:] for p in c] == big[1:]
    expected = np.array([len(a) + len(b) / 1000 for a, b in big], dtype=np.float32)
    assert np.array_equal(results["bulk"], expected)  # input order restored
