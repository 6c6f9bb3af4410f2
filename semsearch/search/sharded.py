"""A sharded index version seen as one: the search primitives of :class:`SearchIndex`, fanned out.

:class:`ShardedIndex` offers what :func:`semsearch.search.modes.search` needs of an index (``dense``,
``exact_scores``, ``matching_iids``, ``lexical``, ``docs_for``, ``hits``, ``search``), so the one
search entry point, its modes, filters and hybrid fusion run unchanged over shards. Each primitive
is one fan-out: every shard answers for its own rows and the answers are merged:

* dense: every shard's top k, merged by score (ties: lower internal id), exactly as
  :meth:`SearchIndex.dense` merges its segments, so a flat sharded version answers what the
  unsharded one does (internal ids are global);
* lexical: two phases (Elasticsearch's ``dfs_query_then_fetch``): each shard's live document
  frequency per query phrase is gathered and summed, then every shard scores its rows with the
  collection's statistics (live rows and tokens, summed once at load), so BM25 scores equal the
  unsharded index's;
* filters: each shard matches its own rows (the union is cached per version, as a segment caches
  its own); exact cosines and documents: each shard answers for the ids it holds.

The shards are reached through a :class:`Fanout`: :class:`LocalFanout` over loaded
:class:`SearchIndex` shards (tests, tools), or a remote one (the Ray Serve ingress,
:mod:`app.ray`). A fan-out that cannot reach a shard raises
:class:`ShardUnavailableError`, or, when partial results are allowed, leaves that shard out (the
fan-out records which: :mod:`app.ray.fanout`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from semsearch.errors import SemsearchError
from semsearch.index.lexical import CollectionStats
from semsearch.index.manifest import LoadedVersion, Manifest
from semsearch.index.store import Doc
from semsearch.search.filters import CompiledFilter, cache_iids, cached_iids
from semsearch.search.hits import Hit, join_hits, merge_top_k
from semsearch.search.reader import SearchIndex


class ShardUnavailableError(SemsearchError):
    """A shard has no healthy replica (the service answers 503 unless partial results are allowed)."""

    code = "shard_unavailable"


class Fanout(Protocol):
    """Calls one method on every shard (concurrently where it can); ``None`` for a shard left out."""

    @property
    def shards(self) -> int: ...

    def call(self, method: str, *args: Any) -> list[Any | None]: ...


class LocalFanout:
    """Shards loaded in this process (one :class:`SearchIndex` each)."""

    def __init__(self, indexes: Sequence[SearchIndex]) -> None:
        self.indexes = list(indexes)

    @property
    def shards(self) -> int:
        return len(self.indexes)

    def call(self, method: str, *args: Any) -> list[Any | None]:
        return [shard_call(index, method, *args) for index in self.indexes]

    def close(self) -> None:
        for index in self.indexes:
            index.close()


def shard_call(index: SearchIndex, method: str, *args: Any) -> Any:
    """One shard's answer to a fan-out call (what a shard replica runs)."""
    if method == "stats":
        return index.stats
    if method == "dense_docs":  # dense top k and its documents in one round trip
        scores, iids = index.dense(*args)
        return scores, iids, index.docs_for({int(i) for i in iids.ravel() if i >= 0})
    if method not in SHARD_METHODS:
        raise SemsearchError(f"internal: unknown shard method {method!r}")
    return getattr(index, method)(*args)


SHARD_METHODS = ("dense", "exact_scores", "matching_iids", "lexical_df", "lexical", "docs_for")  # + stats, dense_docs


class ShardedIndex(LoadedVersion):
    """One version of a sharded index, searched through a :class:`Fanout` (thread-safe)."""

    def __init__(self, directory: Path, manifest: Manifest, fanout: Fanout) -> None:
        self.directory = directory
        self.manifest = manifest
        self.fanout = fanout
        stats = [s for s in fanout.call("stats") if s is not None]
        if len(stats) < fanout.shards:  # the collection statistics need every shard
            raise ShardUnavailableError(f"only {len(stats)} of {fanout.shards} shards answered while loading")
        self.stats = CollectionStats(rows=sum(s.rows for s in stats), tokens=sum(s.tokens for s in stats))

    # ------------------------------------------------------------------ what the service shows

    @property
    def segments(self) -> list[dict[str, Any]]:
        return list(self.manifest.segments)

    def close(self) -> None:
        close = getattr(self.fanout, "close", None)
        if close is not None:
            close()

    # ------------------------------------------------------------------ fan-out

    def _call(self, method: str, *args: Any) -> list[Any]:
        return [a for a in self.fanout.call(method, *args) if a is not None]

    # ------------------------------------------------------------------ search primitives

    def search(self, query_vectors: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[list[Hit]]:
        """Dense hits in one fan-out: each shard returns its top k with their documents."""
        q = np.ascontiguousarray(query_vectors, dtype=np.float32)
        answers = self._call("dense_docs", q, k, allowed)
        scores, iids = merge_top_k([(a[0], a[1]) for a in answers if a[1].shape[1]], k, len(q))
        docs: dict[int, Doc] = {}
        for a in answers:
            docs.update(a[2])
        return join_hits(scores, iids, docs)

    def dense(
        self, query_vectors: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(query_vectors, dtype=np.float32)
        parts = [p for p in self._call("dense", q, k, allowed) if p[1].shape[1]]
        return merge_top_k(parts, k, len(q))

    def exact_scores(self, queries: np.ndarray, iids: np.ndarray) -> np.ndarray:
        out = np.full(iids.shape, -np.inf, dtype=np.float32)
        for part in self._call("exact_scores", queries, iids):
            out = np.maximum(out, part)  # a shard gives -inf for the ids it does not hold
        return out

    def matching_iids(self, compiled: CompiledFilter) -> np.ndarray:
        hit = cached_iids(compiled, self)
        if hit is not None:
            return hit
        parts = self._call("matching_iids", compiled)
        iids = np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
        if len(parts) < self.fanout.shards:  # a partial answer is not this version's answer: not cached
            return iids
        return cache_iids(compiled, self, iids)

    def filter_cached(self, compiled: CompiledFilter) -> bool:
        """Whether this version has ``compiled``'s matching rows (from every shard) cached."""
        return cached_iids(compiled, self) is not None

    def lexical(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        dfs = self._call("lexical_df", text)
        if not dfs or len(dfs[0]) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        df = np.sum(np.stack(dfs), axis=0)
        parts = self._call("lexical", text, self.stats, df)
        if not parts:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def docs_for(self, iids: Sequence[int] | np.ndarray | set[int]) -> dict[int, Doc]:
        wanted = sorted(int(i) for i in iids)
        out: dict[int, Doc] = {}
        if not wanted:
            return out
        for part in self._call("docs_for", wanted):
            out.update(part)
        return out

    def hits(self, scores: np.ndarray, iids: np.ndarray) -> list[list[Hit]]:
        return join_hits(scores, iids, self.docs_for({int(i) for i in iids.ravel() if i >= 0}))


def load_local(path: str | Path, mmap: bool = True) -> ShardedIndex:
    """Every shard of a version loaded in this process, searched as one (tests and tools)."""
    from semsearch.index.layout import resolve_version_dir
    from semsearch.index.sharding import shard_count
    from semsearch.search.reader import SegmentPool

    directory = resolve_version_dir(path)
    manifest = Manifest.read(directory)
    pool = SegmentPool()
    shards = [SearchIndex.load(directory, mmap=mmap, pool=pool, shard=s) for s in range(shard_count(manifest.shards))]
    return ShardedIndex(directory, manifest, LocalFanout(shards))
