"""Search modes over a loaded index: the one entry point the CLI, the service and eval share.

Modes (``Hit.score`` is each mode's own score; ``Hit.dense_score`` / ``Hit.lexical_score`` carry
the components where computed):

* ``dense``: FAISS over the bi-encoder vectors; ``score`` = cosine similarity (= ``dense_score``).
* ``lexical``: BM25 over the segments' SQLite FTS5 tables with collection-wide statistics
  (:mod:`semsearch.index.lexical`); ``score`` = BM25 (higher is better; = ``lexical_score``);
  ``dense_score`` is filled in when query vectors are given.
* ``hybrid``: the top ``depth`` candidates of both, fused (:class:`HybridParams`). ``score`` is the
  fused score (RRF: ``w/(rrf_k + rank_dense) + (1-w)/(rrf_k + rank_lexical)``, a list the document is
  not in adds 0; ``minmax``/``zscore``: ``w·norm(cosine) + (1-w)·norm(bm25)`` over the candidate
  union). Every hybrid hit carries its exact cosine in ``dense_score`` (e.g. for reranker fusion)
  and its BM25 in ``lexical_score`` (0.0 when it matches no query term).

``filter`` (:mod:`semsearch.search.filters`) restricts every mode to the rows whose metadata match; the
result is the true top k among those rows (a hybrid's candidate lists are the filtered top lists).
The default mode is ``dense``: see docs/quality.md for the measurements behind that choice and
behind :data:`DEFAULT_HYBRID`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, get_args

import numpy as np

from semsearch.choices import FusionMethod, Mode, check_choice
from semsearch.errors import InvalidInputError
from semsearch.index.lexical import top_k
from semsearch.score_norm import normalize
from semsearch.search.filters import CompiledFilter, compile_filter
from semsearch.search.grouping import Group, Grouping, fetch_groups, group_hits
from semsearch.search.hits import hit_of
from semsearch.search.reader import Hit, SearchIndex

if TYPE_CHECKING:
    from semsearch.models.reranker import Reranker

log = logging.getLogger(__name__)

MODES: tuple[str, ...] = get_args(Mode)
DEFAULT_MODE: Mode = "dense"
FUSION_METHODS: tuple[str, ...] = get_args(FusionMethod)
MAX_DEPTH = 10_000


@dataclass(frozen=True)
class HybridParams:
    """How ``hybrid`` fuses dense and lexical candidates.

    ``depth``: candidates taken from each retriever (at least k); ``rrf_k``: the RRF rank constant;
    ``weight``: the dense share w in [0, 1] (lexical gets 1 - w), for every method.
    """

    method: FusionMethod = "zscore"
    rrf_k: int = 1
    depth: int = 100
    weight: float = 0.5

    def __post_init__(self) -> None:
        check_choice(self.method, FUSION_METHODS, "fusion method")
        if not 0.0 <= self.weight <= 1.0:
            raise InvalidInputError(f"fusion weight must be in [0, 1], got {self.weight}")
        if self.rrf_k < 0:
            raise InvalidInputError(f"rrf_k must be >= 0, got {self.rrf_k}")
        if not 1 <= self.depth <= MAX_DEPTH:
            raise InvalidInputError(f"hybrid candidate depth must be in 1..{MAX_DEPTH}, got {self.depth}")


# Tuned on the 809 SciFact TRAIN queries (bench/quality.py tune-fusion; docs/quality.md): z-score
# fusion, 100 candidates per retriever, equal weights (nDCG@10 0.741 vs 0.660 dense). rrf_k is the
# best RRF constant on the same grid (1; 1 to 10 are within 0.004), used when method="rrf".
DEFAULT_HYBRID = HybridParams(method="zscore", rrf_k=1, depth=100, weight=0.5)


@dataclass
class Candidate:
    """One hybrid candidate: its component scores and 1-based ranks (None: not in that list)."""

    iid: int
    dense: float | None = None
    lexical: float | None = None
    dense_rank: int | None = None
    lexical_rank: int | None = None
    fused: float = 0.0


def search(
    index: SearchIndex,
    queries: Sequence[str],
    query_vectors: np.ndarray | None,
    k: int,
    mode: Mode = DEFAULT_MODE,
    filter: dict[str, Any] | CompiledFilter | None = None,
    *,
    hybrid: HybridParams | None = None,
    offset: int = 0,
) -> list[list[Hit]]:
    """Top-k hits per query, best first (one list per query, in order).

    ``query_vectors`` are the encoded ``queries`` (needed for dense and hybrid; optional for
    lexical, where they only fill in ``dense_score``). ``filter`` restricts results to rows whose
    metadata match (see :mod:`semsearch.search.filters`; a :class:`CompiledFilter` compiled once at the edge
    is used as it is); ``hybrid`` overrides :data:`DEFAULT_HYBRID`.
    ``offset`` skips the first results: the page ``[offset, offset + k)`` of the ranking
    (:mod:`semsearch.search.grouping` says what pages guarantee); :func:`search_groups` groups them.
    """
    if offset < 0:
        raise InvalidInputError(f"offset must be >= 0, got {offset}")
    if offset:
        rows = search(index, queries, query_vectors, k + offset, mode, filter, hybrid=hybrid)
        return [row[offset:] for row in rows]
    check_choice(mode, MODES, "search mode")
    if k < 1:
        raise InvalidInputError(f"k must be >= 1, got {k}")
    if query_vectors is not None:
        query_vectors = np.ascontiguousarray(query_vectors, dtype=np.float32)
        if query_vectors.ndim != 2 or len(query_vectors) != len(queries):
            raise InvalidInputError(f"{len(queries)} queries but query vectors of shape {tuple(query_vectors.shape)}")
    elif mode != "lexical":
        raise InvalidInputError(f"{mode} search needs the encoded query vectors")
    compiled = compile_filter(filter)
    allowed = index.matching_iids(compiled) if compiled else None
    if not queries:
        return []
    if allowed is not None and len(allowed) == 0:
        return [[] for _ in queries]
    if mode == "dense":
        assert query_vectors is not None
        results = index.search(query_vectors, k, allowed)
        for row in results:
            for h in row:
                h.dense_score = h.score
        return results
    if mode == "lexical":
        return _lexical(index, queries, query_vectors, k, allowed)
    assert query_vectors is not None
    return _hybrid(index, queries, query_vectors, k, allowed, hybrid or DEFAULT_HYBRID)


def search_groups(
    index: SearchIndex,
    queries: Sequence[str],
    query_vectors: np.ndarray | None,
    k: int,
    mode: Mode = DEFAULT_MODE,
    filter: CompiledFilter | dict[str, Any] | None = None,
    *,
    grouping: Grouping,
    hybrid: HybridParams | None = None,
    offset: int = 0,
) -> list[list[Group]]:
    """The top ``k`` groups (after ``offset``) per query: :func:`search`'s hits grouped by
    ``grouping.by``, each group scored by its best hit, fetching deeper until there are enough groups
    (the bound and the exactness are in :mod:`semsearch.search.grouping`)."""
    if k < 1:
        raise InvalidInputError(f"k must be >= 1, got {k}")
    if offset < 0:
        raise InvalidInputError(f"offset must be >= 0, got {offset}")

    def fetch(numbers: Sequence[int], depth: int) -> list[list[Hit]]:
        vectors = None if query_vectors is None else np.asarray(query_vectors)[list(numbers)]
        return search(index, [queries[i] for i in numbers], vectors, depth, mode, filter, hybrid=hybrid)

    groups = fetch_groups(fetch, len(queries), k, offset, grouping, int(index.count))
    if grouping.return_document:
        attach_documents(index, [g for row in groups for g in row])
    return groups


def group_reranked(
    index: SearchIndex, rows: Sequence[Sequence[Hit]], k: int, offset: int, grouping: Grouping
) -> list[list[Group]]:
    """Groups of already reranked hits (rerank first, then group: the candidates are all there is)."""
    groups = [group_hits(row, grouping)[offset : offset + k] for row in rows]
    if grouping.return_document:
        attach_documents(index, [g for row in groups for g in row])
    return groups


def attach_documents(index: Any, groups: Sequence[Group]) -> None:
    """Set each group's ``document``: the stored text of its best hit's document (indexes built with
    ``--chunk-tokens`` store it once, on the document's first passage: id ``DOCID#0``, or for a document
    without an id the automatic id equal to its doc_id)."""
    wanted = {g.hits[0].doc_id for g in groups if g.hits and g.hits[0].doc_id is not None}
    if not wanted:
        return
    iids: set[int] = set()
    lookup = getattr(index, "iids_for_ext_ids", None)
    if lookup is not None:
        iids.update(lookup([f"{d}#0" for d in wanted]).values())
    iids.update(int(d) for d in wanted if d.isdigit() and len(d) < 19)
    texts = {doc.doc_id: doc.document for doc in index.docs_for(iids).values() if doc.document is not None}
    for g in groups:
        if g.hits and g.hits[0].doc_id is not None:
            g.document = texts.get(g.hits[0].doc_id)


class _Lexical:
    """Each query's BM25 over the whole version, computed once per search (top lists and fill-ins)."""

    def __init__(self, index: SearchIndex, queries: Sequence[str]) -> None:
        self.results = [index.lexical(text) for text in queries]

    def top(self, qi: int, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        iids, scores = self.results[qi]
        return top_k(iids, scores, k, allowed)

    def scores(self, qi: int) -> dict[int, float]:
        iids, scores = self.results[qi]
        return dict(zip(iids.tolist(), scores.tolist(), strict=True))


def _lexical(
    index: SearchIndex,
    queries: Sequence[str],
    query_vectors: np.ndarray | None,
    k: int,
    allowed: np.ndarray | None,
) -> list[list[Hit]]:
    lexical = _Lexical(index, queries)
    rows: list[list[Candidate]] = []
    for qi in range(len(queries)):
        scores, iids = lexical.top(qi, k, allowed)
        rows.append([Candidate(int(i), lexical=float(s), fused=float(s)) for s, i in zip(scores, iids, strict=True)])
    if query_vectors is not None:
        _fill_dense(index, query_vectors, rows)
    return _to_hits(index, rows)


def _hybrid(
    index: SearchIndex,
    queries: Sequence[str],
    query_vectors: np.ndarray,
    k: int,
    allowed: np.ndarray | None,
    params: HybridParams,
) -> list[list[Hit]]:
    depth = max(params.depth, k)
    d_scores, d_iids = index.dense(query_vectors, depth, allowed)
    lexical = _Lexical(index, queries)
    rows: list[list[Candidate]] = []
    for qi in range(len(queries)):
        cands: dict[int, Candidate] = {}
        for rank, (s, i) in enumerate(zip(d_scores[qi], d_iids[qi], strict=True), start=1):
            if i >= 0:
                cands[int(i)] = Candidate(int(i), dense=float(s), dense_rank=rank)
        l_scores, l_iids = lexical.top(qi, depth, allowed)
        for rank, (s, i) in enumerate(zip(l_scores, l_iids, strict=True), start=1):
            c = cands.setdefault(int(i), Candidate(int(i)))
            c.lexical, c.lexical_rank = float(s), rank
        rows.append(list(cands.values()))
    if params.method != "rrf":  # score fusion needs both scores of every candidate
        _fill_dense(index, query_vectors, rows)
        _fill_lexical(lexical, rows)
    ranked = [fuse_candidates(row, params)[:k] for row in rows]
    if params.method == "rrf":  # only the returned hits need their missing component
        _fill_dense(index, query_vectors, ranked)
        _fill_lexical(lexical, ranked)
    return _to_hits(index, ranked)


def fuse_candidates(cands: list[Candidate], params: HybridParams) -> list[Candidate]:
    """Hybrid fusion of the dense and lexical evidence: set ``fused`` on each candidate (RRF, or
    ``w·norm(cosine) + (1-w)·norm(bm25)``) and sort best first (ties: higher cosine, then lower iid)."""
    w = params.weight
    if params.method == "rrf":
        for c in cands:
            c.fused = (w / (params.rrf_k + c.dense_rank) if c.dense_rank else 0.0) + (
                (1.0 - w) / (params.rrf_k + c.lexical_rank) if c.lexical_rank else 0.0
            )
    elif cands:
        dense = normalize(np.array([c.dense if c.dense is not None else -1.0 for c in cands]), params.method)
        lex = normalize(np.array([c.lexical or 0.0 for c in cands]), params.method)
        for c, d, lx in zip(cands, dense, lex, strict=True):
            c.fused = float(w * d + (1.0 - w) * lx)
    return sorted(cands, key=lambda c: (-c.fused, -(c.dense if c.dense is not None else -np.inf), c.iid))


def _fill_dense(index: SearchIndex, query_vectors: np.ndarray, rows: list[list[Candidate]]) -> None:
    """Exact cosine for candidates that lack it (one gather per query)."""
    for qi, row in enumerate(rows):
        missing = [c for c in row if c.dense is None]
        if not missing:
            continue
        iids = np.array([[c.iid for c in missing]], dtype=np.int64)
        scores = index.exact_scores(query_vectors[qi : qi + 1], iids)[0]
        for c, s in zip(missing, scores, strict=True):
            c.dense = float(s)


def _fill_lexical(lexical: _Lexical, rows: list[list[Candidate]]) -> None:
    """BM25 for candidates that lack it (0.0 for a row that matches no query term)."""
    for qi, row in enumerate(rows):
        missing = [c for c in row if c.lexical is None]
        if not missing:
            continue
        found = lexical.scores(qi)
        for c in missing:
            c.lexical = found.get(c.iid, 0.0)


def _to_hits(index: SearchIndex, rows: list[list[Candidate]]) -> list[list[Hit]]:
    docs = index.docs_for({c.iid for row in rows for c in row})
    out: list[list[Hit]] = []
    for row in rows:
        hits: list[Hit] = []
        for c in row:
            doc = docs.get(c.iid)
            if doc is None:
                continue
            hits.append(hit_of(doc, c.fused, dense_score=c.dense, lexical_score=c.lexical))
        out.append(hits)
    return out


def rerank(
    reranker: Reranker, queries: Sequence[str], results: Sequence[Sequence[Hit]], k: int, batch_size: int = 32
) -> list[list[Hit]]:
    """Rerank each query's hits with a cross-encoder and keep the top k.

    The new ``score`` is :meth:`Reranker.score`, fused (when the reranker configures fusion) with the
    hits' own retrieval ``score``: the cosine in dense mode, the fused BM25 + dense score in hybrid mode,
    BM25 in lexical mode; per-query z-normalisation makes the scales comparable. ``dense_score`` (the
    cosine) is kept on each hit. Fusing with the mode's score rather than the cosine keeps the lexical
    evidence hybrid search found (measured in docs/reranker.md).
    """
    out: list[list[Hit]] = []
    for query, hits in zip(queries, results, strict=True):
        if not hits:
            out.append([])
            continue
        retrieval = [float(h.score) for h in hits]
        scores = reranker.score(query, [h.text for h in hits], retrieval_scores=retrieval, batch_size=batch_size)
        order = np.argsort(-scores, kind="stable")[:k]
        out.append([replace(hits[int(i)], score=float(scores[int(i)])) for i in order])
    return out
