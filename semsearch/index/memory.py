"""The in-memory segment of a writable index: rows acknowledged but not yet flushed to a disk segment.

:class:`MemoryRows` keeps the pending rows in an in-memory SQLite database with exactly a segment's
schema (``docs`` + FTS5 + its vocabulary table) and their vectors in a dict; :meth:`MemoryRows.snapshot`
turns them into a :class:`~semsearch.index.segment.Segment` (an SQLite copy made with the backup API,
and an exact flat FAISS index over the vectors), so dense search, filters (the same SQL) and BM25 (the
same postings) treat it as one more segment. A snapshot is immutable: writers go on changing the
live rows while readers search the snapshot they hold (Lucene's near-real-time reader).

Internal ids of memory rows come from :data:`MEMORY_IID_BASE` upwards, a range no disk segment reaches:
a flush writes the rows through :class:`~semsearch.index.writer.IndexWriter`, which numbers them anew,
while rows written during the flush keep theirs, without any collision.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import numpy as np

from semsearch.ids import id_key
from semsearch.index.ann import VectorIndex
from semsearch.index.lexical import VOCAB_SCHEMA, total_tokens
from semsearch.index.manifest import SegmentManifest
from semsearch.index.segment import Segment
from semsearch.index.store import COLUMNS, DOCS_SCHEMA, FTS_SCHEMA, DocStore
from semsearch.types import UserId

MEMORY_IID_BASE = 1 << 60
ID_STR, ID_INT = 0, 1  # docs.id_is_int, as the writer stores it


class _SnapshotDocs(DocStore):
    """A :class:`DocStore` over an in-memory SQLite snapshot."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.path = Path(":memory:")
        self.conn = conn


class MemoryRows:
    """Pending rows by id key; all methods are thread-safe."""

    def __init__(self, dimension: int, model_fingerprint: str) -> None:
        self.dimension = dimension
        self.model_fingerprint = model_fingerprint
        self._lock = threading.Lock()
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        self._db.executescript(DOCS_SCHEMA + FTS_SCHEMA + VOCAB_SCHEMA)
        self._vectors: dict[int, np.ndarray] = {}
        self._iid_of: dict[str, int] = {}
        self._next_iid = MEMORY_IID_BASE
        self._snapshots = 0

    def __len__(self) -> int:
        return len(self._iid_of)

    def iid(self, key: str) -> int | None:
        return self._iid_of.get(key)

    def upsert(self, ext_id: UserId, text: str, metadata: dict[str, object], vector: np.ndarray) -> int:
        """Insert or replace the row of ``ext_id``; returns its (new) internal id."""
        key = id_key(ext_id)
        with self._lock, self._db:
            self._remove(key)
            iid = self._next_iid
            self._next_iid += 1
            meta = json.dumps(metadata, ensure_ascii=False, sort_keys=True)
            kind = ID_INT if isinstance(ext_id, int) else ID_STR
            self._db.execute(
                f"INSERT INTO docs({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)",
                (iid, key, kind, text, None, None, None, None, meta),
            )
            self._db.execute("INSERT INTO docs_fts(rowid, text) VALUES (?, ?)", (iid, text))
            self._vectors[iid] = np.asarray(vector, dtype=np.float32)
            self._iid_of[key] = iid
            return iid

    def remove(self, key: str) -> bool:
        """Drop the row of ``key`` (an id key); whether there was one."""
        with self._lock, self._db:
            return self._remove(key)

    def _remove(self, key: str) -> bool:
        iid = self._iid_of.pop(key, None)
        if iid is None:
            return False
        (text,) = self._db.execute("SELECT text FROM docs WHERE iid = ?", (iid,)).fetchone()
        self._db.execute("INSERT INTO docs_fts(docs_fts, rowid, text) VALUES ('delete', ?, ?)", (iid, text))
        self._db.execute("DELETE FROM docs WHERE iid = ?", (iid,))
        del self._vectors[iid]
        return True

    def id_type(self, key: str) -> int | None:
        """``id_is_int`` of the row of ``key``, or None."""
        iid = self._iid_of.get(key)
        if iid is None:
            return None
        return int(self._db.execute("SELECT id_is_int FROM docs WHERE iid = ?", (iid,)).fetchone()[0])

    def snapshot(self) -> Segment | None:
        """An immutable segment of the rows now pending (None when there are none)."""
        with self._lock:
            if not self._iid_of:
                return None
            conn = sqlite3.connect(":memory:", check_same_thread=False)
            self._db.backup(conn)
            ids = np.fromiter(sorted(self._vectors), dtype=np.int64, count=len(self._vectors))
            vectors = np.stack([self._vectors[int(i)] for i in ids]).astype(np.float32, copy=False)
            self._snapshots += 1
            name = f"memory-{self._snapshots}"
        meta = SegmentManifest(
            name=name,
            count=len(ids),
            dimension=self.dimension,
            index_type="flat",
            index_params={},
            model_fingerprint=self.model_fingerprint,
            min_iid=int(ids[0]),
            max_iid=int(ids[-1]),
            corpus_sum="",
            tokens=total_tokens(conn),
            origin={"kind": "memory"},
        )
        return Segment(name, Path(":memory:"), meta, VectorIndex.build(vectors, ids, "flat"), _SnapshotDocs(conn))

    def rows(self) -> list[tuple[int, UserId, str, dict[str, object], np.ndarray]]:
        """Every pending row ``(iid, id, text, metadata, vector)`` in write order (for a flush)."""
        with self._lock:
            rows = self._db.execute("SELECT iid, ext_id, id_is_int, text, metadata FROM docs ORDER BY iid").fetchall()
            return [
                (iid, int(ext) if kind == ID_INT else ext, text, json.loads(meta), self._vectors[iid])
                for iid, ext, kind, text, meta in rows
            ]

    def get(self, key: str) -> tuple[UserId, str, dict[str, object]] | None:
        """The pending row of ``key``: ``(id, text, metadata)``, or None."""
        with self._lock:
            iid = self._iid_of.get(key)
            if iid is None:
                return None
            ext, kind, text, meta = self._db.execute(
                "SELECT ext_id, id_is_int, text, metadata FROM docs WHERE iid = ?", (iid,)
            ).fetchone()
            return (int(ext) if kind == ID_INT else ext, text, json.loads(meta))

    def remove_if(self, key: str, iid: int) -> None:
        """Drop the row of ``key`` if it is still the one with internal id ``iid`` (flushed, not rewritten since)."""
        with self._lock, self._db:
            if self._iid_of.get(key) == iid:
                self._remove(key)

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._iid_of)

    def close(self) -> None:
        with self._lock:
            self._db.close()
