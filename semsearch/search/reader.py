"""A loaded index version: its segments seen through its tombstones; search primitives and ``verify``.

Every segment is searched and the per-segment top k merged by score (ties: lower internal id), so
a flat version answers exactly what one flat segment of the same live rows would; tombstoned rows
never come back (skipped inside each segment's search, see :meth:`VectorIndex.search`). Segments
are loaded through a :class:`SegmentPool`: a service reloading a new version keeps the segments
it already has (memory-mapped) and loads only new ones.
"""

from __future__ import annotations

import heapq
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from semsearch.errors import CorruptIndexError
from semsearch.index.format import (
    DOCS_DB,
    IDS_FILE,
    SEGMENT_MANIFEST,
    SEGMENTS,
    TOMBSTONES_FILE,
    file_sha256,
    hex_sum,
    row_hash,
    sum_hex,
)
from semsearch.index.layout import resolve_version_dir
from semsearch.index.lexical import (
    CollectionStats,
    bm25_all,
    bm25_scores,
    doc_lengths,
    live_postings,
    phrase_df,
    query_phrases,
)
from semsearch.index.manifest import LoadedVersion, Manifest, SegmentManifest
from semsearch.index.segment import Segment, SegmentView, verify_segment
from semsearch.index.sharding import shard_count
from semsearch.index.store import Doc, UserId, param_chunks
from semsearch.search.filters import CompiledFilter, cached_iids, matching_iids
from semsearch.search.hits import Hit, join_hits, merge_top_k

log = logging.getLogger(__name__)


class SegmentPool:
    """Loaded segments, shared by reference between the versions that list them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._segments: dict[tuple[str, str], tuple[Segment, list[int]]] = {}  # (dir, sha256) -> (seg, [users])

    def acquire(self, directory: Path, sha256: str, mmap: bool = True) -> Segment:
        key = (str(directory), sha256)
        with self._lock:
            entry = self._segments.get(key)
            if entry is not None:
                entry[1][0] += 1
                return entry[0]
        segment = Segment.load(directory, expected_sha256=sha256, mmap=mmap)
        with self._lock:
            entry = self._segments.setdefault(key, (segment, [0]))
            entry[1][0] += 1
        if entry[0] is not segment:  # another thread loaded it meanwhile
            segment.close()
        return entry[0]

    def release(self, segment: Segment) -> None:
        with self._lock:
            for key, (seg, users) in list(self._segments.items()):
                if seg is segment:
                    users[0] -= 1
                    if users[0] == 0:
                        del self._segments[key]
                        segment.close()
                    return
        segment.close()  # not pooled (a format-1 version's segment)

    def loaded(self) -> list[str]:
        with self._lock:
            return sorted(seg.name for seg, _ in self._segments.values())


class SearchIndex(LoadedVersion):
    """One immutable index version, loaded for search (thread-safe for concurrent reads)."""

    def __init__(
        self,
        directory: Path,
        manifest: Manifest,
        views: Sequence[SegmentView],
        pool: SegmentPool | None = None,
        shard: int | None = None,
    ) -> None:
        self.directory = directory
        self.manifest = manifest
        self.views = list(views)
        self._pool = pool
        self.shard = shard  # None: the whole version; else only this shard's segments are loaded
        live = sum(v.live for v in self.views)
        dead_tokens = sum(int(doc_lengths(v.conn, v.dead).sum()) for v in self.views if len(v.dead))
        self.stats = CollectionStats(rows=live, tokens=sum(v.segment.meta.tokens for v in self.views) - dead_tokens)

    @property
    def segments(self) -> list[Segment]:
        return [v.segment for v in self.views]

    @classmethod
    def load(
        cls,
        path: str | Path,
        mmap: bool = True,
        check: bool = True,
        pool: SegmentPool | None = None,
        shard: int | None = None,
    ) -> SearchIndex:
        """Load the current version of an index root (or a version directory).

        ``shard``: load only that shard's segments (a sharded service's shard replica); its
        :attr:`stats` are then the shard's own, and lexical scores need the collection's
        (:meth:`lexical_df`, :meth:`lexical` with ``stats``/``df``). An unsharded version is shard 0.

        The checks are always the same (startup, reload, CLI): the manifest's own checksum, every
        segment's manifest against the version's list (sha256) and its files' structure, the
        tombstones file against its checksum, and the counts. ``verify(full=True)`` adds file and
        content checksums. ``check=False`` skips only the count cross-check of the tombstones.
        """
        directory = resolve_version_dir(path)
        manifest = Manifest.read(directory)
        if manifest.legacy:
            segment = Segment.load_legacy(directory, manifest, mmap=mmap)
            return cls(directory, manifest, [SegmentView(segment, np.zeros(0, np.int64))], None)
        pool = pool or SegmentPool()
        tombstones = _read_tombstones(directory, manifest)
        segments_dir = directory.parent.parent / SEGMENTS
        entries = manifest.entries
        if shard is not None:
            n = shard_count(manifest.shards)
            if not 0 <= shard < n:
                raise CorruptIndexError(f"index version {directory} has {n} shard(s); there is no shard {shard}")
            entries = [e for e in entries if e.shard_or_zero == shard]
        loaded: list[Segment] = []
        try:
            for entry in entries:
                seg = pool.acquire(segments_dir / entry.name, entry.sha256, mmap=mmap)
                loaded.append(seg)
                if seg.meta.model_fingerprint != manifest.model_fingerprint or seg.meta.dimension != manifest.dimension:
                    raise CorruptIndexError(f"segment {seg.name} was written by another model than {directory} records")
            views = [SegmentView(seg, tombstones[seg.contains(tombstones)]) for seg in loaded]
            if check and shard is None:  # a shard's share of the counts is not in the manifest
                live = sum(v.live for v in views)
                if sum(len(v.dead) for v in views) != len(tombstones) or live != manifest.count:
                    raise CorruptIndexError(
                        f"index version {directory} failed verification: its segments hold {live} live rows and "
                        f"{sum(len(v.dead) for v in views)} of its {len(tombstones)} tombstones; manifest says "
                        f"{manifest.count} rows"
                    )
            index = cls(directory, manifest, views, pool, shard)
        except BaseException:
            for seg in loaded:
                pool.release(seg)
            raise
        log.info(
            "loaded index %s (%s, %d sentences in %d segment(s), %d tombstones, %s)",
            directory,
            manifest.version,
            manifest.count,
            len(views),
            len(tombstones),
            manifest.index_type,
        )
        return index

    def close(self) -> None:
        for v in self.views:
            if self._pool is not None:
                self._pool.release(v.segment)
            else:
                v.segment.close()
        self.views = []

    # ------------------------------------------------------------------------------ dense

    def search(self, query_vectors: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[list[Hit]]:
        """Top-k hits per query vector, best first; ``score`` is the cosine similarity."""
        scores, iids = self.dense(query_vectors, k, allowed)
        return self.hits(scores, iids)

    def dense(
        self, query_vectors: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k ``(scores, iids)`` per query over every segment's live rows; missing slots are -1."""
        q = np.ascontiguousarray(query_vectors, dtype=np.float32)
        parts: list[tuple[np.ndarray, np.ndarray]] = []
        for v in self.views:
            seg_allowed = None
            if allowed is not None:
                seg_allowed = allowed[v.segment.contains(allowed)]
                if len(seg_allowed) == 0:
                    continue
            parts.append(v.segment.vectors.search(q, k, seg_allowed, excluded=v.dead))
        return merge_top_k(parts, k, len(q))

    def live_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """``(iids, vectors)`` of every live row, in internal-id order (a copy: for evaluation and tools)."""
        ids, vecs = [], []
        for v in self.views:
            keep = ~v.is_dead(v.segment.ids)
            ids.append(np.asarray(v.segment.ids)[keep])
            vecs.append(np.asarray(v.segment.vectors.vectors, dtype=np.float32)[keep])
        if not ids:
            return np.zeros(0, np.int64), np.zeros((0, self.manifest.dimension), np.float32)
        all_ids = np.concatenate(ids)
        order = np.argsort(all_ids, kind="stable")
        return all_ids[order], np.concatenate(vecs)[order]

    def exact_scores(self, queries: np.ndarray, iids: np.ndarray) -> np.ndarray:
        """Cosine of each query (m, d) with the vectors of ``iids`` (m, c); -1 ids give -inf."""
        out = np.full(iids.shape, -np.inf, dtype=np.float32)
        flat = iids.ravel()
        for v in self.views:
            mask = (flat >= 0) & v.segment.contains(flat)
            if not mask.any():
                continue
            sub = np.where(mask.reshape(iids.shape), iids, -1)
            scores = v.segment.vectors.exact_scores(queries, sub)
            out = np.where(mask.reshape(iids.shape), scores, out)
        return out

    # ------------------------------------------------------------------------------ filters, lexical

    def matching_iids(self, compiled: CompiledFilter) -> np.ndarray:
        """Ascending live iids whose metadata match (cached per segment: segments are immutable)."""
        parts = []
        for v in self.views:
            ids = matching_iids(v.conn, compiled, v.segment)
            parts.append(ids[~v.is_dead(ids)] if len(v.dead) else ids)
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def filter_cached(self, compiled: CompiledFilter) -> bool:
        """Whether every segment has ``compiled``'s matching rows cached (:meth:`matching_iids` is then cheap)."""
        return all(cached_iids(compiled, v.segment) is not None for v in self.views)

    def lexical(
        self, text: str, stats: CollectionStats | None = None, df: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(iids, BM25 scores)`` of every live row matching the text (collection-wide statistics).

        ``stats`` and ``df`` (per query phrase, :meth:`lexical_df` summed over all shards) give the
        collection's statistics when this index is one shard of it; without them, this index's own.
        """
        if stats is None or df is None:
            return bm25_all(self.views, self.stats, text)
        phrases = query_phrases(text)
        if not phrases or stats.rows == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        return bm25_scores(self.views, live_postings(self.views, phrases), stats, df)

    def lexical_df(self, text: str) -> np.ndarray:
        """This index's live document frequency of each query phrase (phase one of a sharded BM25)."""
        phrases = query_phrases(text)
        return phrase_df(live_postings(self.views, phrases), len(phrases))

    # ------------------------------------------------------------------------------ documents

    def docs_for(self, iids: Sequence[int] | np.ndarray | set[int]) -> dict[int, Doc]:
        wanted = np.fromiter((int(i) for i in iids), dtype=np.int64)
        out: dict[int, Doc] = {}
        for v in self.views:
            mask = v.segment.contains(wanted)
            if mask.any():
                out.update(v.segment.docs.get(wanted[mask].tolist()))
        return out

    def iter_docs(self) -> Iterator[Doc]:
        """Every live document, in internal-id order."""
        streams = [_live_docs(v) for v in self.views]
        yield from heapq.merge(*streams, key=lambda d: d.iid)

    def iids_for_ext_ids(self, ext_ids: Sequence[UserId]) -> dict[str, int]:
        """Live internal ids of these user ids (absent ids are left out)."""
        out: dict[str, int] = {}
        for v in self.views:
            found = v.segment.docs.iids_for_ext_ids(ext_ids)
            dead = set(v.dead.tolist())
            out.update({e: i for e, i in found.items() if i not in dead})
        return out

    def hits(self, scores: np.ndarray, iids: np.ndarray) -> list[list[Hit]]:
        """Join (scores, ids) rows with the stored documents."""
        return join_hits(scores, iids, self.docs_for({int(i) for i in iids.ravel() if i >= 0}))


class EncoderIdentity(Protocol):
    """What identifies an encoder against an index (:class:`~semsearch.models.Encoder` is one)."""

    @property
    def fingerprint(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def pooling(self) -> str: ...


def load_index(
    path: str | Path, encoder: EncoderIdentity, pool: SegmentPool | None = None, *, mmap: bool = True
) -> SearchIndex:
    """Load an index version and check it against ``encoder``: the one check startup, every reload and
    the commands apply. Segments already in ``pool`` are reused; a refused version is closed again."""
    index = SearchIndex.load(path, mmap=mmap, check=True, pool=pool)
    try:
        index.check_encoder(encoder.fingerprint, encoder.name, encoder.pooling)
    except Exception:
        index.close()
        raise
    return index


def _live_docs(view: SegmentView) -> Iterator[Doc]:
    dead = set(view.dead.tolist())
    return (d for d in view.segment.docs.iter_docs() if d.iid not in dead)


def _read_tombstones(directory: Path, manifest: Manifest) -> np.ndarray:
    path = directory / TOMBSTONES_FILE
    if manifest.tombstones == 0:
        return np.zeros(0, np.int64)
    if not path.is_file():
        raise CorruptIndexError(f"{path} is missing: the manifest lists {manifest.tombstones} tombstones")
    try:
        tombs = np.load(path)
    except (OSError, ValueError) as e:
        raise CorruptIndexError(f"{path} is not a readable array: {e}") from e
    if tombs.dtype != np.int64 or tombs.ndim != 1 or len(tombs) != manifest.tombstones:
        raise CorruptIndexError(
            f"{path} holds {tombs.shape} {tombs.dtype}; the manifest says {manifest.tombstones} ids"
        )
    if len(tombs) > 1 and not bool(np.all(np.diff(tombs) > 0)):
        raise CorruptIndexError(f"{path} is not sorted and unique")
    return np.asarray(tombs)


def verify(path: str | Path, full: bool = True) -> list[str]:
    """Every integrity problem of an index version, as precise messages (empty list = sound).

    The version manifest (its own checksum, counts, corpus checksum), every segment (its
    ``segment.json`` against the version's list and itself, files, FAISS = SQLite = ids, unit
    vectors, content sum) and the tombstones (checksum, sorted, each a row of some segment).
    ``full=False`` skips file checksums.
    """
    try:
        directory = resolve_version_dir(path)
        manifest = Manifest.read(directory)
    except Exception as e:  # any failure to even find the version is itself the finding
        return [str(e)]
    if manifest.legacy:
        from semsearch.index.segment import legacy_segment_manifest

        meta = legacy_segment_manifest(directory, manifest, tokens=None)
        return verify_segment(directory, meta, full, legacy_checksum=manifest.corpus_checksum)
    problems: list[str] = []
    segments_dir = directory.parent.parent / SEGMENTS
    metas: list[tuple[Path, SegmentManifest]] = []
    for entry in manifest.entries:
        seg_dir = segments_dir / entry.name
        if not (seg_dir / SEGMENT_MANIFEST).is_file():
            problems.append(f"segment {entry.name} is missing ({seg_dir})")
            continue
        if file_sha256(seg_dir / SEGMENT_MANIFEST) != entry.sha256:
            problems.append(f"segment {entry.name}: {SEGMENT_MANIFEST} differs from the version's record (sha256)")
        try:
            meta = SegmentManifest.read(seg_dir)
        except CorruptIndexError as e:
            problems.append(str(e))
            continue
        problems += [f"segment {entry.name}: {p}" for p in verify_segment(seg_dir, meta, full)]
        if meta.model_fingerprint != manifest.model_fingerprint:
            problems.append(f"segment {entry.name} was encoded by model {meta.model_fingerprint}, not the version's")
        metas.append((seg_dir, meta))
    try:
        tombs = _read_tombstones(directory, manifest)
    except CorruptIndexError as e:
        return [*problems, str(e)]
    if full and len(tombs):
        actual = file_sha256(directory / TOMBSTONES_FILE)
        if actual != manifest.files.get(TOMBSTONES_FILE):
            problems.append(f"{TOMBSTONES_FILE}: sha256 {actual[:12]}… differs from the manifest's")
    if len(metas) < len(manifest.segments):  # totals over missing segments would only repeat that
        return problems
    return problems + _verify_totals(manifest, metas, tombs, full)


def _verify_totals(
    manifest: Manifest, metas: list[tuple[Path, SegmentManifest]], tombs: np.ndarray, full: bool
) -> list[str]:
    import sqlite3

    problems: list[str] = []
    owned = np.zeros(len(tombs), dtype=bool)
    dead_sum = 0
    for seg_dir, _ in metas:
        ids = np.load(seg_dir / IDS_FILE, mmap_mode="r")
        mask = np.isin(tombs, ids)
        owned |= mask
        if full and mask.any():
            conn = sqlite3.connect(f"file:{seg_dir / DOCS_DB}?mode=ro", uri=True)
            for marks, part in param_chunks(tombs[mask].tolist()):
                for row in conn.execute(f"SELECT ext_id, text, metadata FROM docs WHERE iid IN ({marks})", part):
                    dead_sum += row_hash(*row)
            conn.close()
    if not owned.all():
        problems.append(f"tombstones name ids in no segment: {tombs[~owned][:5].tolist()}")
    live = sum(m.count for _, m in metas) - len(tombs)
    if live != manifest.count:
        problems.append(f"segments hold {live} live rows, manifest says {manifest.count}")
    if metas and manifest.next_iid <= max(m.max_iid for _, m in metas):
        problems.append(f"next_iid {manifest.next_iid} is not above the largest id in use")
    if full:
        corpus = sum_hex(sum(hex_sum(m.corpus_sum) for _, m in metas) - dead_sum)
        if corpus != manifest.corpus_checksum:
            problems.append(
                f"corpus checksum {corpus[:12]}… differs from the manifest's {manifest.corpus_checksum[:12]}…"
            )
    return problems
