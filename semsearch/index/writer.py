"""The index writer: every change to an index goes through one :class:`IndexWriter` operation.

An operation (build, add, delete, merge, upgrade) starts from the current version (its *base*),
stages what it creates under ``staging/<operation>/`` and ends with :meth:`IndexWriter.commit`,
which publishes a new version atomically. What each costs is its own size:

* **add/build** write new segments only: rows are committed chunk by chunk into the staging
  database ``build.sqlite`` (rows of the open segment, rejects, tombstones and the resume state in
  one transaction, vectors in a chunk file renamed into place first), and the open segment is
  sealed into an immutable segment every ``segment_rows`` rows and at commit. An id that is
  already live (in the base or an earlier segment of this operation) is tombstoned (upsert) or
  refused (``on_duplicate="error"``).
* **delete** writes only tombstones.
* **merge** (compaction) rewrites the live rows of some segments into one and drops their
  tombstones; the content of the version does not change.

Nothing in ``staging/`` is ever read by a reader, and :meth:`IndexRoot.publish` moves segments and
the version into place before switching ``current``, so kill -9 at any point leaves the previous
version current and loadable; ``--resume`` continues a build/add from its last committed chunk.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from semsearch.errors import DiskFullError, DuplicateIdError, InvalidInputError, SemsearchError
from semsearch.ids import id_key
from semsearch.index.ann import auto_index_type, resolve_params
from semsearch.index.format import (
    DOCS_DB,
    TOMBSTONES_FILE,
    file_sha256,
    hex_sum,
    row_hash,
    save_npy_atomic,
    sum_hex,
)
from semsearch.index.layout import IndexRoot
from semsearch.index.manifest import Manifest, SegmentManifest
from semsearch.index.segment import link_legacy_segment, write_segment
from semsearch.index.sharding import segment_shard, shard_count, shard_of, shard_spec
from semsearch.index.store import COLUMNS, STAGING_SCHEMA, Record, connect
from semsearch.types import Reject

log = logging.getLogger(__name__)

OnDuplicate = Literal["error", "keep-last"]
STAGING_DB = "build.sqlite"
CHUNKS = "chunks"
NEW_SEGMENTS = "segments"
NEW_VERSION = "version"
DEFAULT_SEGMENT_ROWS = 1_000_000

_INSERT = f"INSERT INTO docs({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)"


def new_segment_name() -> str:
    """Unique and time-ordered: operations never collide, even an interrupted one resumed later.
    (:data:`semsearch.index.layout.SEGMENT_NAME` matches exactly these names: garbage collection touches
    nothing else under ``segments/``.)"""
    return f"s{time.strftime('%Y%m%d%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"


# docs.id_is_int: how ext_id is typed. An automatic id (a row given without one) is an integer that
# older readers (``int(ext_id) if id_is_int``) still read: the row's internal id, or when a live row
# already has that id, a spare number never given before. It never replaces a user's row, and a user's
# row with that id is rejected rather than replace it (IndexWriter.add_chunk).
ID_STR, ID_INT, ID_AUTO = 0, 1, 2
_TYPE_NAMES = {ID_STR: "a string", ID_INT: "an integer", ID_AUTO: "an automatic id"}


@dataclass
class SegmentRef:
    """A segment as a version lists it."""

    name: str
    directory: Path
    meta: SegmentManifest


@dataclass
class BaseVersion:
    """The version an operation starts from: its manifest, segments and tombstones."""

    directory: Path
    manifest: Manifest
    segments: list[SegmentRef]
    tombstones: np.ndarray
    _conns: dict[str, sqlite3.Connection] = field(default_factory=dict, repr=False)

    @classmethod
    def read(cls, root: IndexRoot) -> BaseVersion | None:
        if root.current_version() is None:
            return None
        directory = root.resolve()
        manifest = Manifest.read(directory)
        if manifest.legacy:
            raise InvalidInputError(f"internal: {directory} is a format-1 version; upgrade it first")
        segments = [
            SegmentRef(s["name"], root.segments_dir / s["name"], SegmentManifest.read(root.segments_dir / s["name"]))
            for s in manifest.segments
        ]
        tomb_path = directory / TOMBSTONES_FILE
        tombstones = np.load(tomb_path) if tomb_path.is_file() else np.zeros(0, np.int64)
        return cls(directory, manifest, segments, np.asarray(tombstones, dtype=np.int64))

    @property
    def index_request(self) -> dict[str, Any]:
        """The index type and parameters its segments are built with (a later write uses the same)."""
        return self.manifest.index_request or {"type": self.manifest.index_type, "params": {}}

    def conn(self, ref: SegmentRef) -> sqlite3.Connection:
        if ref.name not in self._conns:
            self._conns[ref.name] = connect(ref.directory / DOCS_DB, readonly=True)
        return self._conns[ref.name]

    def close(self) -> None:
        for c in self._conns.values():
            c.close()
        self._conns.clear()


def _chunked(values: Sequence[Any], size: int = 900) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _row_values(iid: int, rec: Record) -> tuple[Any, ...]:
    if rec.ext_id is None:
        key, kind = str(iid), ID_AUTO
    else:
        key, kind = id_key(rec.ext_id), ID_INT if isinstance(rec.ext_id, int) else ID_STR
    return (
        iid,
        key,
        kind,
        rec.text,
        rec.doc_id,
        rec.start,
        rec.end,
        rec.source,
        json.dumps(rec.metadata, ensure_ascii=False, sort_keys=True),
    )


def is_disk_full(error: BaseException) -> bool:
    """ENOSPC/EDQUOT, SQLite's "database or disk is full", or numpy's short write (an OSError without errno)."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT) or (
            error.errno is None and "requested and" in str(error) and "written" in str(error)
        )
    return isinstance(error, sqlite3.OperationalError) and "disk is full" in str(error)


class IndexWriter:
    """One write operation on an index root; the caller holds :meth:`IndexRoot.lock`."""

    def __init__(
        self,
        root: IndexRoot,
        op: str,
        encoder_meta: dict[str, Any],
        index_request: dict[str, Any],
        *,
        resume: bool = False,
        segment_rows: int = DEFAULT_SEGMENT_ROWS,
        base: BaseVersion | None = None,
        shards: int | None = None,
    ) -> None:
        self.root = root
        # the base's sharding is kept (add/delete/compact); ``shards`` only applies to a fresh build
        self.shards = base.manifest.shards if base is not None else shard_spec(shards)
        self.n_shards = shard_count(self.shards)
        self.op = op
        self.encoder_meta = encoder_meta
        self.index_request = {"type": index_request.get("type", "flat"), "params": index_request.get("params", {})}
        self.segment_rows = segment_rows
        self.base = base
        self.dir = root.staging_dir / op
        fresh_state: dict[str, Any] = {
            "base_version": base.manifest.version if base else None,
            "consumed": 0,
            "next_iid": base.manifest.next_iid if base else 0,
            "chunks": 0,
            "open_first_chunk": 0,
            "rejects": 0,
            "sealed": [],
            "tomb_sum": "0",
            "merged_away": [],
        }
        if self.dir.exists() and resume:
            self.db = connect(self.dir / STAGING_DB, schema=STAGING_SCHEMA)
            if self.state().get("base_version", fresh_state["base_version"]) != fresh_state["base_version"]:
                log.warning("--resume: the index changed since the interrupted run; starting from the beginning")
                self.db.close()
                shutil.rmtree(self.dir)
        elif self.dir.exists():
            log.info("discarding an unfinished run at %s (pass --resume to continue it)", self.dir)
            shutil.rmtree(self.dir)
        elif resume:
            log.warning("--resume: no checkpoint for these inputs and options; starting from the beginning")
        if not self.dir.exists():
            (self.dir / CHUNKS).mkdir(parents=True)
            (self.dir / NEW_SEGMENTS).mkdir()
            self.db = connect(self.dir / STAGING_DB, schema=STAGING_SCHEMA)
            with self.db:
                self._set_state(**fresh_state)
        state = self.state()
        for key, value in fresh_state.items():
            state.setdefault(key, value)
        self._state = state
        self._sealed_conns: dict[str, sqlite3.Connection] = {}
        self._clean_uncommitted()

    # ------------------------------------------------------------------------------------ state

    def state(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM build_state")}

    def _set_state(self, **values: Any) -> None:
        self.db.executemany(
            "INSERT OR REPLACE INTO build_state(key, value) VALUES (?, ?)",
            [(k, json.dumps(v)) for k, v in values.items()],
        )
        if hasattr(self, "_state"):
            self._state.update(values)

    @property
    def consumed(self) -> int:
        """Input items (rows and rejects) committed so far: what ``--resume`` skips."""
        return int(self._state["consumed"])

    @property
    def rejects(self) -> int:
        return int(self._state["rejects"])

    def _clean_uncommitted(self) -> None:
        """After a crash: drop chunk files past the last commit and segments no commit recorded."""
        first, last = self._state["open_first_chunk"], self._state["chunks"]
        for f in (self.dir / CHUNKS).glob("*.npy"):
            n = int(f.name.split(".")[0])
            if not first <= n < last:
                f.unlink()
        sealed = set(self._state["sealed"])
        for seg in (self.dir / NEW_SEGMENTS).iterdir():
            if seg.name not in sealed:
                shutil.rmtree(seg)

    # ------------------------------------------------------------------------------------ rows

    def _live_lookup(self, keys: list[str]) -> dict[str, tuple[int, sqlite3.Connection, int]]:
        """Live rows with these ids (:func:`semsearch.ids.id_key` texts) in the base and in this
        operation's sealed segments: ``{key: (iid, connection, id_is_int)}``."""
        dead = set(self.base.tombstones.tolist()) if self.base else set()
        dead.update(r[0] for r in self.db.execute("SELECT iid FROM tombstones"))
        sources: list[sqlite3.Connection] = []
        if self.base is not None:
            sources += [self.base.conn(ref) for ref in self.base.segments if ref.name not in self._merged_away]
        sources += [self._sealed_conn(name) for name in self._state["sealed"]]
        found: dict[str, tuple[int, sqlite3.Connection, int]] = {}
        for conn in sources:
            for part in _chunked(keys):
                marks = ",".join("?" * len(part))
                sql = f"SELECT ext_id, iid, id_is_int FROM docs WHERE ext_id IN ({marks})"
                for key, iid, kind in conn.execute(sql, list(part)):
                    if iid not in dead:
                        found[key] = (iid, conn, int(kind))
        return found

    @property
    def _merged_away(self) -> set[str]:
        return set(self._state["merged_away"])

    def _sealed_conn(self, name: str) -> sqlite3.Connection:
        if name not in self._sealed_conns:
            self._sealed_conns[name] = connect(self.dir / NEW_SEGMENTS / name / DOCS_DB, readonly=True)
        return self._sealed_conns[name]

    def _tombstone(self, rows: list[tuple[int, sqlite3.Connection]]) -> int:
        """Record tombstones for live rows of existing segments; returns the sum of their row hashes."""
        total = 0
        for iid, conn in rows:
            ext_id, text, metadata = conn.execute(
                "SELECT ext_id, text, metadata FROM docs WHERE iid = ?", (iid,)
            ).fetchone()
            total += row_hash(ext_id, text, metadata)
        self.db.executemany("INSERT OR IGNORE INTO tombstones(iid) VALUES (?)", [(iid,) for iid, _ in rows])
        return total

    def add_chunk(
        self,
        records: Sequence[Record],
        vectors: np.ndarray,
        rejects: Sequence[Any],
        consumed: int,
        on_duplicate: OnDuplicate,
    ) -> None:
        """Commit one chunk: its rows and vectors, its rejects, upsert tombstones and ``consumed``
        input items, atomically (the unit ``--resume`` restarts from)."""
        next_iid, chunk_no = int(self._state["next_iid"]), int(self._state["chunks"])
        iids = np.arange(next_iid, next_iid + len(records), dtype=np.int64)
        if len(records):
            save_npy_atomic(self.dir / CHUNKS / f"{chunk_no:06d}.vec.npy", np.asarray(vectors, dtype=np.float32))
            save_npy_atomic(self.dir / CHUNKS / f"{chunk_no:06d}.ids.npy", iids)
        values = [_row_values(int(i), r) for i, r in zip(iids.tolist(), records, strict=True)]
        rejects = list(rejects)
        with self.db:
            existing = self._live_lookup([v[1] for v in values])
            upserted: dict[str, tuple[int, sqlite3.Connection]] = {}
            spare = next_iid + len(records)  # numbers no row will get: automatic ids when a row's own is taken
            for v, rec in zip(values, records, strict=True):
                key, kind = v[1], v[2]
                if kind == ID_AUTO:
                    spare = self._insert_auto(v, key in existing, spare)
                    continue
                if key in existing and key not in upserted:
                    iid, conn, prev_kind = existing[key]
                    prev = conn.execute("SELECT source FROM docs WHERE iid = ?", (iid,)).fetchone()[0]
                    reason = _conflict(key, kind, prev_kind, prev, on_duplicate, rec.source, "already in the index")
                    if reason:
                        rejects.append(_reject(rec, reason))
                        continue
                    upserted[key] = (iid, conn)
                reason = self._insert_open(v, rec, on_duplicate)
                if reason:
                    rejects.append(_reject(rec, reason))
            tomb_sum = hex_sum(self._state["tomb_sum"]) + self._tombstone(list(upserted.values()))
            self.db.executemany(
                "INSERT INTO rejects(source, line, reason, raw) VALUES (?, ?, ?, ?)",
                [(r.source, r.line, r.reason, r.raw) for r in rejects],
            )
            self._set_state(
                next_iid=spare,
                chunks=chunk_no + (1 if len(records) else 0),
                consumed=self.consumed + consumed,
                rejects=self.rejects + len(rejects),
                tomb_sum=sum_hex(tomb_sum),
            )
        if self.open_rows() >= self.segment_rows * self.n_shards:
            self.seal()

    @property
    def first_iid(self) -> int:
        """The internal id this operation's first row gets (rows get consecutive ids in input order,
        rejected ones included), so an automatic id can be known before the row is written."""
        return self.base.manifest.next_iid if self.base is not None else 0

    def _insert_auto(self, values: tuple[Any, ...], taken: bool, spare: int) -> int:
        """Insert a row given without an id: its automatic id is its internal id unless a live row has
        that id (a user's integer id), then the first spare number no live row has. Returns the next
        spare number (internal ids continue after it, so an automatic id is never given twice)."""
        if not taken:
            try:
                self.db.execute(_INSERT, values)
                return spare
            except sqlite3.IntegrityError:  # an earlier row of this operation has that id
                pass
        while self.db.execute("SELECT 1 FROM docs WHERE ext_id = ?", (str(spare),)).fetchone() or self._live_lookup(
            [str(spare)]
        ):
            spare += 1
        self.db.execute(_INSERT, (values[0], str(spare), *values[2:]))
        return spare + 1

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
                reason = _conflict(values[1], values[2], int(prev[1]), prev[0], on_duplicate, rec.source, None)
            except DuplicateIdError as dup:
                raise dup from e
            if reason:
                return reason
            self.db.execute("DELETE FROM docs WHERE ext_id = ?", (values[1],))
            self.db.execute(_INSERT, values)
            return None

    def open_rows(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM docs").fetchone()[0])

    def reject_rows(self, limit: int | None = None) -> list[tuple[str, int, str, str | None]]:
        sql = "SELECT source, line, reason, raw FROM rejects ORDER BY n" + (f" LIMIT {int(limit)}" if limit else "")
        return list(self.db.execute(sql))

    # ------------------------------------------------------------------------------------ segments

    def seal(self) -> list[str]:
        """Turn the open segment's committed rows into immutable segments, one per shard that has
        open rows (one when unsharded); returns their names (none when nothing is open)."""
        if self.open_rows() == 0:
            return []
        first, last = int(self._state["open_first_chunk"]), int(self._state["chunks"])
        live = np.fromiter((r[0] for r in self.db.execute("SELECT iid FROM docs ORDER BY iid")), dtype=np.int64)
        dim = int(self.encoder_meta["dimension"])
        gathered = np.lib.format.open_memmap(
            self.dir / "gather.npy", mode="w+", dtype=np.float32, shape=(len(live), dim)
        )
        row = 0
        for n in range(first, last):
            ids = np.load(self.dir / CHUNKS / f"{n:06d}.ids.npy")
            keep = np.isin(ids, live, assume_unique=True)
            if keep.any():
                vecs = np.load(self.dir / CHUNKS / f"{n:06d}.vec.npy", mmap_mode="r")
                gathered[row : row + int(keep.sum())] = vecs[keep]
                row += int(keep.sum())
        if row != len(live):
            raise InvalidInputError(f"internal: assembled {row} vectors for {len(live)} rows")
        staging_db = str(self.dir / STAGING_DB)
        origin = {"kind": self.op.split("-")[0], "operation": self.op}
        names: list[str] = []
        if self.shards is None:
            groups: list[tuple[int | None, np.ndarray | None]] = [(None, None)]
        else:  # one segment per shard that has open rows (rows routed by the hash of their user id)
            shard = np.fromiter(
                (shard_of(e, self.n_shards) for (e,) in self.db.execute("SELECT ext_id FROM docs ORDER BY iid")),
                dtype=np.int64,
                count=len(live),
            )
            groups = [(int(s), shard == s) for s in np.unique(shard).tolist()]
        for s, mask in groups:
            picked = live if mask is None else live[mask]
            name = new_segment_name()

            def fill(conn: sqlite3.Connection, picked: np.ndarray | None = None if mask is None else picked) -> None:
                conn.execute("ATTACH DATABASE ? AS staged", (staging_db,))
                where = ""
                if picked is not None:
                    conn.execute("CREATE TEMP TABLE pick(iid INTEGER PRIMARY KEY)")
                    conn.executemany("INSERT INTO temp.pick VALUES (?)", [(int(i),) for i in picked])
                    where = "WHERE iid IN (SELECT iid FROM temp.pick) "
                conn.execute(f"INSERT INTO docs({COLUMNS}) SELECT {COLUMNS} FROM staged.docs {where}ORDER BY iid")

            vectors = gathered if mask is None else gathered[mask]
            self._write_segment(name, picked, vectors, fill, origin if s is None else {**origin, "shard": s})
            names.append(name)
        del gathered
        (self.dir / "gather.npy").unlink()
        with self.db:
            self.db.execute("DELETE FROM docs")
            self._set_state(sealed=[*self._state["sealed"], *names], open_first_chunk=last)
        self._clean_uncommitted()
        return names

    def _write_segment(
        self, name: str, ids: np.ndarray, vectors: np.ndarray, fill: Any, origin: dict[str, Any]
    ) -> None:
        write_segment(
            self.dir / NEW_SEGMENTS,
            name,
            ids,
            vectors,
            fill,
            index_type=self.index_request["type"],
            index_params=self.index_request["params"],
            model_fingerprint=self.encoder_meta["fingerprint"],
            origin=origin,
        )

    def merge(self, names: Sequence[str]) -> str:
        """Rewrite the live rows of these base segments into one new segment (drops their tombstones)."""
        if self.base is None:
            raise InvalidInputError("nothing to merge: the index is empty")
        refs = {r.name: r for r in self.base.segments}
        sources = [refs[n] for n in names]
        shards = {self.base_shard(n) for n in names}
        if len(shards) > 1:
            raise InvalidInputError(f"internal: a merge across shards {sorted(shards)}; merges stay within a shard")
        dead = self.base.tombstones
        live_parts = [ref_ids[~np.isin(ref_ids, dead)] for ref_ids in (_segment_ids(r) for r in sources)]
        ids = np.sort(np.concatenate(live_parts)) if live_parts else np.zeros(0, np.int64)
        if len(ids) == 0:  # every row deleted: the segments simply go away
            with self.db:
                self._set_state(merged_away=[*self._state["merged_away"], *names])
            return ""
        dim = int(self.encoder_meta["dimension"])
        gathered = np.lib.format.open_memmap(
            self.dir / "gather.npy", mode="w+", dtype=np.float32, shape=(len(ids), dim)
        )
        for ref, live_ids in zip(sources, live_parts, strict=True):
            seg_ids = _segment_ids(ref)
            vecs = np.load(ref.directory / "vectors.npy", mmap_mode="r")
            rows = np.searchsorted(seg_ids, live_ids)
            gathered[np.searchsorted(ids, live_ids)] = vecs[rows]
        name = new_segment_name()

        def fill(conn: sqlite3.Connection) -> None:
            conn.execute("CREATE TEMP TABLE dead(iid INTEGER PRIMARY KEY)")
            conn.executemany("INSERT INTO temp.dead VALUES (?)", [(int(i),) for i in dead])
            for ref in sources:
                conn.execute("ATTACH DATABASE ? AS src", (f"file:{ref.directory / DOCS_DB}?mode=ro",))
                conn.execute(
                    f"INSERT INTO docs({COLUMNS}) SELECT {COLUMNS} FROM src.docs "
                    "WHERE iid NOT IN (SELECT iid FROM temp.dead) ORDER BY iid"
                )
                conn.commit()
                conn.execute("DETACH DATABASE src")

        self._write_segment(
            name,
            ids,
            gathered,
            fill,
            {"kind": "merge", "merged": list(names)}
            if self.shards is None
            else {"kind": "merge", "merged": list(names), "shard": shards.pop()},
        )
        del gathered
        (self.dir / "gather.npy").unlink()
        with self.db:
            self._set_state(sealed=[*self._state["sealed"], name], merged_away=[*self._state["merged_away"], *names])
        return name

    def base_shard(self, name: str) -> int:
        """The shard of one of the base version's segments."""
        assert self.base is not None
        for entry in self.base.manifest.segments:
            if entry["name"] == name:
                return segment_shard(entry)
        raise InvalidInputError(f"internal: {name} is not a segment of the base version")

    def delete(self, ext_ids: Sequence[int | str]) -> list[int | str]:
        """Tombstone the live rows with these ids (matched by :func:`semsearch.ids.id_key`, exactly);
        returns the ids not found."""
        with self.db:
            found = self._live_lookup(list(dict.fromkeys(id_key(i) for i in ext_ids)))
            total = hex_sum(self._state["tomb_sum"]) + self._tombstone([(iid, conn) for iid, conn, _ in found.values()])
            self._set_state(tomb_sum=sum_hex(total))
        return [i for i in ext_ids if id_key(i) not in found]

    def upgrade_legacy(self, version_dir: Path, manifest: Manifest) -> str:
        """Stage a format-1 version's files as this operation's one segment (hard links)."""
        name = new_segment_name()
        link_legacy_segment(version_dir, manifest, self.dir / NEW_SEGMENTS, name)
        with self.db:
            self._set_state(sealed=[name], next_iid=self._legacy_next_iid(version_dir))
        return name

    @staticmethod
    def _legacy_next_iid(version_dir: Path) -> int:
        ids = np.load(version_dir / "ids.npy", mmap_mode="r")
        return int(ids[-1]) + 1 if len(ids) else 0

    # ------------------------------------------------------------------------------------ commit

    def commit(
        self,
        build: dict[str, Any],
        parent: Manifest | None = None,
        corpus_base: str | None = None,
        *,
        allow_empty: bool = False,
    ) -> Manifest:
        """Seal what is open, write the version manifest (last) and publish; returns the manifest.

        A version without live rows is refused unless ``allow_empty``: the service's writer publishes one
        when its writes delete every document (the flush must still publish, or the deletes would stay in
        memory and in the WAL for good), and a merge of such a version keeps it empty."""
        self.seal()
        sealed = list(self._state["sealed"])
        merged_away = self._merged_away
        entries: list[tuple[str, Path, SegmentManifest]] = []
        if self.base is not None:
            entries += [(r.name, r.directory, r.meta) for r in self.base.segments if r.name not in merged_away]
        new_dirs = [self.dir / NEW_SEGMENTS / n for n in sealed]
        entries += [(d.name, d, SegmentManifest.read(d)) for d in new_dirs]
        op_tombs = np.fromiter((r[0] for r in self.db.execute("SELECT iid FROM tombstones")), dtype=np.int64)
        base_tombs = self.base.tombstones if self.base is not None else np.zeros(0, np.int64)
        tombs = np.union1d(base_tombs, op_tombs)
        if merged_away and self.base is not None:  # their tombstones went away with them
            gone = [_segment_ids(r) for r in self.base.segments if r.name in merged_away]
            tombs = tombs[~np.isin(tombs, np.concatenate(gone))]
        count = sum(m.count for _, _, m in entries) - len(tombs)
        if count < 0 or (count == 0 and not allow_empty):
            raise InvalidInputError("no sentences to index: every row was rejected, deleted or the input is empty")
        base_sum = hex_sum(
            corpus_base if corpus_base is not None else (self.base.manifest.corpus_checksum if self.base else "")
        )
        new_rows = sum(hex_sum(m.corpus_sum) for n, _, m in entries if n in sealed and m.origin.get("kind") != "merge")
        corpus = base_sum + new_rows - hex_sum(self._state["tomb_sum"])
        version_dir = self.dir / NEW_VERSION
        shutil.rmtree(version_dir, ignore_errors=True)
        version_dir.mkdir()
        files: dict[str, str] = {}
        if len(tombs):
            save_npy_atomic(version_dir / TOMBSTONES_FILE, np.asarray(tombs, dtype=np.int64))
            files[TOMBSTONES_FILE] = file_sha256(version_dir / TOMBSTONES_FILE)
        requested = self.index_request["type"]
        kind = auto_index_type(count) if requested == "auto" else requested
        meta = self.encoder_meta
        manifest = Manifest(
            model=meta["model"],
            model_fingerprint=meta["fingerprint"],
            pooling=meta["pooling"],
            backend=meta["backend"],
            max_seq_length=meta["max_seq_length"],
            dimension=int(meta["dimension"]),
            index_type=kind,
            index_params=resolve_params(kind, count, int(meta["dimension"]), self.index_request["params"]),
            count=count,
            corpus_checksum=sum_hex(corpus),
            files=files,
            version=self.root.next_version(),
            parent_version=parent.version if parent else (self.base.manifest.version if self.base else None),
            build=build,
            segments=[
                {"name": n, "count": m.count, "index_type": m.index_type, "sha256": file_sha256(d / "segment.json")}
                | ({} if self.shards is None else {"shard": self._entry_shard(n, m)})
                for n, d, m in entries
            ],
            tombstones=len(tombs),
            next_iid=int(self._state["next_iid"]),
            index_request=self.index_request,
            shards=self.shards,
            **{key: meta[key] for key in Manifest.OPTIONAL if meta.get(key)},  # chunking, prompts: kept by every change
        )
        manifest.write(version_dir)
        self.close()
        self.root.publish(version_dir, [d for d in new_dirs])
        shutil.rmtree(self.dir, ignore_errors=True)
        self.root.remove_dead_staging()
        self.root.collect_garbage()
        return manifest

    def _entry_shard(self, name: str, meta: SegmentManifest) -> int:
        if "shard" in meta.origin:
            return int(meta.origin["shard"])
        return self.base_shard(name)

    def close(self) -> None:
        for c in self._sealed_conns.values():
            c.close()
        self._sealed_conns.clear()
        with contextlib.suppress(sqlite3.Error):
            self.db.close()
        if self.base is not None:
            self.base.close()

    def abort(self) -> None:
        """Throw the operation away (its staging directory goes; the index is untouched)."""
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.root.staging_dir.rmdir()


def _real_id(key: str, kind: int) -> int | str:
    return key if kind == ID_STR else int(key)


def _conflict(
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


def _reject(rec: Record, reason: str) -> Reject:
    """A row the writer refuses, reported like a reader's reject (``source`` is ``file:line``)."""
    name, _, line = (rec.source or "").rpartition(":")
    if not line.isdigit():
        name, line = rec.source or "", "0"
    return Reject(name, int(line), reason, rec.text[:200])


def _segment_ids(ref: SegmentRef) -> np.ndarray:
    return np.asarray(np.load(ref.directory / "ids.npy", mmap_mode="r"))


@contextlib.contextmanager
def aborting(writer: IndexWriter, resumable: bool = False) -> Iterator[None]:
    """Any error in an operation removes its staging (the index is untouched), so an error never leaves
    ``staging/`` behind. Ctrl-C keeps a ``resumable`` one's (an interrupted build/add continues with
    ``--resume``)."""
    try:
        yield
    except Exception:
        writer.abort()
        raise
    except BaseException:
        if not resumable:
            writer.abort()
        raise


@contextlib.contextmanager
def disk_errors(root: IndexRoot, writer: IndexWriter | None = None) -> Iterator[None]:
    """Turn "no space left" anywhere in a write into one clear error, after removing the staging."""
    try:
        yield
    except SemsearchError:
        raise
    except (OSError, sqlite3.OperationalError) as e:
        if not is_disk_full(e):
            raise
        if writer is not None:
            writer.abort()
        free = shutil.disk_usage(root.path).free if root.path.exists() else 0
        raise DiskFullError(
            f"the disk holding {root.path} is full ({free // (1 << 20)} MiB free): {e}; the unfinished "
            "work was removed and the current version is untouched; free some space and run the command again",
            {"path": str(root.path), "free_bytes": free},
        ) from e


def legacy_base_dir(root: IndexRoot) -> Path | None:
    """The current version's directory if it is format 1 (needs :func:`upgrade` before writing)."""
    if root.current_version() is None:
        return None
    directory = root.resolve()
    return directory if Manifest.read(directory).legacy else None


def upgrade(root: IndexRoot) -> Manifest | None:
    """Convert the current format-1 version into a format-2 version of one segment (hard links,
    no copy; the old version stays readable). None if it already is format 2."""
    version_dir = legacy_base_dir(root)
    if version_dir is None:
        return None
    old = Manifest.read(version_dir)
    writer = IndexWriter(
        root,
        f"upgrade-{old.version}",
        old.encoder_meta(),
        {"type": old.index_type, "params": {}},
    )
    with disk_errors(root, writer):
        writer.upgrade_legacy(version_dir, old)
        return writer.commit({"kind": "upgrade", "from_format": 1}, parent=old, corpus_base="0")


@dataclass(frozen=True)
class MergePolicy:
    """When ``add``/``delete`` merge segments (``--no-merge`` skips it; ``compact`` packs all, :meth:`pack`).

    * **Tiers by size**: a segment's tier is ``floor(log10(live rows))``; when a tier holds
      ``merge_factor`` segments or more, they are merged into one (which lands a tier higher), so a
      stream of small adds costs O(log n) rewrites per row, as Lucene's tiered policy does.
    * **Deletes**: a segment whose tombstoned share exceeds ``max_deleted`` is rewritten without
      them, so tombstones never cost more than that share of the scan.
    * **A cap**: no merge makes a segment of more than ``max_segment_rows`` live rows, and a segment of
      half that or more takes part in tier merges no more (Lucene's ``maxMergedSegmentMB``). One
      segment is one ANN graph, and a graph's recall falls with its size (docs/scale.md, the 10M
      ceiling); ``compact`` packs segments up to the cap too (:meth:`pack`).
    """

    merge_factor: int = 8
    max_deleted: float = 0.2
    max_segment_rows: int = 2_000_000

    def __post_init__(self) -> None:
        if self.max_segment_rows < 1:
            raise InvalidInputError(f"max_segment_rows must be >= 1, got {self.max_segment_rows}")

    def plan(self, segments: Sequence[tuple[str, int, int]]) -> list[str]:
        """One group of segment names to merge now, from ``(name, rows, tombstoned rows)`` (empty: none).

        A full tier merges its smallest members up to the cap (with heavily deleted segments that still
        fit); else heavily deleted segments are rewritten (together while they fit). Names keep the
        order of ``segments``."""
        order = {name: i for i, (name, _, _) in enumerate(segments)}
        tiers: dict[int, list[tuple[int, str]]] = {}
        heavy: list[tuple[int, str]] = []
        for name, rows, dead in segments:
            live = rows - dead
            if rows and dead / rows > self.max_deleted:
                heavy.append((live, name))
            if live < self.max_segment_rows / 2:
                tiers.setdefault(int(np.log10(max(live, 1))), []).append((live, name))
        group: list[tuple[int, str]] = []
        for tier in sorted(tiers):
            if len(tiers[tier]) >= self.merge_factor:
                group = self._fill(sorted(tiers[tier]), 0)
                if len(group) >= 2:
                    group += self._fill([h for h in heavy if h not in group], sum(live for live, _ in group), 0)
                    break
                group = []
        if not group:
            group = self._fill(heavy, 0)
        return sorted((name for _, name in group), key=order.__getitem__)

    def _fill(self, candidates: Sequence[tuple[int, str]], used: int, first_free: int = 1) -> list[tuple[int, str]]:
        """Candidates in order while their live rows fit under the cap with ``used`` taken; the first
        ``first_free`` of them are taken in any case (a lone segment always fits: it can only shrink)."""
        out: list[tuple[int, str]] = []
        for live, name in candidates:
            if len(out) >= first_free and used + live > self.max_segment_rows:
                break
            out.append((live, name))
            used += live
        return out

    def pack(self, segments: Sequence[tuple[str, int, int]]) -> list[list[str]]:
        """``compact``'s groups: consecutive segments packed up to the cap, each group rewritten into one
        segment; a group of one segment without tombstones is already compact and is left out."""
        groups: list[list[tuple[str, int, int]]] = []
        used = 0
        for name, rows, dead in segments:
            live = rows - dead
            if groups and used + live <= self.max_segment_rows:
                groups[-1].append((name, rows, dead))
                used += live
            else:
                groups.append([(name, rows, dead)])
                used = live
        return [[n for n, _, _ in g] for g in groups if len(g) > 1 or g[0][2] > 0]
