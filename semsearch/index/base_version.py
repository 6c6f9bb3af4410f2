"""The version a write operation starts from (Lucene's ``SegmentInfos`` as read at the start):
its manifest, its segments (name, directory, ``segment.json``) and its tombstones."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from semsearch.errors import InvalidInputError
from semsearch.index.entries import EncoderMeta, IndexRequest, SegmentEntry
from semsearch.index.format import DOCS_DB, IDS_FILE, TOMBSTONES_FILE
from semsearch.index.layout import IndexRoot
from semsearch.index.manifest import Manifest, SegmentManifest
from semsearch.index.store import connect


@dataclass
class SegmentRef:
    """A segment as a version lists it."""

    name: str
    directory: Path
    meta: SegmentManifest

    def ids(self) -> np.ndarray:
        """Its internal ids, ascending (memory-mapped)."""
        return np.asarray(np.load(self.directory / IDS_FILE, mmap_mode="r"))


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
            SegmentRef(e.name, root.segments_dir / e.name, SegmentManifest.read(root.segments_dir / e.name))
            for e in manifest.entries
        ]
        tomb_path = directory / TOMBSTONES_FILE
        tombstones = np.load(tomb_path) if tomb_path.is_file() else np.zeros(0, np.int64)
        return cls(directory, manifest, segments, np.asarray(tombstones, dtype=np.int64))

    @property
    def index_request(self) -> IndexRequest:
        """The index type and parameters its segments are built with (a later write uses the same)."""
        return IndexRequest.of(self.manifest.index_request, default_type=self.manifest.index_type)

    @property
    def encoder(self) -> EncoderMeta:
        return EncoderMeta.recorded(self.manifest)

    def entry(self, name: str) -> SegmentEntry:
        for entry in self.manifest.entries:
            if entry.name == name:
                return entry
        raise InvalidInputError(f"internal: {name} is not a segment of the base version")

    def shard_of_segment(self, name: str) -> int:
        """The shard of one of its segments (0 when unsharded)."""
        return self.entry(name).shard_or_zero

    def conn(self, ref: SegmentRef) -> sqlite3.Connection:
        if ref.name not in self._conns:
            self._conns[ref.name] = connect(ref.directory / DOCS_DB, readonly=True)
        return self._conns[ref.name]

    def close(self) -> None:
        for c in self._conns.values():
            c.close()
        self._conns.clear()
