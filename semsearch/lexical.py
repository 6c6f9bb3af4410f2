"""Lexical search: BM25 over the version's SQLite FTS5 table ``docs_fts``.

User text never reaches FTS5 as query syntax. :func:`fts_query` splits it into terms the way the
table's ``unicode61`` tokenizer does (runs of letters and digits), drops a small English stopword
list (Lucene's, as BM25 baselines do) unless nothing else is left, and ORs the terms as quoted
strings (``"cat" OR "mat"``), so operators (``AND``, ``NEAR``, ``*``, ``:``, ``^``, quotes,
parentheses) are plain words or separators. Text with no term gives no lexical results.

Scores are ``-bm25(docs_fts)`` (FTS5 returns lower-is-better; k1 = 1.2, b = 0.75): positive,
higher is better, comparable within one query only.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MAX_TERMS = 64  # bounds the cost of one MATCH; longer queries keep their first 64 distinct terms

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


def fts_query(text: str) -> str | None:
    """A safe FTS5 MATCH expression for free text (quoted terms joined by OR), or None if no term."""
    terms = query_terms(text)
    if not terms:
        return None
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)


def bm25_search(
    conn: sqlite3.Connection,
    text: str,
    k: int,
    where: str | None = None,
    params: Sequence[Any] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k ``(scores, iids)`` by BM25 for one query, best first (ties: lower iid first).

    ``where``/``params``: an SQL condition over the ``docs`` row aliased ``d`` (a compiled metadata
    filter), so the top k are the true top k among the matching rows.
    """
    match = fts_query(text)
    if match is None or k <= 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    if where:
        sql = (
            "SELECT f.rowid, f.rank FROM docs_fts AS f JOIN docs AS d ON d.iid = f.rowid "
            f"WHERE docs_fts MATCH ? AND ({where}) ORDER BY f.rank, f.rowid LIMIT ?"
        )
        args: list[Any] = [match, *params, k]
    else:
        sql = "SELECT rowid, rank FROM docs_fts WHERE docs_fts MATCH ? ORDER BY rank, rowid LIMIT ?"
        args = [match, k]
    rows = conn.execute(sql, args).fetchall()
    iids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    scores = np.fromiter((-r[1] for r in rows), dtype=np.float32, count=len(rows))
    return scores, iids


def bm25_scores(conn: sqlite3.Connection, text: str, iids: Sequence[int]) -> dict[int, float]:
    """BM25 of the given rows for ``text`` (rows matching no term are absent: their score is 0).

    FTS5's BM25 statistics are table-wide, so a row's score does not depend on which rows are asked.
    """
    match = fts_query(text)
    wanted = [int(i) for i in iids]
    if match is None or not wanted:
        return {}
    out: dict[int, float] = {}
    for start in range(0, len(wanted), 900):
        part = wanted[start : start + 900]
        marks = ",".join("?" * len(part))
        # "+rowid": the unary plus keeps the IN list away from FTS5's rowid lookup, which would run the
        # whole MATCH once per listed row; this way the MATCH runs once and BM25 is computed for the
        # listed rows only.
        sql = f"SELECT rowid, bm25(docs_fts) FROM docs_fts WHERE docs_fts MATCH ? AND +rowid IN ({marks})"
        out.update((int(r), -float(s)) for r, s in conn.execute(sql, [match, *part]))
    return out
