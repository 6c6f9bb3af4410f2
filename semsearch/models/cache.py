"""The query-embedding cache: an exact-text LRU of encoded vectors, bounded in entries and in bytes.

A key is everything that determines a vector: the model fingerprint, pooling, backend, the prompt and
the text, exactly (no normalisation). The encoder is deterministic per text (a text's vector does not
depend on its batchmates, for onnx-int8 too), so a hit returns the very bytes a recompute would give.
One cache per process (the service's encoder holds it); thread-safe.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

DEFAULT_ENTRIES = 10_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# What an entry costs besides its vector and text: the key tuple, the OrderedDict node, the array header.
_OVERHEAD_BYTES = 300

CacheKey = tuple[str, str, str, str, str]


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0


class QueryCache:
    """LRU of unit vectors keyed by ``(fingerprint, pooling, backend, prompt, text)``.

    ``max_entries`` bounds the entries and ``max_bytes`` what they hold (vector + text + a fixed
    overhead); the least recently used entries go first. ``max_entries == 0`` disables it.
    """

    def __init__(self, max_entries: int = DEFAULT_ENTRIES, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_entries < 0 or max_bytes < 0:
            raise ValueError("query cache bounds must be >= 0")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.stats = CacheStats()
        self.bytes = 0
        self._data: OrderedDict[CacheKey, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0 and self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._data)

    @staticmethod
    def _cost(key: CacheKey, vector: np.ndarray) -> int:
        return int(vector.nbytes) + len(key[4]) + len(key[3]) + _OVERHEAD_BYTES

    def get(self, key: CacheKey) -> np.ndarray | None:
        """The cached vector (read-only) or ``None``; counts a hit or a miss."""
        with self._lock:
            vector = self._data.get(key)
            if vector is None:
                self.stats.misses += 1
                return None
            self._data.move_to_end(key)
            self.stats.hits += 1
            return vector

    def put(self, key: CacheKey, vector: np.ndarray) -> None:
        if not self.enabled:
            return
        stored = np.array(vector, dtype=np.float32, copy=True)
        stored.flags.writeable = False
        cost = self._cost(key, stored)
        if cost > self.max_bytes:
            return
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self.bytes -= self._cost(key, old)
            self._data[key] = stored
            self.bytes += cost
            while len(self._data) > self.max_entries or self.bytes > self.max_bytes:
                k, v = self._data.popitem(last=False)
                self.bytes -= self._cost(k, v)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.bytes = 0
