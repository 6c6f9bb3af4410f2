"""The index directory format, reading and writing it: segments, manifests, the document store, the writer.

Public API: :class:`IndexRoot` (the directory), :class:`IndexWriter` (every change as one staged operation),
:class:`MergePolicy`, :class:`Manifest`, :class:`VectorIndex`. Imports only the base modules.
"""

from semsearch.index.ann import INDEX_FILE, VectorIndex, resolve_params
from semsearch.index.entries import EncoderMeta, IndexRequest, SegmentEntry
from semsearch.index.layout import IndexRoot, resolve_version_dir
from semsearch.index.lexical import top_k
from semsearch.index.manifest import MANIFEST, Manifest
from semsearch.index.memory import MEMORY_IID_BASE, MemoryRows
from semsearch.index.merging import segments_per_shard
from semsearch.index.segment import Segment, SegmentView
from semsearch.index.sharding import segment_shard, shard_count
from semsearch.index.snapshot import SNAPSHOT_SUFFIXES, SnapshotInfo, restore_snapshot, write_snapshot
from semsearch.index.store import Record
from semsearch.index.wal import WAL_DIR, WalCorruptError, WalRecord, WalUnavailableError, WriteAheadLog
from semsearch.index.writer import (
    DEFAULT_SEGMENT_ROWS,
    BaseVersion,
    IndexWriter,
    MergePolicy,
    OnDuplicate,
    WriteKind,
    aborting,
    disk_errors,
    force_merge,
    legacy_base_dir,
    maybe_merge,
    merge_groups,
    upgrade,
)

__all__ = [
    "DEFAULT_SEGMENT_ROWS",
    "INDEX_FILE",
    "MANIFEST",
    "MEMORY_IID_BASE",
    "SNAPSHOT_SUFFIXES",
    "WAL_DIR",
    "BaseVersion",
    "EncoderMeta",
    "IndexRequest",
    "IndexRoot",
    "IndexWriter",
    "Manifest",
    "MemoryRows",
    "MergePolicy",
    "OnDuplicate",
    "Record",
    "Segment",
    "SegmentEntry",
    "SegmentView",
    "SnapshotInfo",
    "VectorIndex",
    "WalCorruptError",
    "WalRecord",
    "WalUnavailableError",
    "WriteAheadLog",
    "WriteKind",
    "aborting",
    "disk_errors",
    "force_merge",
    "legacy_base_dir",
    "maybe_merge",
    "merge_groups",
    "resolve_params",
    "resolve_version_dir",
    "restore_snapshot",
    "segment_shard",
    "segments_per_shard",
    "shard_count",
    "top_k",
    "upgrade",
    "write_snapshot",
]
