"""The SQLite document store of an index version: ids, text, source offsets, JSON metadata.

``iid`` is the int64 id used in FAISS (``add_with_ids``); ``ext_id`` is the user's id as its
:func:`semsearch.ids.id_key` text, with its type in ``id_is_int`` (0 string, 1 integer, 2 an automatic
integer id given to a row without one) so that search results always return exactly the id the user
gave. An FTS5 table
(BM25) over the text serves lexical and hybrid search.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from semsearch.errors import CorruptIndexError
from semsearch.ids import id_key
from semsearch.types import DOCUMENT_KEY, Doc, UserId
from semsearch.types import Record as Record  # re-exported: the writer and the tests take it from here

DOCS_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    iid       INTEGER PRIMARY KEY,
    ext_id    TEXT NOT NULL UNIQUE,
    id_is_int INTEGER NOT NULL DEFAULT 0,
    text      TEXT NOT NULL,
    doc_id    TEXT,
    start     INTEGER,
    "end"     INTEGER,
    source    TEXT,
    metadata  TEXT NOT NULL DEFAULT '{}'
);
"""

# The staging database of a write operation (semsearch.index.staging): the open segment's rows and which
# rows its vector files hold (open_vectors, in file order per shard), plus the rejects, tombstones and
# resume state, all committed together chunk by chunk.
STAGING_SCHEMA = (
    DOCS_SCHEMA
    + """
CREATE TABLE IF NOT EXISTS rejects (
    n      INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    line   INTEGER NOT NULL,
    reason TEXT NOT NULL,
    raw    TEXT
);
CREATE TABLE IF NOT EXISTS build_state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tombstones (
    iid INTEGER PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS open_vectors (
    iid   INTEGER PRIMARY KEY,
    shard INTEGER NOT NULL
);
"""
)

FTS_SCHEMA = """
CREATE VIRTUAL TABLE IF NOT EXISTS docs_fts USING fts5(
    text, content='docs', content_rowid='iid', tokenize='porter unicode61'
);
"""

COLUMNS = 'iid, ext_id, id_is_int, text, doc_id, start, "end", source, metadata'

MAX_PARAMS = 900  # bound parameters per statement, below SQLite's limit (999 before 3.32)

_V = TypeVar("_V")


def param_chunks(values: Iterable[_V]) -> Iterator[tuple[str, list[_V]]]:
    """``(placeholders, part)`` for ``... IN ({placeholders})`` over ``values`` in parts SQLite can bind."""
    items = list(values)
    for start in range(0, len(items), MAX_PARAMS):
        part = items[start : start + MAX_PARAMS]
        yield ",".join("?" * len(part)), part


def connect(path: Path, readonly: bool = False, schema: str = DOCS_SCHEMA) -> sqlite3.Connection:
    """A read-only connection to a finished (immutable) store, or a writable one with ``schema``.

    Writable connections use a rollback journal with full sync: a commit is durable and atomic
    under kill -9 and power loss, and the file stays self-contained (no ``-wal`` beside it).
    """
    if readonly:
        if not path.is_file():
            raise CorruptIndexError(f"{path} is missing")
        conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True, check_same_thread=False)
    else:
        conn = sqlite3.connect(path, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(schema)
    return conn


def _row_to_doc(row: Sequence[Any]) -> Doc:
    iid, ext_id, is_int, text, doc_id, start, end, source, metadata = row
    meta = json.loads(metadata)
    document = meta.pop(DOCUMENT_KEY, None) if DOCUMENT_KEY in metadata else None
    return Doc(
        iid=iid,
        id=int(ext_id) if is_int else ext_id,
        text=text,
        metadata=meta,
        doc_id=doc_id,
        start=start,
        end=end,
        source=source,
        document=document if isinstance(document, str) else None,
    )


class DocStore:
    """Read access to a finished version's documents (thread-safe for reads)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.conn = connect(path, readonly=True)
            self.conn.execute("SELECT 1 FROM docs LIMIT 1").fetchall()
        except sqlite3.DatabaseError as e:
            raise CorruptIndexError(f"{path} is not a readable semsearch SQLite store: {e}") from e

    def close(self) -> None:
        self.conn.close()

    def get(self, iids: Iterable[int]) -> dict[int, Doc]:
        out: dict[int, Doc] = {}
        for marks, part in param_chunks(int(i) for i in iids):
            for row in self.conn.execute(f"SELECT {COLUMNS} FROM docs WHERE iid IN ({marks})", part):
                doc = _row_to_doc(row)
                out[doc.iid] = doc
        return out

    def iter_docs(self) -> Iterator[Doc]:
        for row in self.conn.execute(f"SELECT {COLUMNS} FROM docs ORDER BY iid"):
            yield _row_to_doc(row)

    def iids_for_ext_ids(self, ext_ids: Sequence[UserId]) -> dict[str, int]:
        """``{id_key(id): iid}`` for the ids present (exact text: ``1`` and ``"1"`` are one id, ``" 1"``
        another; see :mod:`semsearch.ids`)."""
        out: dict[str, int] = {}
        for marks, part in param_chunks(id_key(e) for e in ext_ids):
            out.update(self.conn.execute(f"SELECT ext_id, iid FROM docs WHERE ext_id IN ({marks})", part))
        return out


def legacy_corpus_checksum(conn: sqlite3.Connection) -> str:
    """Format 1's corpus checksum: sha256 over (id, text, metadata) of every row in iid order."""
    import hashlib

    digest = hashlib.sha256()
    for ext_id, text, metadata in conn.execute("SELECT ext_id, text, metadata FROM docs ORDER BY iid"):
        digest.update(ext_id.encode())
        digest.update(b"\x1f")
        digest.update(text.encode())
        digest.update(b"\x1f")
        digest.update(metadata.encode())
        digest.update(b"\x1e")
    return digest.hexdigest()
