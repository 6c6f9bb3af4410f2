"""Reading an index version and answering queries: dense, lexical, hybrid, filters, rerank, shards.

Public API: :class:`SearchIndex` (one loaded version), :class:`ShardedIndex`, :func:`search` (the one
entry point), :func:`compile_filter`. Imports ``models``, ``index`` and the base modules.
"""

from semsearch.search import filters
from semsearch.search.filters import CompiledFilter, compile_filter, matching_iids
from semsearch.search.modes import DEFAULT_HYBRID, Candidate, HybridParams, Mode, fuse_candidates, rerank, search
from semsearch.search.reader import Hit, SearchIndex, SegmentPool, verify
from semsearch.search.sharded import ShardedIndex, shard_call

__all__ = [
    "DEFAULT_HYBRID",
    "Candidate",
    "CompiledFilter",
    "Hit",
    "HybridParams",
    "Mode",
    "SearchIndex",
    "SegmentPool",
    "ShardedIndex",
    "compile_filter",
    "filters",
    "fuse_candidates",
    "matching_iids",
    "rerank",
    "search",
    "shard_call",
    "verify",
]
