"""Merges, run by the core for every caller: the CLI after ``add``/``delete``, the service after a flush.

:class:`~semsearch.index.writer.MergePolicy` only plans (Lucene's ``MergePolicy.findMerges``);
:func:`maybe_merge` applies its plan until it asks for nothing more, :func:`force_merge` packs every
shard's live rows into as few segments as the size cap allows (``indexer compact``). Each merge is one
staged operation of an :class:`~semsearch.index.writer.IndexWriter` published as its own version; the
caller holds the index lock. Merges never cross shards.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from semsearch.index.format import IDS_FILE
from semsearch.index.layout import IndexRoot
from semsearch.index.manifest import Manifest
from semsearch.index.sharding import segment_shard
from semsearch.index.writer import BaseVersion, IndexWriter, MergePolicy, aborting, disk_errors

log = logging.getLogger(__name__)

Segments = list[tuple[str, int, int]]  # (name, rows, tombstoned rows), in manifest order


def segments_per_shard(base: BaseVersion) -> dict[int, Segments]:
    """``(name, rows, tombstoned rows)`` of every segment of ``base``, by shard."""
    dead = base.tombstones
    shard_of_name = {e["name"]: segment_shard(e) for e in base.manifest.segments}
    per_shard: dict[int, Segments] = {}
    for r in base.segments:
        ids = np.load(r.directory / IDS_FILE, mmap_mode="r")
        per_shard.setdefault(shard_of_name[r.name], []).append(
            (r.name, r.meta.count, int(np.isin(dead, ids).sum()) if len(dead) else 0)
        )
    return per_shard


def merge_groups(root: IndexRoot, groups: list[list[str]], kind: str) -> Manifest:
    """Merge each group of segments (all of one shard) into one segment, published as one version."""
    base = BaseVersion.read(root)
    if base is None:
        raise ValueError(f"{root.path} has no current version to merge")
    writer = IndexWriter(root, f"merge-{time.time_ns()}", base.manifest.encoder_meta(), base.index_request, base=base)
    with disk_errors(root, writer), aborting(writer):
        merged = [writer.merge(group) for group in groups]
        into: str | list[str] = merged[0] if len(merged) == 1 else merged
        # a merge never changes the live rows: it publishes an empty version only when the base was one
        build = {"kind": kind, "merged": [n for g in groups for n in g], "into": into}
        return writer.commit(build, allow_empty=True)


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
