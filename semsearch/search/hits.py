"""Search results: :class:`Hit`, the one way to make one from a stored row (:func:`hit_of`), the one
join of ``(scores, ids)`` rows with their documents (:func:`join_hits`), and the one top-k merge of
per-part answers (:func:`merge_top_k`: segments of a version and shards of a sharded version alike)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from semsearch.types import Doc, UserId


@dataclass
class Hit:
    """One search result."""

    id: UserId
    text: str
    score: float
    metadata: dict[str, Any]
    iid: int
    doc_id: str | None = None
    start: int | None = None
    end: int | None = None
    # Component scores, set by semsearch.search.modes (None when not computed): the bi-encoder cosine and
    # the BM25 score (higher is better). ``score`` is the mode's own score.
    dense_score: float | None = None
    lexical_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "text": self.text, "score": self.score, "metadata": self.metadata}
        if self.doc_id is not None:
            out["source"] = {"doc_id": self.doc_id, "start": self.start, "end": self.end}
        if self.dense_score is not None:
            out["dense_score"] = self.dense_score
        if self.lexical_score is not None:
            out["lexical_score"] = self.lexical_score
        return out


def hit_of(doc: Doc, score: float, dense_score: float | None = None, lexical_score: float | None = None) -> Hit:
    """A stored row as a hit with its score (and component scores when known)."""
    return Hit(
        doc.id,
        doc.text,
        score,
        doc.metadata,
        doc.iid,
        doc.doc_id,
        doc.start,
        doc.end,
        dense_score=dense_score,
        lexical_score=lexical_score,
    )


def join_hits(scores: np.ndarray, iids: np.ndarray, docs: dict[int, Doc]) -> list[list[Hit]]:
    """(scores, ids) rows joined with their documents; ids without a document (-1 slots) are skipped."""
    out: list[list[Hit]] = []
    for row_scores, row_ids in zip(scores, iids, strict=True):
        docs_scores = ((docs.get(int(iid)), score) for score, iid in zip(row_scores, row_ids, strict=True))
        out.append([hit_of(doc, float(score)) for doc, score in docs_scores if doc is not None])
    return out


def merge_top_k(
    parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int, n_queries: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-part top-k ``(scores, iids)`` (one column block per segment or shard; -1 ids are empty
    slots) into the top k per query, ties to the lower internal id; missing slots are -1."""
    if not parts:
        return np.zeros((n_queries, 0), np.float32), np.zeros((n_queries, 0), np.int64)
    if len(parts) == 1:
        return parts[0]
    scores = np.concatenate([p[0] for p in parts], axis=1)
    iids = np.concatenate([p[1] for p in parts], axis=1)
    scores = np.where(iids < 0, -np.inf, scores)
    order = np.lexsort((iids, -scores), axis=1)[:, :k] if scores.size else np.zeros((n_queries, 0), np.int64)
    top_s, top_i = np.take_along_axis(scores, order, 1), np.take_along_axis(iids, order, 1)
    return top_s.astype(np.float32), np.where(np.isfinite(top_s), top_i, -1)
