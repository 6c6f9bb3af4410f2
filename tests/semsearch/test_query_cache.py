"""The query-embedding cache: bounds, LRU order, and hits bit-identical to recomputing (real model)."""

from __future__ import annotations

import numpy as np

from semsearch.models import Encoder, QueryCache


def _key(text: str, prompt: str = "") -> tuple[str, str, str, str, str]:
    return ("fp", "mean", "onnx-int8", prompt, text)


def test_bounds_and_lru_order():
    cache = QueryCache(max_entries=2, max_bytes=1 << 20)
    v = np.ones(4, np.float32)
    cache.put(_key("a"), v)
    cache.put(_key("b"), v * 2)
    assert cache.get(_key("a")) is not None  # a is now the most recent
    cache.put(_key("c"), v * 3)
    assert cache.get(_key("b")) is None and len(cache) == 2
    assert cache.stats.hits == 1 and cache.stats.misses == 1
    assert cache.get(_key("a", prompt="query: ")) is None  # the prompt is part of the key
    small = QueryCache(max_entries=100, max_bytes=2 * (16 + 300 + 1))
    for t in "xyz":
        small.put(_key(t), v)
    assert len(small) == 2 and small.bytes <= small.max_bytes
    off = QueryCache(0)
    off.put(_key("a"), v)
    assert not off.enabled and len(off) == 0


def test_cached_vectors_are_bit_identical(encoder: Encoder):
    texts = ["a large wild cat", "a tool for cutting", "a large wild cat", "ship"]
    plain = encoder.encode(texts)
    try:
        encoder.cache = QueryCache(100)
        first = encoder.encode(texts)  # misses (the repeat inside one call too)
        again = encoder.encode(list(reversed(texts)), batch_size=1)  # all hits, other batch shape
        mixed = encoder.encode(["new text", texts[1]])
        stats = encoder.cache.stats
    finally:
        encoder.cache = None
    assert first.tobytes() == plain.tobytes()
    assert again.tobytes() == plain[::-1].tobytes()
    assert mixed[1].tobytes() == plain[1].tobytes()
    assert mixed[0].tobytes() == encoder.encode(["new text"])[0].tobytes()
    assert stats.hits >= 5
