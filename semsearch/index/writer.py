"""The index writer: every change to an index goes through one :class:`IndexWriter` operation.

An operation (build, add, delete, merge, upgrade) starts from the current version (its *base*),
stages what it creates under ``staging/<operation>/`` and ends with :meth:`IndexWriter.commit`,
which publishes a new version atomically. The writer is a coordinator (Lucene's ``IndexWriter``)
over named collaborators, one concern each:

* :class:`~semsearch.index.staging.StagingState`: the staging directory, its database and the resume state;
* :class:`~semsearch.index.pending.PendingRows`: the open segment's rows, upserts, automatic ids, tombstones;
* :class:`~semsearch.index.flusher.SegmentFlusher`: each row's vector written once into its shard's
  open segment file; sealing the open segment into immutable segments;
* :class:`~semsearch.index.merging.SegmentMerger` and :class:`~semsearch.index.merging.MergePolicy`:
  merges, which the writer runs itself (:meth:`IndexWriter.maybe_merge`, :func:`force_merge`);
* :class:`~semsearch.index.commit.VersionCommit`: the new version's manifest, publish and garbage collection.

What each operation costs is its own size: **add/build** write new segments only (rows committed
chunk by chunk, the open segment sealed every ``segment_rows`` rows and at commit); **delete** writes
only tombstones; **merge** rewrites the live rows of some segments into one and drops their
tombstones. Nothing in ``staging/`` is ever read by a reader, and :meth:`IndexRoot.publish` moves
segments and the version into place before switching ``current``, so kill -9 at any point leaves the
previous version current and loadable; ``--resume`` continues a build/add from its last committed chunk.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from semsearch.errors import DiskFullError, SemsearchError
from semsearch.index.base_version import BaseVersion, SegmentRef
from semsearch.index.commit import VersionCommit
from semsearch.index.entries import EncoderMeta, IndexRequest
from semsearch.index.flusher import SegmentFlusher, new_segment_name
from semsearch.index.format import IDS_FILE
from semsearch.index.layout import IndexRoot
from semsearch.index.manifest import Manifest
from semsearch.index.merging import MergePolicy, SegmentMerger, segments_per_shard
from semsearch.index.pending import OnDuplicate, PendingRows
from semsearch.index.segment import link_legacy_segment
from semsearch.index.sharding import shard_count, shard_spec
from semsearch.index.staging import StagingState
from semsearch.index.store import Record
from semsearch.types import Reject

__all__ = [
    "DEFAULT_SEGMENT_ROWS",
    "BaseVersion",
    "IndexWriter",
    "MergePolicy",
    "OnDuplicate",
    "SegmentRef",
    "WriteKind",
    "aborting",
    "disk_errors",
    "force_merge",
    "is_disk_full",
    "legacy_base_dir",
    "maybe_merge",
    "merge_groups",
    "new_segment_name",
    "upgrade",
]

log = logging.getLogger(__name__)

DEFAULT_SEGMENT_ROWS = 1_000_000
WriteKind = Literal["build", "add", "delete", "merge", "upgrade", "flush"]  # flush: the service's writer (app.writes)


def is_disk_full(error: BaseException) -> bool:
    """ENOSPC/EDQUOT, SQLite's "database or disk is full", or numpy's short write (an OSError without errno)."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT) or (
            error.errno is None and "requested and" in str(error) and "written" in str(error)
        )
    return isinstance(error, sqlite3.OperationalError) and "disk is full" in str(error)


class IndexWriter:
    """One write operation on an index root; the caller holds :meth:`IndexRoot.lock`.

    ``op`` names the operation (its staging directory: a run with the same name can ``resume`` it);
    ``kind`` is what it does, recorded in the segments it seals (default: ``add`` over a base,
    ``build`` without one). ``encoder_meta`` and ``index_request`` take the typed values or their
    dict forms."""

    def __init__(
        self,
        root: IndexRoot,
        op: str,
        encoder_meta: EncoderMeta | Mapping[str, Any],
        index_request: IndexRequest | Mapping[str, Any],
        *,
        resume: bool = False,
        segment_rows: int = DEFAULT_SEGMENT_ROWS,
        base: BaseVersion | None = None,
        shards: int | None = None,
        kind: WriteKind | None = None,
        merge_policy: MergePolicy | None = None,
    ) -> None:
        self.root = root
        self.op = op
        self.kind: WriteKind = kind or ("add" if base is not None else "build")
        # the base's sharding is kept (add/delete/compact); ``shards`` only applies to a fresh build
        self.shards = base.manifest.shards if base is not None else shard_spec(shards)
        self.n_shards = shard_count(self.shards)
        self.encoder = EncoderMeta.of(encoder_meta)
        self.request = IndexRequest.of(index_request)
        self.segment_rows = segment_rows
        self.base = base
        self.merge_policy = merge_policy or MergePolicy()
        base_version, next_iid = (base.manifest.version, base.manifest.next_iid) if base else (None, 0)
        resumable = self.kind in ("build", "add")
        self.staging = StagingState(root, op, base_version, next_iid, resume, resumable)
        self.dir = self.staging.dir
        self.staging.clean_uncommitted()
        self.pending = PendingRows(self.staging, base)
        origin = {"kind": self.kind, "operation": op}
        sharded = None if self.shards is None else self.n_shards
        self.flusher = SegmentFlusher(self.staging, self.pending, self.encoder, self.request, sharded, origin)
        self.merger = SegmentMerger(self.staging, base, self.encoder, self.request)
        self.committed: Manifest | None = None

    @property
    def consumed(self) -> int:
        """Input items (rows and rejects) committed so far: what ``--resume`` skips."""
        return self.staging.consumed

    @property
    def rejects(self) -> int:
        return self.staging.rejects

    @property
    def first_iid(self) -> int:
        """The internal id this operation's first row gets (rows get consecutive ids in input order,
        rejected ones included), so an automatic id can be known before the row is written."""
        return self.base.manifest.next_iid if self.base is not None else 0

    def open_rows(self) -> int:
        return self.pending.count()

    def reject_rows(self, limit: int | None = None) -> list[tuple[str, int, str, str | None]]:
        return self.staging.reject_rows(limit)

    # ------------------------------------------------------------------------------------ changes

    def add_chunk(
        self,
        records: Sequence[Record],
        vectors: np.ndarray,
        rejects: Sequence[Reject],
        consumed: int,
        on_duplicate: OnDuplicate,
    ) -> None:
        """Commit one chunk: its rows and vectors, its rejects, upsert tombstones and ``consumed``
        input items, atomically (the unit ``--resume`` restarts from)."""
        first = int(self.staging["next_iid"])
        try:
            with self.staging.db:
                inserted, refused, spare = self.pending.add(records, first, on_duplicate)
                self.flusher.append(inserted, first, vectors)
                refused = [*rejects, *refused]
                self.staging.add_rejects(refused)
                self.staging.record(
                    next_iid=spare,
                    chunks=int(self.staging["chunks"]) + (1 if len(records) else 0),
                    consumed=self.consumed + consumed,
                    rejects=self.rejects + len(refused),
                )
        except BaseException:
            self._rolled_back()
            raise
        self.pending.committed()
        self.flusher.vectors.committed()
        if self.open_rows() >= self.segment_rows * self.n_shards:
            self.seal()

    def delete(self, ext_ids: Sequence[int | str]) -> list[int | str]:
        """Tombstone the live rows with these ids (matched by :func:`semsearch.ids.id_key`, exactly);
        returns the ids not found."""
        try:
            with self.staging.db:
                missing = self.pending.delete(ext_ids)
        except BaseException:
            self._rolled_back()
            raise
        self.pending.committed()
        return missing

    def _rolled_back(self) -> None:
        self.staging.rolled_back()
        self.pending.rolled_back()
        self.flusher.vectors.rolled_back()

    def seal(self) -> list[str]:
        """Seal the open segment into immutable segments (one per shard with open rows); their names."""
        return self.flusher.seal()

    def merge(self, names: Sequence[str]) -> str:
        """Rewrite the live rows of these base segments (of one shard) into one new segment."""
        return self.merger.merge(names, sharded=self.shards is not None)

    def upgrade_legacy(self, version_dir: Path, manifest: Manifest) -> str:
        """Stage a format-1 version's files as this operation's one segment (hard links)."""
        name = new_segment_name()
        link_legacy_segment(version_dir, manifest, self.staging.segments_dir, name)
        ids = np.load(version_dir / IDS_FILE, mmap_mode="r")
        with self.staging.db:
            self.staging.record(sealed=[name], next_iid=int(ids[-1]) + 1 if len(ids) else 0)
        return name

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
        version = VersionCommit(self.root, self.staging, self.base, self.encoder, self.request, self.shards)
        manifest = version.commit(build, parent, corpus_base, allow_empty)
        self.close()
        version.publish()
        self.committed = manifest
        return manifest

    def maybe_merge(self, policy: MergePolicy | None = None, max_rounds: int = 4) -> list[str]:
        """After :meth:`commit`: merge what the merge policy asks for (each merge publishes a version,
        the caller still holds the lock); returns those versions."""
        return maybe_merge(self.root, policy or self.merge_policy, max_rounds)

    def close(self) -> None:
        self.pending.close()
        self.staging.close()
        if self.base is not None:
            self.base.close()

    def abort(self) -> None:
        """Throw the operation away (its staging directory goes; the index is untouched)."""
        self.close()
        self.staging.remove()


def merge_groups(root: IndexRoot, groups: list[list[str]], kind: str) -> Manifest:
    """Merge each group of segments (all of one shard) into one segment, published as one version."""
    base = BaseVersion.read(root)
    if base is None:
        raise ValueError(f"{root.path} has no current version to merge")
    writer = IndexWriter(root, f"merge-{time.time_ns()}", base.encoder, base.index_request, base=base, kind="merge")
    with disk_errors(root, writer), aborting(writer):
        merged = [writer.merge(group) for group in groups]
        into: str | list[str] = merged[0] if len(merged) == 1 else merged
        # a merge never changes the live rows: it publishes an empty version only when the base was one
        return writer.commit({"kind": kind, "merged": [n for g in groups for n in g], "into": into}, allow_empty=True)


def maybe_merge(root: IndexRoot, policy: MergePolicy | None = None, max_rounds: int = 4) -> list[str]:
    """Merge what the policy asks for (each merge publishes a version); returns those versions."""
    policy = policy or MergePolicy()
    published: list[str] = []
    for _ in range(max_rounds):
        base = BaseVersion.read(root)
        if base is None:
            break
        per_shard = segments_per_shard(base)
        base.close()
        group = next((g for g in (policy.plan(per_shard[s]) for s in sorted(per_shard)) if g), [])
        if not group:
            break
        log.info("merge policy: merging %d segment(s)", len(group))
        published.append(merge_groups(root, [group], "merge").version)
    return published


def force_merge(root: IndexRoot, policy: MergePolicy | None = None) -> Manifest | None:
    """Drop every tombstoned row and pack each shard into as few segments as ``policy``'s cap allows,
    as one version; None when there is nothing to do (already packed)."""
    policy = policy or MergePolicy()
    base = BaseVersion.read(root)
    if base is None:
        raise ValueError(f"{root.path} has no current version to compact")
    per_shard = segments_per_shard(base)
    base.close()
    groups = [g for s in sorted(per_shard) for g in policy.pack(per_shard[s])]
    return merge_groups(root, groups, "compact") if groups else None


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
        root, f"upgrade-{old.version}", EncoderMeta.recorded(old), IndexRequest(old.index_type), kind="upgrade"
    )
    with disk_errors(root, writer):
        writer.upgrade_legacy(version_dir, old)
        return writer.commit({"kind": "upgrade", "from_format": 1}, parent=old, corpus_base="0")
