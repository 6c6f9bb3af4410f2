"""Sealing the open segment (Lucene's flush): its rows become immutable segments, one per shard.

The open segment's vectors are written **once**, chunk by chunk, into ``staging/<op>/open/<shard>.npy``
(:class:`OpenVectors`: an ``.npy`` header then the rows, fsynced before the chunk's transaction
commits; the ``open_vectors`` table records which rows each file holds, so ``--resume`` cuts a file
back to its committed rows). Sealing writes the header's final shape in place and hands the file to
:func:`~semsearch.index.segment.write_segment`, which links it into the segment as ``vectors.npy``
(no copy); only rows replaced later in the same operation (an id given twice) make it copy the
others into a new file first.
"""

from __future__ import annotations

import io
import os
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from semsearch.index.entries import EncoderMeta, IndexRequest
from semsearch.index.format import OPEN_VECTORS, STAGING_DB, fsync_dir
from semsearch.index.pending import PendingRows
from semsearch.index.segment import write_segment
from semsearch.index.sharding import shard_of
from semsearch.index.staging import StagingState
from semsearch.index.store import COLUMNS


def new_segment_name() -> str:
    """Unique and time-ordered: operations never collide, even an interrupted one resumed later.
    (:data:`semsearch.index.layout.SEGMENT_NAME` matches exactly these names: garbage collection touches
    nothing else under ``segments/``.)"""
    return f"s{time.strftime('%Y%m%d%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"


def _npy_header(rows: int, dim: int) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)})
    return out.getvalue()


class OpenVectors:
    """The open segment's vector files, one per shard, appended once per chunk."""

    def __init__(self, directory: Path, dim: int, db: sqlite3.Connection) -> None:
        self.dir = directory
        self.dim = dim
        self.db = db
        self.header = len(_npy_header(0, dim))  # numpy pads it: the same length for any row count
        self.rows: dict[int, int] = {
            int(s): int(n) for s, n in db.execute("SELECT shard, COUNT(*) FROM open_vectors GROUP BY shard")
        }
        self._pending: dict[int, int] = {}
        for path in directory.glob("*.npy"):  # back to what the last commit recorded (--resume)
            shard = int(path.stem) if path.stem.isdigit() else -1
            if self.rows.get(shard, 0) == 0:
                path.unlink()  # a sealed segment may share its inode: never cut it, only unlink
            else:
                os.truncate(path, self._size(self.rows[shard]))

    def _size(self, rows: int) -> int:
        return self.header + rows * self.dim * 4

    def path(self, shard: int) -> Path:
        return self.dir / f"{shard}.npy"

    def append(self, iids: np.ndarray, shards: np.ndarray, vectors: np.ndarray) -> None:
        """Write these rows' vectors (fsynced) and record them (inside the caller's transaction)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        for shard in np.unique(shards).tolist():
            self._write(int(shard), vectors[shards == shard])
        self.db.executemany(
            "INSERT INTO open_vectors(iid, shard) VALUES (?, ?)", zip(iids.tolist(), shards.tolist(), strict=True)
        )

    def _write(self, shard: int, vectors: np.ndarray) -> None:
        path, have = self.path(shard), self.rows.get(shard, 0)
        if have == 0:
            path.unlink(missing_ok=True)
            path.write_bytes(_npy_header(0, self.dim))
            fsync_dir(self.dir)
        with path.open("r+b") as fh:
            fh.truncate(self._size(have))  # a chunk that failed to commit left its rows behind
            fh.seek(0, os.SEEK_END)
            fh.write(vectors.tobytes())
            fh.flush()
            os.fsync(fh.fileno())
        self._pending[shard] = have + len(vectors)

    def committed(self) -> None:
        self.rows.update(self._pending)
        self._pending = {}

    def rolled_back(self) -> None:
        self._pending = {}

    def finished(self, shard: int) -> tuple[Path, np.ndarray]:
        """The shard's file as a complete ``.npy`` of its live rows (ascending iids), and those iids."""
        held = np.fromiter(
            (r[0] for r in self.db.execute("SELECT iid FROM open_vectors WHERE shard = ? ORDER BY iid", (shard,))),
            dtype=np.int64,
        )
        sql = "SELECT v.iid FROM open_vectors v JOIN docs d ON d.iid = v.iid WHERE v.shard = ? ORDER BY v.iid"
        live = np.fromiter((r[0] for r in self.db.execute(sql, (shard,))), dtype=np.int64)
        path = self.path(shard)
        if len(live) == len(held):
            with path.open("r+b") as fh:
                fh.write(_npy_header(len(held), self.dim))
            return path, live
        # rows replaced later in this operation: the live ones are copied into a file of their own
        rows = np.memmap(path, dtype=np.float32, mode="r", offset=self.header, shape=(len(held), self.dim))
        out_path = self.dir / f"{shard}.live.npy"
        out = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.float32, shape=(len(live), self.dim))
        out[:] = rows[np.isin(held, live, assume_unique=True)]
        out.flush()
        del out, rows
        return out_path, live

    def reset(self) -> None:
        """After the seal committed: the files belong to the sealed segments now; unlink them here."""
        for path in self.dir.glob("*.npy"):
            path.unlink()
        self.rows = {}
        self._pending = {}


class SegmentFlusher:
    """Routes each row's vector to its shard's open file and seals the open segment into segments."""

    def __init__(
        self,
        staging: StagingState,
        pending: PendingRows,
        encoder: EncoderMeta,
        request: IndexRequest,
        n_shards: int | None,
        origin: dict[str, Any],
    ) -> None:
        self.staging = staging
        self.pending = pending
        self.encoder = encoder
        self.request = request
        self.n_shards = n_shards  # None: unsharded
        self.origin = origin
        self.vectors = OpenVectors(staging.dir / OPEN_VECTORS, encoder.dimension, staging.db)

    def append(self, rows: list[tuple[int, str]], first_iid: int, vectors: np.ndarray) -> None:
        """The vectors of the rows :meth:`PendingRows.add` inserted (``vectors``: one per record of the
        chunk, whose first internal id is ``first_iid``), inside the chunk's transaction."""
        if not rows:
            return
        iids = np.fromiter((iid for iid, _ in rows), dtype=np.int64, count=len(rows))
        if self.n_shards is None:
            shards = np.zeros(len(rows), np.int64)
        else:  # rows routed by the hash of their user id
            shards = np.fromiter((shard_of(key, self.n_shards) for _, key in rows), dtype=np.int64, count=len(rows))
        self.vectors.append(iids, shards, np.asarray(vectors)[iids - first_iid])

    def seal(self) -> list[str]:
        """Turn the open segment's committed rows into immutable segments, one per shard that has
        open rows (one when unsharded); returns their names (none when nothing is open)."""
        if self.pending.count() == 0:
            return []
        sql = "SELECT DISTINCT v.shard FROM open_vectors v JOIN docs d ON d.iid = v.iid ORDER BY v.shard"
        names: list[str] = []
        for (shard,) in list(self.staging.db.execute(sql)):
            path, iids = self.vectors.finished(int(shard))
            name = new_segment_name()
            origin = self.origin if self.n_shards is None else {**self.origin, "shard": int(shard)}
            write_segment(
                self.staging.segments_dir,
                name,
                iids,
                path,
                self._fill(int(shard)),
                index_type=self.request.type,
                index_params=self.request.params,
                model_fingerprint=self.encoder.fingerprint,
                origin=origin,
            )
            names.append(name)
        with self.staging.db:
            self.staging.db.execute("DELETE FROM docs")
            self.staging.db.execute("DELETE FROM open_vectors")
            self.staging.append("sealed", names)
        self.vectors.reset()
        self.staging.clean_uncommitted()
        return names

    def _fill(self, shard: int) -> Any:
        staging_db = str(self.staging.dir / STAGING_DB)

        def fill(conn: sqlite3.Connection) -> None:
            conn.execute("ATTACH DATABASE ? AS staged", (staging_db,))
            conn.execute(
                f"INSERT INTO docs({COLUMNS}) SELECT {COLUMNS} FROM staged.docs "
                "WHERE iid IN (SELECT iid FROM staged.open_vectors WHERE shard = ?) ORDER BY iid",
                (shard,),
            )

        return fill
