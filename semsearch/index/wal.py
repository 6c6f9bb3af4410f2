"""The write-ahead log of a writable index (``DIR/wal/``): what a service acknowledged but has not flushed.

Part of the index format. The log is a sequence of files ``wal/<first seq, 20 digits>.log``; each holds
records ``[magic 4 bytes][payload length u32][crc32 of payload u32][payload]`` (little endian). A payload
is one acknowledged request: a JSON header (``seq``, ``op`` ``upsert`` with ``ids``/``texts``/``metadata``,
or ``delete`` with ``ids``) followed by the upsert's float32 vectors, so replay needs no model.
Sequence numbers increase by one per record across files.

``wal/flushed.json`` (written atomically after a flushed version is published) holds the last sequence
number whose effect is in a published version; recovery replays only the records after it (the
published manifest's ``build.wal_seq`` records the same, for a crash between the two writes).

**Recovery rules.** A bad record (short, wrong magic, wrong checksum) at the end of the last file with
nothing valid after it is a torn write from a crash: it was never acknowledged (acknowledgement waits for
its fsync), so it is dropped and the file truncated there. A bad record anywhere else holds records that
may have been acknowledged after it: start-up stops with :class:`WalCorruptError` naming the file and
the offset, rather than silently losing them.

Appends are group commits: :meth:`WriteAheadLog.append` writes every record it is given and then
fsyncs once; a failed append (disk full) is cut off again, so the file never holds a partial record
followed by good ones.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import struct
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from semsearch.errors import CorruptIndexError, SemsearchError
from semsearch.index.format import fsync_dir, write_json_atomic
from semsearch.types import UserId

log = logging.getLogger(__name__)

WAL_DIR = "wal"
FLUSHED_FILE = "flushed.json"
MAGIC = b"SSW1"
_HEADER = struct.Struct("<4sII")  # magic, payload length, crc32
_JSON_LEN = struct.Struct("<I")
MAX_RECORD_BYTES = 1 << 30  # a length above this is garbage, not a record

WalOp = Literal["upsert", "delete"]


class WalCorruptError(CorruptIndexError):
    """A record in the middle of the log is damaged: acknowledged writes after it would be lost."""


class WalUnavailableError(SemsearchError):
    """The log cannot be written (read-only directory, disk full, I/O error)."""

    code = "wal_unavailable"


@dataclass
class WalRecord:
    """One acknowledged request."""

    seq: int
    op: WalOp
    ids: list[UserId]
    texts: list[str] = field(default_factory=list)
    metadata: list[dict[str, Any]] = field(default_factory=list)
    vectors: np.ndarray | None = None

    def encode(self) -> bytes:
        head: dict[str, Any] = {"seq": self.seq, "op": self.op, "ids": self.ids}
        blob = b""
        if self.op == "upsert":
            vecs = np.ascontiguousarray(self.vectors, dtype="<f4")
            head |= {"texts": self.texts, "metadata": self.metadata, "shape": list(vecs.shape)}
            blob = vecs.tobytes()
        header = json.dumps(head, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        payload = _JSON_LEN.pack(len(header)) + header + blob
        return _HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload

    @classmethod
    def decode(cls, payload: bytes) -> WalRecord:
        (n,) = _JSON_LEN.unpack_from(payload)
        head = json.loads(payload[_JSON_LEN.size : _JSON_LEN.size + n].decode("utf-8"))
        vectors = None
        if head["op"] == "upsert":
            shape = tuple(head["shape"])
            vectors = np.frombuffer(payload[_JSON_LEN.size + n :], dtype="<f4").reshape(shape).astype(np.float32)
        return cls(
            int(head["seq"]),
            head["op"],
            list(head["ids"]),
            list(head.get("texts", [])),
            list(head.get("metadata", [])),
            vectors,
        )


def _file_name(first_seq: int) -> str:
    return f"{first_seq:020d}.log"


def _scan(path: Path, last_file: bool) -> tuple[list[WalRecord], int | None]:
    """The records of one file and, for a torn tail, the offset to cut it at (None when clean)."""
    data = path.read_bytes()
    records: list[WalRecord] = []
    offset = 0
    while offset < len(data):
        record, end = _record_at(data, offset)
        if record is None:
            if last_file and not _valid_record_after(data, offset + 1):
                log.warning(
                    "write-ahead log %s: dropping a torn last record at byte %d (%d bytes; a crash during its "
                    "write, never acknowledged)",
                    path,
                    offset,
                    len(data) - offset,
                )
                return records, offset
            raise WalCorruptError(
                f"write-ahead log {path} is corrupt at byte {offset} (of {len(data)}): the record there fails its "
                "checksum and valid records follow it, so acknowledged writes would be lost; refusing to start "
                "(restore the file, or move it away to accept losing the writes it holds)"
            )
        records.append(record)
        offset = end
    return records, None


def _record_at(data: bytes, offset: int) -> tuple[WalRecord | None, int]:
    if len(data) - offset < _HEADER.size:
        return None, offset
    magic, length, crc = _HEADER.unpack_from(data, offset)
    start = offset + _HEADER.size
    if magic != MAGIC or length > MAX_RECORD_BYTES or start + length > len(data):
        return None, offset
    payload = data[start : start + length]
    if zlib.crc32(payload) != crc:
        return None, offset
    try:
        return WalRecord.decode(payload), start + length
    except (ValueError, KeyError, UnicodeDecodeError, struct.error):
        return None, offset


def _valid_record_after(data: bytes, start: int) -> bool:
    pos = data.find(MAGIC, start)
    while pos >= 0:
        if _record_at(data, pos)[0] is not None:
            return True
        pos = data.find(MAGIC, pos + 1)
    return False


class WriteAheadLog:
    """The log of one index root, opened by its single writer (the holder of the index lock)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._fh: BinaryIO | None = None
        self._path: Path | None = None
        self.next_seq = 1
        self.syncs = 0  # fsyncs done by appends (group commit: one per append call)
        self.broken: str | None = None  # why appends are refused (a failed append could not be cut off)

    # ------------------------------------------------------------------ recovery

    def flushed_seq(self) -> int:
        path = self.directory / FLUSHED_FILE
        if not path.is_file():
            return 0
        try:
            return int(json.loads(path.read_text())["seq"])
        except (ValueError, KeyError, TypeError) as e:
            raise CorruptIndexError(f"{path} is not a valid WAL flush marker: {e}") from e

    def files(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.iterdir() if p.suffix == ".log" and p.stem.isdigit())

    def recover(self, flushed: int | None = None) -> list[WalRecord]:
        """Read the log: the records after the flushed sequence number, in order; a torn tail is cut off.
        Then open a fresh file for appends (an error here, e.g. a read-only directory, is a
        :class:`WalUnavailableError`)."""
        flushed = max(self.flushed_seq(), flushed or 0)
        files = self.files()
        out: list[WalRecord] = []
        last_seq = flushed
        for i, path in enumerate(files):
            records, cut = _scan(path, last_file=i == len(files) - 1)
            for r in records:
                if r.seq <= last_seq and r.seq > flushed:
                    raise WalCorruptError(f"write-ahead log {path}: sequence number {r.seq} repeats or goes back")
                last_seq = max(last_seq, r.seq)
                if r.seq > flushed:
                    out.append(r)
            if cut is not None:
                self._cut(path, cut)
        self.next_seq = last_seq + 1
        self._open_new()
        return out

    def _cut(self, path: Path, offset: int) -> None:
        try:
            with path.open("r+b") as fh:
                fh.truncate(offset)
                os.fsync(fh.fileno())
        except OSError as e:
            raise WalUnavailableError(f"cannot truncate the torn tail of {path}: {e}") from e

    def _open_new(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / _file_name(self.next_seq)
            fh = path.open("ab")
            fsync_dir(self.directory)
        except OSError as e:
            raise WalUnavailableError(
                f"the write-ahead log directory {self.directory} is not writable ({e.strerror or e}); "
                "writes need it: fix its permissions or free space, or serve without --writable"
            ) from e
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
        self._fh, self._path = fh, path

    # ------------------------------------------------------------------ appends

    def append(self, records: Sequence[WalRecord]) -> None:
        """Write ``records`` (their ``seq`` already set, consecutive from :attr:`next_seq`) and fsync once.

        On failure nothing of them stays in the log (the file is cut back) and :attr:`next_seq` is
        unchanged; the error is a :class:`WalUnavailableError` (``disk_full`` in its detail when so)."""
        with self._lock:
            if self.broken:
                raise WalUnavailableError(self.broken)
            assert self._fh is not None and self._path is not None
            if records and records[0].seq != self.next_seq:
                raise ValueError(f"internal: WAL append of seq {records[0].seq}, expected {self.next_seq}")
            fh = self._fh
            start = fh.tell()
            try:
                fh.write(b"".join(r.encode() for r in records))
                fh.flush()
                os.fsync(fh.fileno())
            except OSError as e:
                self._undo(start)
                raise WalUnavailableError(
                    f"could not append to the write-ahead log {self._path}: {e.strerror or e}",
                    {"disk_full": getattr(e, "errno", None) in (28, 122), "path": str(self._path)},
                ) from e
            self.syncs += 1
            self.next_seq += len(records)

    def _undo(self, start: int) -> None:
        assert self._fh is not None
        try:
            self._fh.seek(start)
            self._fh.truncate(start)
            os.fsync(self._fh.fileno())
        except OSError as e:  # the partial record stays: refuse more, so it remains a torn *tail*
            self.broken = f"the write-ahead log {self._path} could not be cut back after a failed write ({e}); restart"
            log.error("%s", self.broken)

    def rotate(self) -> None:
        """Start a new file; the older ones hold only records before :attr:`next_seq`."""
        with self._lock:
            self._open_new()

    def mark_flushed(self, seq: int) -> None:
        """Record that records up to ``seq`` are in a published version, then delete the files that hold
        only such records (the current file is kept)."""
        write_json_atomic(self.directory / FLUSHED_FILE, {"seq": seq})
        with self._lock:
            files = self.files()
            for path, following in itertools.pairwise(files):
                if path != self._path and int(following.stem) <= seq + 1:
                    path.unlink(missing_ok=True)
        fsync_dir(self.directory)

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                with contextlib.suppress(OSError):
                    self._fh.close()
                self._fh = None
