"""Reading an index version and answering queries: dense, lexical, hybrid, filters, rerank, shards.

Public API: :class:`SearchIndex` (one loaded version), :class:`ShardedIndex`, :func:`search` (the one
entry point), :func:`compile_filter`, :func:`load_index` (load a version and check it against the
encoder). Imports ``models``, ``index`` and the base modules.
"""

from semsearch.search import filters
from semsearch.search.filters import CompiledFilter, compile_filter, matching_iids
from semsearch.search.grouping import MAX_GROUP_SIZE, Group, Grouping, group_hits
from semsearch.search.hits import hit_of, join_hits, merge_top_k
from semsearch.search.modes import (
    DEFAULT_HYBRID,
    Candidate,
    HybridParams,
    Mode,
    attach_documents,
    fuse_candidates,
    group_reranked,
    rerank,
    search,
    search_groups,
)
from semsearch.search.reader import Hit, SearchIndex, SegmentPool, load_index, verify
from semsearch.search.sharded import ShardedIndex, shard_call

__all__ = [
    "DEFAULT_HYBRID",
    "MAX_GROUP_SIZE",
    "Candidate",
    "CompiledFilter",
    "Group",
    "Grouping",
    "Hit",
    "HybridParams",
    "Mode",
    "SearchIndex",
    "SegmentPool",
    "ShardedIndex",
    "attach_documents",
    "compile_filter",
    "filters",
    "fuse_candidates",
    "group_hits",
    "group_reranked",
    "hit_of",
    "join_hits",
    "load_index",
    "matching_iids",
    "merge_top_k",
    "rerank",
    "search",
    "search_groups",
    "shard_call",
    "verify",
]
