"""The open segment's rows (Lucene's ``DocumentsWriter``): upserts, automatic ids and tombstones.

Rows of a write operation go into the staging database's ``docs`` table (the open segment) until
they are sealed. An id that is already live (in the base version or a segment this operation
sealed) is tombstoned (upsert) or refused (``on_duplicate="error"``); an id given twice within the
open segment keeps the later row. A row given without an id gets an automatic id (docs.id_is_int 2):
an integer that older readers (``int(ext_id) if id_is_int``) still read: the row's internal id, or
when a live row already has that id, a spare number never given before. It never replaces a user's
row, and a user's row with that id is rejected rather than replace it. Ids match exactly
(:func:`semsearch.ids.id_key`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from semsearch.errors import DuplicateIdError
from semsearch.ids import id_key
from semsearch.index.base_version import BaseVersion
from semsearch.index.format import DOCS_DB, hex_sum, row_hash, sum_hex
from semsearch.index.staging import StagingState
from semsearch.index.store import COLUMNS, Record, connect, param_chunks
from semsearch.types import Reject

OnDuplicate = Literal["error", "keep-last"]

ID_STR, ID_INT, ID_AUTO = 0, 1, 2
_TYPE_NAMES = {ID_STR: "a string", ID_INT: "an integer", ID_AUTO: "an automatic id"}
_INSERT = f"INSERT INTO docs({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)"

Live = tuple[int, sqlite3.Connection, int]  # (iid, the segment's connection, id_is_int)


def row_values(iid: int, rec: Record) -> tuple[Any, ...]:
    """A record as a ``docs`` row (its id as :func:`~semsearch.ids.id_key` text, and its id's kind)."""
    if rec.ext_id is None:
        key, kind = str(iid), ID_AUTO
    else:
        key, kind = id_key(rec.ext_id), ID_INT if isinstance(rec.ext_id, int) else ID_STR
    meta = json.dumps(rec.metadata, ensure_ascii=False, sort_keys=True)
    return (iid, key, kind, rec.text, rec.doc_id, rec.start, rec.end, rec.source, meta)


class Tombstones:
    """The rows dead for this operation: the base's tombstones (sorted) and this operation's, kept in
    memory once (not rebuilt per chunk); the staging database is the durable record."""

    def __init__(self, base: np.ndarray, staged: np.ndarray) -> None:
        self.base = base
        self.staged: set[int] = set(staged.tolist())

    def __contains__(self, iid: int) -> bool:
        if iid in self.staged:
            return True
        pos = int(np.searchsorted(self.base, iid))
        return pos < len(self.base) and int(self.base[pos]) == iid


class PendingRows:
    """The open segment in the staging database, and the upsert rules against every live row."""

    def __init__(self, staging: StagingState, base: BaseVersion | None) -> None:
        self.staging = staging
        self.db = staging.db
        self.base = base
        self.dead = Tombstones(base.tombstones if base is not None else np.zeros(0, np.int64), staging.tombstones())
        self._sealed_conns: dict[str, sqlite3.Connection] = {}
        self._new_dead: list[int] = []

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM docs").fetchone()[0])

    def _sources(self) -> list[sqlite3.Connection]:
        sources: list[sqlite3.Connection] = []
        if self.base is not None:
            gone = self.staging.merged_away
            sources += [self.base.conn(ref) for ref in self.base.segments if ref.name not in gone]
        return sources + [self._sealed_conn(name) for name in self.staging.sealed]

    def _sealed_conn(self, name: str) -> sqlite3.Connection:
        if name not in self._sealed_conns:
            path = self.staging.segments_dir / name / DOCS_DB
            self._sealed_conns[name] = connect(Path(path), readonly=True)
        return self._sealed_conns[name]

    def live_lookup(self, keys: Sequence[str]) -> dict[str, Live]:
        """Live rows with these ids (:func:`~semsearch.ids.id_key` texts) in the base and in this
        operation's sealed segments: ``{key: (iid, connection, id_is_int)}``."""
        found: dict[str, Live] = {}
        for conn in self._sources():
            for marks, part in param_chunks(keys):
                sql = f"SELECT ext_id, iid, id_is_int FROM docs WHERE ext_id IN ({marks})"
                for key, iid, kind in conn.execute(sql, part):
                    if iid not in self.dead:
                        found[key] = (iid, conn, int(kind))
        return found

    def tombstone(self, rows: Sequence[tuple[int, sqlite3.Connection]]) -> None:
        """Tombstone live rows of existing segments and add their row hashes to ``tomb_sum`` (inside the
        caller's transaction; :meth:`committed` makes them dead for later lookups)."""
        total = hex_sum(self.staging["tomb_sum"])
        for iid, conn in rows:
            sql = "SELECT ext_id, text, metadata FROM docs WHERE iid = ?"
            total += row_hash(*conn.execute(sql, (iid,)).fetchone())
        self.db.executemany("INSERT OR IGNORE INTO tombstones(iid) VALUES (?)", [(iid,) for iid, _ in rows])
        self.staging.record(tomb_sum=sum_hex(total))
        self._new_dead += [iid for iid, _ in rows]

    def committed(self) -> None:
        """The transaction that recorded :meth:`tombstone`'s rows committed."""
        self.dead.staged.update(self._new_dead)
        self._new_dead = []

    def rolled_back(self) -> None:
        """The transaction that recorded :meth:`tombstone`'s rows did not commit."""
        self._new_dead = []

    def add(
        self, records: Sequence[Record], first_iid: int, on_duplicate: OnDuplicate
    ) -> tuple[list[tuple[int, str]], list[Reject], int]:
        """Insert one chunk's rows (internal ids from ``first_iid``, in order) into the open segment,
        tombstoning the live rows they replace (inside the caller's transaction). Returns the rows
        inserted as ``(iid, id key)``, the rows refused, and the next internal id to give."""
        values = [row_values(first_iid + i, r) for i, r in enumerate(records)]
        existing = self.live_lookup([v[1] for v in values])
        upserted: dict[str, tuple[int, sqlite3.Connection]] = {}
        inserted: list[tuple[int, str]] = []
        rejects: list[Reject] = []
        spare = first_iid + len(records)  # numbers no row will get: automatic ids when a row's own is taken
        for v, rec in zip(values, records, strict=True):
            key, kind = v[1], v[2]
            if kind == ID_AUTO:
                key, spare = self._insert_auto(v, key in existing, spare)
                inserted.append((v[0], key))
                continue
            if key in existing and key not in upserted:
                iid, conn, prev_kind = existing[key]
                prev = conn.execute("SELECT source FROM docs WHERE iid = ?", (iid,)).fetchone()[0]
                reason = conflict(key, kind, prev_kind, prev, on_duplicate, rec.source, "already in the index")
                if reason:
                    rejects.append(as_reject(rec, reason))
                    continue
                upserted[key] = (iid, conn)
            reason = self._insert_open(v, rec, on_duplicate)
            if reason:
                rejects.append(as_reject(rec, reason))
            else:
                inserted.append((v[0], key))
        self.tombstone(list(upserted.values()))
        return inserted, rejects, spare

    def _insert_auto(self, values: tuple[Any, ...], taken: bool, spare: int) -> tuple[str, int]:
        """Insert a row given without an id: its automatic id is its internal id unless a live row has
        that id (a user's integer id), then the first spare number no live row has. Returns the id
        given and the next spare number (internal ids continue after it: never given twice)."""
        if not taken:
            try:
                self.db.execute(_INSERT, values)
                return values[1], spare
            except sqlite3.IntegrityError:  # an earlier row of this operation has that id
                pass
        while self.db.execute("SELECT 1 FROM docs WHERE ext_id = ?", (str(spare),)).fetchone() or self.live_lookup(
            [str(spare)]
        ):
            spare += 1
        self.db.execute(_INSERT, (values[0], str(spare), *values[2:]))
        return str(spare), spare + 1

    def _insert_open(self, values: tuple[Any, ...], rec: Record, on_duplicate: OnDuplicate) -> str | None:
        """Insert into the open segment (an earlier row of this operation with the id is replaced, or
        raises under ``on_duplicate="error"``); returns why the row is rejected instead, or None."""
        try:
            self.db.execute(_INSERT, values)
            return None
        except sqlite3.IntegrityError as e:
            prev = self.db.execute("SELECT source, id_is_int FROM docs WHERE ext_id = ?", (values[1],)).fetchone()
            if prev is None:
                raise
            try:
                reason = conflict(values[1], values[2], int(prev[1]), prev[0], on_duplicate, rec.source, None)
            except DuplicateIdError as dup:
                raise dup from e
            if reason:
                return reason
            self.db.execute("DELETE FROM docs WHERE ext_id = ?", (values[1],))
            self.db.execute(_INSERT, values)
            return None

    def delete(self, ext_ids: Sequence[int | str]) -> list[int | str]:
        """Tombstone the live rows with these ids (inside the caller's transaction); returns the ids not found."""
        found = self.live_lookup(list(dict.fromkeys(id_key(i) for i in ext_ids)))
        self.tombstone([(iid, conn) for iid, conn, _ in found.values()])
        return [i for i in ext_ids if id_key(i) not in found]

    def close(self) -> None:
        for c in self._sealed_conns.values():
            c.close()
        self._sealed_conns.clear()


def _real_id(key: str, kind: int) -> int | str:
    return key if kind == ID_STR else int(key)


def conflict(
    key: str,
    kind: int,
    prev_kind: int,
    prev_source: str | None,
    on_duplicate: OnDuplicate,
    source: str | None,
    where: str | None,
) -> str | None:
    """A user's row whose id is already live: why it is rejected (the live row's id is automatic, or
    the id's type would change), None to replace the live row, or :class:`DuplicateIdError` under "error"."""
    first = f"first seen at {prev_source}"
    real = _real_id(key, kind)
    if prev_kind == ID_AUTO:
        return (
            f"id {real!r} is the automatic id of a row given without an id ({first}); an automatic id is never "
            "replaced: use another id, or delete that row first"
        )
    if on_duplicate == "error":
        raise DuplicateIdError(
            f"duplicate id {real!r} at {source}{': ' + where if where else ''} ({first}); "
            "use --on-duplicate keep-last to let the later row replace the earlier one",
            {"id": real, "source": source, "previous": prev_source},
        )
    if kind != prev_kind:
        return (
            f"id {real!r} is {_TYPE_NAMES[kind]} here but {_TYPE_NAMES[prev_kind]} in the row it would replace "
            f"({first}); a row keeps its id's type: write the id as {_TYPE_NAMES[prev_kind]}, or delete the row first"
        )
    return None


def as_reject(rec: Record, reason: str) -> Reject:
    """A row the writer refuses, reported like a reader's reject (``source`` is ``file:line``)."""
    name, _, line = (rec.source or "").rpartition(":")
    if not line.isdigit():
        name, line = rec.source or "", "0"
    return Reject(name, int(line), reason, rec.text[:200])
