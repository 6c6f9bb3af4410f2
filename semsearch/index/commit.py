"""Committing a write operation (Lucene's commit of ``SegmentInfos``): the new version's segment list,
tombstones, counts and corpus checksum, its ``manifest.json`` written last, then the atomic publish
(segments and version moved into place, ``current`` switched) and garbage collection."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from semsearch.errors import InvalidInputError
from semsearch.index.ann import auto_index_type, resolve_params
from semsearch.index.base_version import BaseVersion
from semsearch.index.entries import EncoderMeta, IndexRequest, SegmentEntry
from semsearch.index.format import (
    NEW_VERSION,
    SEGMENT_MANIFEST,
    TOMBSTONES_FILE,
    file_sha256,
    hex_sum,
    save_npy_atomic,
    sum_hex,
)
from semsearch.index.layout import IndexRoot
from semsearch.index.manifest import Manifest, SegmentManifest
from semsearch.index.staging import StagingState

Listed = tuple[str, Path, SegmentManifest]  # a segment of the new version: name, directory, segment.json


class VersionCommit:
    """Builds and publishes the version a staged operation ends with."""

    def __init__(
        self,
        root: IndexRoot,
        staging: StagingState,
        base: BaseVersion | None,
        encoder: EncoderMeta,
        request: IndexRequest,
        shards: dict[str, Any] | None,
    ) -> None:
        self.root = root
        self.staging = staging
        self.base = base
        self.encoder = encoder
        self.request = request
        self.shards = shards

    def segments(self) -> list[Listed]:
        """The base's segments that stay, then the ones this operation sealed or merged."""
        gone = self.staging.merged_away
        listed: list[Listed] = []
        if self.base is not None:
            listed += [(r.name, r.directory, r.meta) for r in self.base.segments if r.name not in gone]
        dirs = [self.staging.segments_dir / n for n in self.staging.sealed]
        return listed + [(d.name, d, SegmentManifest.read(d)) for d in dirs]

    def tombstones(self) -> np.ndarray:
        """The base's tombstones and this operation's, less those of segments merged away."""
        base = self.base.tombstones if self.base is not None else np.zeros(0, np.int64)
        tombs = np.union1d(base, self.staging.tombstones())
        gone = self.staging.merged_away
        if gone and self.base is not None:  # their tombstones went away with them
            dropped = np.concatenate([r.ids() for r in self.base.segments if r.name in gone])
            tombs = tombs[~np.isin(tombs, dropped)]
        return np.asarray(tombs, dtype=np.int64)

    def corpus(self, listed: list[Listed], corpus_base: str | None) -> str:
        """The corpus checksum: the base's, plus the new rows, minus the tombstoned rows (merges move rows)."""
        if corpus_base is None:
            corpus_base = self.base.manifest.corpus_checksum if self.base is not None else ""
        sealed = set(self.staging.sealed)
        new = sum(hex_sum(m.corpus_sum) for n, _, m in listed if n in sealed and m.origin.get("kind") != "merge")
        return sum_hex(hex_sum(corpus_base) + new - hex_sum(self.staging["tomb_sum"]))

    def entry(self, name: str, directory: Path, meta: SegmentManifest) -> SegmentEntry:
        shard = None
        if self.shards is not None:
            shard = int(meta.origin["shard"]) if "shard" in meta.origin else self._base_shard(name)
        sha = file_sha256(directory / SEGMENT_MANIFEST)
        return SegmentEntry(name=name, count=meta.count, index_type=meta.index_type, sha256=sha, shard=shard)

    def _base_shard(self, name: str) -> int:
        if self.base is None:
            raise InvalidInputError(f"internal: {name} is not a segment of the base version")
        return self.base.shard_of_segment(name)

    def commit(
        self, build: dict[str, Any], parent: Manifest | None, corpus_base: str | None, allow_empty: bool = False
    ) -> Manifest:
        """Write the version manifest (last) and publish; returns the manifest."""
        listed = self.segments()
        tombs = self.tombstones()
        count = sum(m.count for _, _, m in listed) - len(tombs)
        if count < 0 or (count == 0 and not allow_empty):
            raise InvalidInputError("no sentences to index: every row was rejected, deleted or the input is empty")
        version_dir = self.staging.dir / NEW_VERSION
        shutil.rmtree(version_dir, ignore_errors=True)
        version_dir.mkdir()
        files: dict[str, str] = {}
        if len(tombs):
            save_npy_atomic(version_dir / TOMBSTONES_FILE, tombs)
            files[TOMBSTONES_FILE] = file_sha256(version_dir / TOMBSTONES_FILE)
        kind = auto_index_type(count) if self.request.type == "auto" else self.request.type
        enc = self.encoder
        if parent is None and self.base is not None:
            parent = self.base.manifest
        manifest = Manifest(
            **enc.manifest_fields(),
            index_type=kind,
            index_params=resolve_params(kind, count, enc.dimension, self.request.params),
            count=count,
            corpus_checksum=self.corpus(listed, corpus_base),
            files=files,
            version=self.root.next_version(),
            parent_version=parent.version if parent else None,
            build=build,
            segments=[self.entry(*seg).to_json() for seg in listed],
            tombstones=len(tombs),
            next_iid=int(self.staging["next_iid"]),
            index_request=self.request.to_json(),
            shards=self.shards,
            **enc.optional_fields(),  # chunking, prompts: kept by every change
        )
        manifest.write(version_dir)
        return manifest

    def publish(self) -> None:
        """Move the new segments and the version into place and switch ``current``; then collect garbage."""
        new_dirs = [self.staging.segments_dir / n for n in self.staging.sealed]
        self.root.publish(self.staging.dir / NEW_VERSION, new_dirs)
        self.staging.remove()
        self.root.collect_garbage()
