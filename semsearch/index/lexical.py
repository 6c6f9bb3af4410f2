"""Lexical search: BM25 over the segments' SQLite FTS5 tables, with collection-wide statistics.

User text never reaches FTS5 as query syntax. :func:`query_terms` splits it into terms the way the
tables' ``unicode61`` tokenizer does (runs of letters and digits), drops a small English stopword
list (Lucene's, as BM25 baselines do) unless nothing else is left; each term is one OR-ed phrase,
tokenised (and Porter-stemmed) by the same FTS5 tokenizer the index used. Text with no term gives
no lexical results.

**Scores do not depend on how rows are split into segments.** FTS5's own ``bm25()`` uses the
statistics of one table, so it is not used for ranking. Instead, per query: each segment's
postings for each phrase are read from its ``fts5vocab`` instance table (document, term
frequency), tombstoned rows are dropped, and FTS5's formula is applied with statistics over all
live rows of the version (the ``dfs_query_then_fetch`` idea of Elasticsearch):

* ``N`` = live rows, ``avgdl`` = (tokens of every segment - tokens of tombstoned rows) / ``N``;
* ``df(p)`` = live rows containing phrase ``p`` in any segment (before any metadata filter, as
  FTS5's ``bm25()`` counts the whole table);
* ``idf(p) = ln((N - df + 0.5) / (df + 0.5))``, floored at 1e-6; k1 = 1.2, b = 0.75;
* ``score = Σ_p idf(p) · tf·(k1+1) / (tf + k1·(1 - b + b·dl/avgdl))``: the value ``-bm25()``
  returns on a table holding exactly the live rows (tested against it to 1e-6).

Cost: one postings scan per phrase and segment, O(matching rows), like FTS5's own ranking.

A sharded version (:mod:`semsearch.search.sharded`) runs the same formula in two phases: every shard's
:func:`phrase_df` is gathered and summed, then each shard scores its rows with
:func:`bm25_scores` and the collection's ``N``, ``avgdl`` and ``df``, so scores do not depend on the
sharding either.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from semsearch.index.store import param_chunks

MAX_TERMS = 64  # bounds the cost of one query; longer queries keep their first 64 distinct terms
K1 = 1.2
B = 0.75
VOCAB_TABLE = "docs_vocab"
VOCAB_SCHEMA = f"CREATE VIRTUAL TABLE IF NOT EXISTS {VOCAB_TABLE} USING fts5vocab(docs_fts, instance);"

# Lucene's classic English stopword set (EnglishAnalyzer / Anserini's BM25 default).
_LUCENE_STOPWORDS = (
    "a an and are as at be but by for if in into is it no not of on or such that the their then there "
    "these they this to was will with"
)
STOPWORDS = frozenset(_LUCENE_STOPWORDS.split(" "))

# unicode61 token characters: letters, digits (and private-use); everything else separates.
_TERM_RE = re.compile(r"[^\W_]+", re.UNICODE)


def query_terms(text: str) -> list[str]:
    """Distinct lower-cased terms of ``text`` in order, stopwords dropped unless only stopwords remain."""
    terms = list(dict.fromkeys(t.lower() for t in _TERM_RE.findall(text)))
    content = [t for t in terms if t not in STOPWORDS]
    return (content or terms)[:MAX_TERMS]


class _Tokenizer(threading.local):
    """FTS5's own ``porter unicode61`` tokenizer, run on a private in-memory table per thread."""

    def __init__(self) -> None:
        self.conn = sqlite3.connect(":memory:")
        self.conn.executescript(
            "CREATE VIRTUAL TABLE q USING fts5(t, tokenize='porter unicode61');"
            "CREATE VIRTUAL TABLE qv USING fts5vocab(q, instance);"
        )

    def tokens(self, text: str) -> list[str]:
        with self.conn:
            self.conn.execute("INSERT INTO q(rowid, t) VALUES (1, ?)", (text,))
            out = [t for (t,) in self.conn.execute("SELECT term FROM qv ORDER BY offset")]
            self.conn.execute("DELETE FROM q")
        return out


_tokenizer = _Tokenizer()


def query_phrases(text: str) -> list[list[str]]:
    """One phrase (its FTS5 tokens) per query term; terms FTS5 reduces to nothing are dropped."""
    return [toks for toks in (_tokenizer.tokens(t) for t in query_terms(text)) if toks]


def ensure_vocab(conn: sqlite3.Connection) -> None:
    """Format-1 stores lack the persistent vocab table: attach a temporary one (readonly-safe)."""
    try:
        conn.execute(f"SELECT 1 FROM {VOCAB_TABLE} LIMIT 0")
    except sqlite3.OperationalError:
        conn.execute(f"CREATE VIRTUAL TABLE temp.{VOCAB_TABLE} USING fts5vocab(main, docs_fts, instance)")


def postings(conn: sqlite3.Connection, phrase: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(iids ascending, phrase frequency) of the rows of one segment that contain ``phrase``."""
    if len(phrase) == 1:
        rows = conn.execute(
            f"SELECT doc, COUNT(*) FROM {VOCAB_TABLE} WHERE term = ? GROUP BY doc ORDER BY doc", (phrase[0],)
        ).fetchall()
        docs = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        return docs, np.fromiter((r[1] for r in rows), dtype=np.float64, count=len(rows))
    # a term FTS5 splits into several tokens is a phrase: count the positions where they follow each other
    positions: list[dict[int, set[int]]] = []
    for token in phrase:
        per_doc: dict[int, set[int]] = {}
        for doc, offset in conn.execute(f"SELECT doc, offset FROM {VOCAB_TABLE} WHERE term = ?", (token,)):
            per_doc.setdefault(int(doc), set()).add(int(offset))
        positions.append(per_doc)
    counts: dict[int, int] = {}
    for doc in sorted(set.intersection(*(set(p) for p in positions))):
        n = sum(1 for o in positions[0][doc] if all(o + j in positions[j][doc] for j in range(1, len(phrase))))
        if n:
            counts[doc] = n
    return np.fromiter(counts, dtype=np.int64), np.fromiter(counts.values(), dtype=np.float64)


def _varint(blob: bytes) -> int:
    """The first SQLite varint of an FTS5 ``docsize`` blob (one column: the row's token count)."""
    value = 0
    for i, byte in enumerate(blob[:9]):
        if i == 8:
            return (value << 8) | byte
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            return value
    return value


def doc_lengths(conn: sqlite3.Connection, iids: np.ndarray) -> np.ndarray:
    """Token counts (FTS5's ``docsize``) of the given rows, in the order given."""
    ids = [int(i) for i in iids]
    found: dict[int, int] = {}
    for marks, part in param_chunks(ids):
        for iid, blob in conn.execute(f"SELECT id, sz FROM docs_fts_docsize WHERE id IN ({marks})", part):
            found[int(iid)] = _varint(blob)
    return np.array([found.get(i, 0) for i in ids], dtype=np.float64)


def total_tokens(conn: sqlite3.Connection) -> int:
    return int(sum(_varint(blob) for (blob,) in conn.execute("SELECT sz FROM docs_fts_docsize")))


class LexicalSegment(Protocol):
    """What BM25 needs of one segment: its store and which of its rows are tombstoned."""

    @property
    def conn(self) -> sqlite3.Connection: ...

    def is_dead(self, iids: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class CollectionStats:
    """Collection-wide BM25 statistics over the live rows of a version."""

    rows: int
    tokens: int

    @property
    def avgdl(self) -> float:
        return self.tokens / self.rows if self.rows else 0.0


Postings = list[list[tuple[np.ndarray, np.ndarray]]]  # per segment, per phrase: (live iids, tf)


def live_postings(segments: Sequence[LexicalSegment], phrases: Sequence[Sequence[str]]) -> Postings:
    """Per segment and phrase: the live rows containing the phrase and its frequency in each."""
    lists: Postings = []
    for seg in segments:
        per_phrase = []
        for phrase in phrases:
            docs, tf = postings(seg.conn, phrase)
            if len(docs):
                live = ~seg.is_dead(docs)
                docs, tf = docs[live], tf[live]
            per_phrase.append((docs, tf))
        lists.append(per_phrase)
    return lists


def phrase_df(lists: Postings, n_phrases: int) -> np.ndarray:
    """Live rows containing each phrase, summed over the segments (a shard's share of ``df``)."""
    df = np.zeros(n_phrases, dtype=np.float64)
    for per_phrase in lists:
        for p, (docs, _) in enumerate(per_phrase):
            df[p] += len(docs)
    return df


def bm25_scores(
    segments: Sequence[LexicalSegment], lists: Postings, stats: CollectionStats, df: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(iids, scores)`` of the rows in ``lists``, scored with the given collection statistics.

    ``stats`` and ``df`` are those of the whole collection: of these segments for a plain index, or
    the sums over every shard for a sharded one (so scores do not depend on the sharding).
    """
    if stats.rows == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    n = float(stats.rows)
    idf = np.log((n - df + 0.5) / (df + 0.5))
    idf = np.where(idf <= 0.0, 1e-6, idf)
    avgdl = stats.avgdl
    out_ids: list[np.ndarray] = []
    out_scores: list[np.ndarray] = []
    for seg, per_phrase in zip(segments, lists, strict=True):
        matched = [d for d, _ in per_phrase if len(d)]
        if not matched:
            continue
        docs = np.unique(np.concatenate(matched))
        dl = doc_lengths(seg.conn, docs)
        norm = K1 * (1.0 - B + B * dl / avgdl)
        score = np.zeros(len(docs), dtype=np.float64)
        for p, (pd, ptf) in enumerate(per_phrase):  # phrase order, as FTS5 sums
            if not len(pd):
                continue
            tf = np.zeros(len(docs), dtype=np.float64)
            tf[np.searchsorted(docs, pd)] = ptf
            score += np.where(tf > 0, idf[p] * (tf * (K1 + 1.0)) / (tf + norm), 0.0)
        out_ids.append(docs)
        out_scores.append(score)
    if not out_ids:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    return np.concatenate(out_ids), np.concatenate(out_scores)


def bm25_all(segments: Sequence[LexicalSegment], stats: CollectionStats, text: str) -> tuple[np.ndarray, np.ndarray]:
    """``(iids, scores)`` of every live row matching at least one query phrase (unordered).

    One phase: the statistics are those of ``segments`` themselves. A sharded search runs the two
    phases separately: :func:`phrase_df` on every shard, summed, then :func:`bm25_scores` on every
    shard with the sums.
    """
    phrases = query_phrases(text)
    if not phrases or stats.rows == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    lists = live_postings(segments, phrases)
    return bm25_scores(segments, lists, stats, phrase_df(lists, len(phrases)))


def top_k(
    iids: np.ndarray, scores: np.ndarray, k: int, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` by score (ties: lower iid first, as FTS5's ``ORDER BY rank, rowid``)."""
    if allowed is not None:
        keep = np.isin(iids, allowed)
        iids, scores = iids[keep], scores[keep]
    order = np.lexsort((iids, -scores))[: max(0, k)]
    return scores[order], iids[order]
