"""The index format's vocabulary: every file and directory name, and the primitives that write them.

Format 2 (segments + tombstones)::

    INDEX_ROOT/
      current -> versions/v000007        relative symlink, switched with rename(2): the commit point
      versions/v000007/
        manifest.json                    the version: its segments, tombstone count, model, index type, ...
        tombstones.npy                   deleted internal ids (sorted int64), when there are any
      segments/<segment>/                immutable; shared by reference by every version that lists it
        segment.json                     the segment's own manifest (counts, file sha256s, self checksum)
        index.faiss  vectors.npy  ids.npy  docs.sqlite (docs + docs_fts)
      staging/<operation>/               unfinished builds/adds/merges and their checkpoints:
        build.sqlite  open/<shard>.npy  segments/<segment>/  version/
      rejects/<operation>.jsonl          rows the indexer refused
      .lock                              held by the one writer

Format 1 (one self-contained directory per version, the files of a segment beside manifest.json)
is still read: such a version loads as one segment without tombstones (``indexer upgrade``
converts it). Nothing here imports FAISS or SQLite: this module is the shared ground of
:mod:`semsearch.index.manifest`, :mod:`semsearch.index.layout`, :mod:`semsearch.index.segment` and
:mod:`semsearch.index.writer`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

FORMAT = "semsearch-index"
FORMAT_VERSION = 2
SEGMENT_FORMAT = "semsearch-segment"

CURRENT = "current"
VERSIONS = "versions"
SEGMENTS = "segments"
STAGING = "staging"
REJECTS = "rejects"
LOCK = ".lock"

MANIFEST = "manifest.json"
SEGMENT_MANIFEST = "segment.json"
TOMBSTONES_FILE = "tombstones.npy"
INDEX_FILE = "index.faiss"
VECTORS_FILE = "vectors.npy"
IDS_FILE = "ids.npy"
DOCS_DB = "docs.sqlite"
SEGMENT_FILES = (INDEX_FILE, VECTORS_FILE, IDS_FILE, DOCS_DB)

# inside staging/<operation>/ (semsearch.index.staging): never read by a reader
STAGING_DB = "build.sqlite"  # the open segment's rows, rejects, tombstones, resume state
OPEN_VECTORS = "open"  # the open segment's vectors, one .npy per shard, appended chunk by chunk
NEW_SEGMENTS = "segments"  # segments this operation sealed or merged
NEW_VERSION = "version"  # the version manifest being committed
TRANSIENT = ".transient"  # marks an operation that is never resumed (delete, merge): the next writer removes it


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` through a temporary file in the same directory, fsync, then ``os.replace``.

    A crash leaves either the old file or the new one, never a torn one; a failed write removes
    its temporary file and re-raises.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    write_atomic(path, lambda fh: fh.write(text.encode("utf-8")))


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    write_atomic(path, lambda fh: np.save(fh, array))


def self_checksum(fields: dict[str, Any]) -> str:
    """sha256 over a manifest's own fields (all but ``checksum``), canonical JSON: catches hand edits."""
    body = {k: v for k, v in fields.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


# The corpus checksum of a version is a multiset hash: the sum (mod 2**256) of one sha256 per live
# row over (user id, text, metadata JSON). It does not depend on row order, internal ids or how rows
# are split into segments, so a version reached by any sequence of add/delete/compact has the same
# checksum as a fresh build of the same rows, and each change updates it at the cost of its own rows.
_MOD = 1 << 256


def row_hash(ext_id: str, text: str, metadata_json: str) -> int:
    digest = hashlib.sha256()
    for part in (ext_id, text, metadata_json):
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\x1f")
    return int.from_bytes(digest.digest(), "big")


def rows_sum(rows: Iterable[tuple[str, str, str]]) -> int:
    total = 0
    for ext_id, text, metadata in rows:
        total += row_hash(ext_id, text, metadata)
    return total % _MOD


def sum_hex(value: int) -> str:
    return f"{value % _MOD:064x}"


def hex_sum(text: str) -> int:
    return int(text, 16) if text else 0
