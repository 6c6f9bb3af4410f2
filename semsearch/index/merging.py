"""Merging segments: the plan (:class:`MergePolicy`, Lucene's ``MergePolicy.findMerges``) and the
mechanism (:class:`SegmentMerger`, Lucene's ``SegmentMerger``: the live rows of some segments
rewritten into one, inside one write operation).

:class:`~semsearch.index.writer.IndexWriter` runs them for every caller (the CLI after ``add``/``delete``,
the service after a flush): ``maybe_merge`` applies the policy's plan until it asks for nothing more,
``force_merge`` packs each shard (``indexer compact``). Merges never cross shards.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semsearch.errors import InvalidInputError
from semsearch.index.base_version import BaseVersion, SegmentRef
from semsearch.index.entries import EncoderMeta, IndexRequest
from semsearch.index.flusher import new_segment_name
from semsearch.index.format import DOCS_DB, VECTORS_FILE
from semsearch.index.segment import write_segment
from semsearch.index.staging import StagingState
from semsearch.index.store import COLUMNS

Segments = list[tuple[str, int, int]]  # (name, rows, tombstoned rows), in manifest order


def segments_per_shard(base: BaseVersion) -> dict[int, Segments]:
    """``(name, rows, tombstoned rows)`` of every segment of ``base``, by shard."""
    dead = base.tombstones
    per_shard: dict[int, Segments] = {}
    for r in base.segments:
        tombstoned = int(np.isin(dead, r.ids()).sum()) if len(dead) else 0
        per_shard.setdefault(base.shard_of_segment(r.name), []).append((r.name, r.meta.count, tombstoned))
    return per_shard


class SegmentMerger:
    """Rewrites the live rows of some of the base version's segments into one new segment."""

    def __init__(
        self, staging: StagingState, base: BaseVersion | None, encoder: EncoderMeta, request: IndexRequest
    ) -> None:
        self.staging = staging
        self.base = base
        self.encoder = encoder
        self.request = request

    def merge(self, names: Sequence[str], sharded: bool) -> str:
        """Merge these base segments (all of one shard) into one; drops their tombstones. Returns the new
        segment's name ("" when every row was deleted: the segments simply go away)."""
        if self.base is None:
            raise InvalidInputError("nothing to merge: the index is empty")
        base = self.base
        refs = {r.name: r for r in base.segments}
        sources = [refs[n] for n in names]
        shards = {base.shard_of_segment(n) for n in names}
        if len(shards) > 1:
            raise InvalidInputError(f"internal: a merge across shards {sorted(shards)}; merges stay within a shard")
        live_parts = [ids[~np.isin(ids, base.tombstones)] for ids in (r.ids() for r in sources)]
        ids = np.sort(np.concatenate(live_parts)) if live_parts else np.zeros(0, np.int64)
        if len(ids) == 0:
            with self.staging.db:
                self.staging.append("merged_away", names)
            return ""
        name = new_segment_name()
        vectors = self._gather(name, sources, live_parts, ids)
        origin = {"kind": "merge", "merged": list(names)} | ({"shard": shards.pop()} if sharded else {})
        write_segment(
            self.staging.segments_dir,
            name,
            ids,
            vectors,
            self._fill(sources),
            index_type=self.request.type,
            index_params=self.request.params,
            model_fingerprint=self.encoder.fingerprint,
            origin=origin,
        )
        vectors.unlink()
        with self.staging.db:
            self.staging.append("sealed", [name])
            self.staging.append("merged_away", names)
        return name

    def _gather(self, name: str, sources: list[SegmentRef], live_parts: list[np.ndarray], ids: np.ndarray) -> Path:
        """The merged segment's vectors, written once into a file its segment links in."""
        path = self.staging.segments_dir / f".{name}.{VECTORS_FILE}"
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(ids), self.encoder.dimension))
        for ref, live_ids in zip(sources, live_parts, strict=True):
            vecs = np.load(ref.directory / VECTORS_FILE, mmap_mode="r")
            out[np.searchsorted(ids, live_ids)] = vecs[np.searchsorted(ref.ids(), live_ids)]
        out.flush()
        del out
        return path

    def _fill(self, sources: list[SegmentRef]) -> Any:
        assert self.base is not None
        dead = self.base.tombstones

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

        return fill


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
