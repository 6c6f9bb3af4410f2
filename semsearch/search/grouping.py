"""Documents in results: passages grouped by ``doc_id`` (or a metadata field), and pagination.

A **group** is every hit sharing one value of ``group_by``: ``doc_id`` (the document a passage or
sentence came from; a row without one is its own group, keyed by its id) or a metadata field (a row
without the field is left out, as in Qdrant). Groups are ranked by their **best passage's score**
(the max, not a sum or mean: a document is as relevant as its best passage, so a long document is not
favoured for having many middling ones, and the grouped ranking of a flat index is exactly the order
in which its groups first appear in the passage ranking). Each group keeps its best ``size`` hits.

**Fetching.** :func:`search_groups` asks the mode for the top ``depth`` passages, groups them, and
fetches four times deeper while it has fewer than ``offset + k`` groups, up to
:data:`MAX_GROUP_FETCH` passages (then it returns the groups it found). Once it has them it keeps
fetching while one of them lacks ``size`` hits, up to :func:`hit_depth` passages: the hits of a group
are its best passages among the top ``hit_depth(offset + k, size)`` (at least 128) of the whole
ranking. On a flat index in dense mode the groups, their order and scores are therefore exact (equal to
grouping all passages' exact cosines), and so are their hits whenever the index holds no more than
``hit_depth`` passages or every group fills up first (``tests/semsearch/test_grouping.py``). ANN types
answer with their own recall (docs/scale.md); hybrid groups the hybrid ranking of those candidates.

**Pagination.** ``offset`` skips that many results (hits, or groups when grouping): a page is
``ranking[offset : offset + k]`` of the same ranking a request for ``offset + k`` results gives, so
pages of one version are disjoint and concatenate to the whole range. A new version published between
two pages changes the ranking (rows added, deleted, rescored): pages then come from two rankings and
may repeat or skip a result; ``index_version`` in each response says which version answered.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from semsearch.errors import InvalidInputError
from semsearch.search.reader import Hit

MAX_GROUP_SIZE = 100
MAX_GROUP_FETCH = 10_000  # passages fetched at most to find offset + k groups
MIN_HIT_DEPTH = 128


def hit_depth(groups: int, size: int) -> int:
    """How deep (in passages) the search goes to fill the hits of ``groups`` groups of ``size``."""
    return min(MAX_GROUP_FETCH, max(MIN_HIT_DEPTH, 8 * groups * size))


@dataclass(frozen=True)
class Grouping:
    """``by``: ``"doc_id"`` or a metadata field (dotted path for nested objects); ``size``: hits per
    group; ``return_document``: add each group's stored document text (indexes built with
    ``--chunk-tokens``)."""

    by: str = "doc_id"
    size: int = 3
    return_document: bool = False

    def __post_init__(self) -> None:
        if not self.by:
            raise InvalidInputError("group_by must name doc_id or a metadata field")
        if not 1 <= self.size <= MAX_GROUP_SIZE:
            raise InvalidInputError(f"group_size must be in 1..{MAX_GROUP_SIZE}, got {self.size}")


@dataclass
class Group:
    """One group of a grouped result: its value, best score, the best hit's metadata, its hits."""

    group: Any
    score: float
    metadata: dict[str, Any]
    hits: list[Hit] = field(default_factory=list)
    document: str | None = None


_MISSING = object()


def group_value(hit: Hit, by: str) -> Any:
    """The hit's value of ``by`` (``_MISSING`` when a metadata field is absent)."""
    if by == "doc_id":
        return hit.doc_id if hit.doc_id is not None else hit.id
    value: Any = hit.metadata
    for part in by.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def group_hits(hits: Sequence[Hit], grouping: Grouping) -> list[Group]:
    """Hits (best first) into groups, best first; each group keeps its first ``size`` hits."""
    groups: dict[str, Group] = {}
    for hit in hits:
        value = group_value(hit, grouping.by)
        if value is _MISSING:
            continue
        g = groups.get(_key(value))
        if g is None:
            groups[_key(value)] = Group(value, hit.score, hit.metadata, [hit])
        elif len(g.hits) < grouping.size:
            g.hits.append(hit)
    return list(groups.values())


SearchFn = Callable[[Sequence[int], int], list[list[Hit]]]


def fetch_groups(
    fetch: SearchFn, n_queries: int, k: int, offset: int, grouping: Grouping, available: int
) -> list[list[Group]]:
    """The groups ``[offset, offset + k)`` of each query, fetching deeper as described above.

    ``fetch(query_numbers, depth)`` returns the top ``depth`` hits of those queries; ``available`` is
    how many rows the index holds (a list that long is complete).
    """
    need = offset + k
    cap = min(MAX_GROUP_FETCH, max(available, 1))
    fill = min(cap, hit_depth(need, grouping.size))
    depth = min(cap, max(2 * need * grouping.size, 32))
    out: list[list[Group]] = [[] for _ in range(n_queries)]
    todo = list(range(n_queries))
    while todo:
        rows = fetch(todo, depth)
        again: list[int] = []
        for qi, row in zip(todo, rows, strict=True):
            groups = group_hits(row, grouping)
            exhausted = len(row) < depth or depth >= cap
            enough = len(groups) >= need
            full = all(len(g.hits) >= grouping.size for g in groups[:need])
            if exhausted or (enough and (full or depth >= fill)):
                out[qi] = groups[offset:need]
            else:
                again.append(qi)
        todo = again
        depth = min(cap, depth * 4)
    return out
