"""One immutable segment: FAISS index, exact vectors, ids, documents + FTS5, and ``segment.json``.

A segment is written once (:func:`write_segment`, into a hidden ``.partial`` directory renamed
when complete) and never changed; versions list segments by name and mark deleted rows in their
own tombstones, so one segment serves every version that lists it. :class:`Segment` is a loaded
segment (memory-mapped), shared by the versions a service holds; :class:`SegmentView` is a
segment seen through one version's tombstones.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from semsearch.errors import CorruptIndexError, InvalidInputError
from semsearch.index.ann import PARAM_TYPES, VectorIndex, auto_index_type
from semsearch.index.format import (
    DOCS_DB,
    IDS_FILE,
    SEGMENT_FILES,
    SEGMENT_MANIFEST,
    VECTORS_FILE,
    file_sha256,
    rows_sum,
    sum_hex,
)
from semsearch.index.lexical import VOCAB_SCHEMA, ensure_vocab, total_tokens
from semsearch.index.manifest import Manifest, SegmentManifest
from semsearch.index.store import FTS_SCHEMA, DocStore, connect

log = logging.getLogger(__name__)

# Index types that must be trained (IVF lists, SQ ranges, PQ codebooks): a segment smaller than
# this is stored flat instead (exact, no training, microseconds to scan), e.g. a small ``add``
# (PQ's 4-bit codebooks alone need 16 points per sub-quantizer).
TRAINED_TYPES = ("ivf", "pq", "sq8", "hnsw-sq8")
MIN_TRAINED_ROWS = 256
_COPY_BLOCK = 65_536


def segment_index(index_type: str, given: dict[str, Any], n: int) -> tuple[str, dict[str, Any]]:
    """The FAISS type and user parameters a segment of ``n`` rows gets for a requested type."""
    kind = auto_index_type(n) if index_type == "auto" else index_type
    if kind in TRAINED_TYPES and n < MIN_TRAINED_ROWS:
        return "flat", {}
    params = {k: v for k, v in given.items() if k in PARAM_TYPES}
    if "nlist" in params:  # FAISS wants about 39 training points per list
        params["nlist"] = max(1, min(int(params["nlist"]), n // 39 or 1))
    if "train_size" in params:
        params["train_size"] = min(int(params["train_size"]), n)
    return kind, params


@dataclass(eq=False)  # identity: a loaded segment is a resource (it keys per-segment caches)
class Segment:
    """A loaded segment (read-only, thread-safe for concurrent searches)."""

    name: str
    directory: Path
    meta: SegmentManifest
    vectors: VectorIndex
    docs: DocStore
    _closed: bool = field(default=False, repr=False)

    @property
    def count(self) -> int:
        return self.meta.count

    @property
    def ids(self) -> np.ndarray:
        return self.vectors.ids

    def contains(self, iids: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``iids`` are rows of this segment."""
        ids = self.vectors.ids
        if len(ids) == 0 or len(iids) == 0:
            return np.zeros(len(iids), dtype=bool)
        pos = np.minimum(np.searchsorted(ids, iids), len(ids) - 1)
        return np.asarray(ids[pos] == iids)

    @classmethod
    def load(cls, directory: Path, expected_sha256: str | None = None, mmap: bool = True) -> Segment:
        """Load a segment after its quick checks (manifest checksum, files, shapes, counts)."""
        if expected_sha256 is not None:
            path = directory / SEGMENT_MANIFEST
            if not path.is_file():
                raise CorruptIndexError(f"segment {directory.name} is missing ({path})")
            if file_sha256(path) != expected_sha256:
                raise CorruptIndexError(f"{path} differs from the one the version manifest lists (sha256)")
        meta = SegmentManifest.read(directory)
        problems = quick_problems(directory, meta)
        if problems:
            raise CorruptIndexError(f"segment {directory} failed verification: " + "; ".join(problems))
        return cls._open(directory, meta, mmap)

    @classmethod
    def load_legacy(cls, version_dir: Path, manifest: Manifest, mmap: bool = True) -> Segment:
        """A format-1 version directory, read as one segment."""
        meta = legacy_segment_manifest(version_dir, manifest, tokens=None)
        problems = quick_problems(version_dir, meta)
        if problems:
            raise CorruptIndexError(f"index version {version_dir} failed verification: " + "; ".join(problems))
        seg = cls._open(version_dir, meta, mmap)
        seg.meta.tokens = total_tokens(seg.docs.conn)
        return seg

    @classmethod
    def _open(cls, directory: Path, meta: SegmentManifest, mmap: bool) -> Segment:
        vectors = VectorIndex.load(directory, meta.index_type, meta.index_params, mmap=mmap)
        if vectors.ntotal != meta.count:
            raise CorruptIndexError(
                f"{directory}: FAISS holds {vectors.ntotal} vectors but its manifest says {meta.count}"
            )
        docs = DocStore(directory / DOCS_DB)
        ensure_vocab(docs.conn)
        return cls(meta.name, directory, meta, vectors, docs)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.docs.close()


@dataclass
class SegmentView:
    """A segment as one version sees it: with that version's tombstones of its rows."""

    segment: Segment
    dead: np.ndarray  # sorted tombstoned iids of this segment

    @property
    def conn(self) -> sqlite3.Connection:
        return self.segment.docs.conn

    @property
    def live(self) -> int:
        return self.segment.count - len(self.dead)

    def is_dead(self, iids: np.ndarray) -> np.ndarray:
        if len(self.dead) == 0:
            return np.zeros(len(iids), dtype=bool)
        return np.isin(iids, self.dead, assume_unique=False)


def legacy_segment_manifest(version_dir: Path, manifest: Manifest, tokens: int | None) -> SegmentManifest:
    ids = np.load(version_dir / IDS_FILE, mmap_mode="r") if (version_dir / IDS_FILE).is_file() else np.zeros(0)
    return SegmentManifest(
        name=version_dir.name,
        count=manifest.count,
        dimension=manifest.dimension,
        index_type=manifest.index_type,
        index_params=manifest.index_params,
        model_fingerprint=manifest.model_fingerprint,
        min_iid=int(ids[0]) if len(ids) else 0,
        max_iid=int(ids[-1]) if len(ids) else -1,
        corpus_sum="",
        tokens=tokens or 0,
        files=dict(manifest.files),
    )


def quick_problems(directory: Path, meta: SegmentManifest) -> list[str]:
    """Cheap structural checks: files present, vectors shape and ids consistent with the manifest."""
    problems = [f"{name} is missing" for name in SEGMENT_FILES if not (directory / name).is_file()]
    if problems:
        return problems
    try:
        vectors = np.load(directory / VECTORS_FILE, mmap_mode="r")
        ids = np.load(directory / IDS_FILE, mmap_mode="r")
    except (OSError, ValueError) as e:
        return [f"cannot read vectors/ids: {e}"]
    if vectors.shape != (meta.count, meta.dimension):
        problems.append(f"vectors.npy has shape {vectors.shape}, manifest says ({meta.count}, {meta.dimension})")
    if ids.shape != (meta.count,):
        problems.append(f"ids.npy has {ids.shape[0] if ids.ndim else 0} ids, manifest says {meta.count}")
    elif meta.count > 1 and not bool(np.all(np.diff(ids) > 0)):
        problems.append("ids.npy is not strictly ascending")
    elif meta.count and (int(ids[0]) != meta.min_iid or int(ids[-1]) != meta.max_iid):
        problems.append(f"ids.npy spans {int(ids[0])}..{int(ids[-1])}, manifest says {meta.min_iid}..{meta.max_iid}")
    return problems


def unsearchable_metadata(conn: sqlite3.Connection) -> list[str]:
    """A problem naming the rows whose metadata SQLite's JSON functions refuse (``NaN``, ``Infinity``:
    accepted before the ingest limits of :mod:`semsearch.rows`), or none. One such row, deleted or
    not, makes every filtered search over its segment fail."""
    from semsearch.rows import loads_row, metadata_problem

    count, examples = 0, list[str]()
    for ext_id, metadata in conn.execute("SELECT ext_id, metadata FROM docs WHERE NOT json_valid(metadata)"):
        count += 1
        if len(examples) < 3:
            try:
                why = metadata_problem(loads_row(metadata)) or "not valid JSON"
            except ValueError as e:  # RowError, JSONDecodeError
                why = str(e)
            examples.append(f"{ext_id!r}: {why}")
    if not count:
        return []
    return [
        f"{count} row(s) hold metadata that SQLite's JSON functions refuse, so every filtered search over this "
        f"segment fails ({'; '.join(examples)}); rebuild, or add them again without it and compact"
    ]


def verify_segment(directory: Path, meta: SegmentManifest, full: bool, legacy_checksum: str | None = None) -> list[str]:
    """Every integrity problem of one segment (``full``: file checksums and content sums too)."""
    problems = quick_problems(directory, meta)
    if problems:
        return problems
    if full:
        for name, expected in sorted(meta.files.items()):
            actual = file_sha256(directory / name)
            if actual != expected:
                problems.append(f"{name}: sha256 {actual[:12]}… differs from the manifest's {expected[:12]}…")
    try:
        vi = VectorIndex.load(directory, meta.index_type, meta.index_params, mmap=True)
    except CorruptIndexError as e:
        return [*problems, str(e)]
    if vi.ntotal != meta.count:
        problems.append(f"FAISS holds {vi.ntotal} vectors, manifest says {meta.count}")
    try:
        conn = sqlite3.connect(f"file:{directory / DOCS_DB}?mode=ro", uri=True)
        sql_ids = np.fromiter((r[0] for r in conn.execute("SELECT iid FROM docs ORDER BY iid")), dtype=np.int64)
        if legacy_checksum is not None:
            from semsearch.index.store import legacy_corpus_checksum

            content_ok = legacy_corpus_checksum(conn) == legacy_checksum
        else:
            content_ok = sum_hex(rows_sum(conn.execute("SELECT ext_id, text, metadata FROM docs"))) == meta.corpus_sum
            if full and total_tokens(conn) != meta.tokens:
                problems.append(f"the FTS table holds {total_tokens(conn)} tokens, manifest says {meta.tokens}")
        if full:
            problems += unsearchable_metadata(conn)
        conn.close()
    except sqlite3.DatabaseError as e:
        return [*problems, f"{DOCS_DB} is not a readable SQLite database: {e}"]
    if len(sql_ids) != meta.count:
        problems.append(f"SQLite holds {len(sql_ids)} sentences, manifest says {meta.count}")
    if not np.array_equal(sql_ids, np.asarray(vi.ids)):
        missing = np.setdiff1d(vi.ids, sql_ids)[:5].tolist()
        extra = np.setdiff1d(sql_ids, vi.ids)[:5].tolist()
        problems.append(f"FAISS ids and SQLite ids differ (in FAISS only: {missing}; in SQLite only: {extra})")
    elif meta.count and hasattr(vi.index, "id_map"):
        import faiss

        if not np.array_equal(np.sort(faiss.vector_to_array(vi.index.id_map).astype(np.int64)), sql_ids):
            problems.append("the FAISS index's own id map differs from ids.npy")
    if not content_ok:
        problems.append("corpus checksum of the stored rows differs from the manifest's")
    if meta.count:
        sample = np.asarray(vi.vectors[: min(1000, meta.count)], dtype=np.float32)
        if not np.allclose(np.linalg.norm(sample, axis=1), 1.0, atol=1e-3):
            problems.append("stored vectors are not unit length (normalized=true in the manifest)")
    if meta.dimension != vi.dim:
        problems.append(f"vectors have dimension {vi.dim}, manifest says {meta.dimension}")
    return problems


def write_segment(
    parent: Path,
    name: str,
    ids: np.ndarray,
    vectors: np.ndarray | Path,
    fill_docs: Callable[[sqlite3.Connection], None],
    *,
    index_type: str,
    index_params: dict[str, Any],
    model_fingerprint: str,
    origin: dict[str, Any],
) -> tuple[Path, SegmentManifest]:
    """Write a complete segment ``parent/name`` from ascending ``ids``, their ``vectors`` (row order =
    ids; an array, or a finished ``.npy`` file that is linked in, not copied) and ``fill_docs`` (inserts
    exactly those rows into ``docs``); returns its directory and manifest.

    Everything is written into ``parent/.name.partial`` and renamed when complete, so a crash never
    leaves a directory that looks like a segment.
    """
    n, dim = np.load(vectors, mmap_mode="r").shape if isinstance(vectors, Path) else vectors.shape
    if len(ids) != n:
        raise InvalidInputError(f"internal: {len(ids)} ids for {n} vectors")
    if n == 0:
        raise InvalidInputError("internal: an empty segment")
    tmp = parent / f".{name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _place_vectors(tmp / VECTORS_FILE, vectors)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    np.save(tmp / IDS_FILE, ids)
    corpus, tokens = _write_docs(tmp / DOCS_DB, ids, fill_docs, name)
    kind, params = segment_index(index_type, index_params, n)
    vi = VectorIndex.build(np.load(tmp / VECTORS_FILE, mmap_mode="r"), ids, kind, params)
    vi.save(tmp)
    meta = SegmentManifest(
        name=name,
        count=n,
        dimension=dim,
        index_type=vi.index_type,
        index_params=vi.params,
        model_fingerprint=model_fingerprint,
        min_iid=int(ids[0]),
        max_iid=int(ids[-1]),
        corpus_sum=corpus,
        tokens=tokens,
        files={f: file_sha256(tmp / f) for f in SEGMENT_FILES},
        origin=origin,
    )
    meta.write(tmp)
    final = parent / name
    tmp.rename(final)
    log.info("wrote segment %s: %d rows, %s", name, n, vi.index_type)
    return final, meta


def _place_vectors(target: Path, vectors: np.ndarray | Path) -> None:
    """The segment's ``vectors.npy``: a finished file is hard-linked (no byte written; copied only
    where links fail), an array written block by block."""
    if isinstance(vectors, Path):
        try:
            os.link(vectors, target)
        except OSError:
            shutil.copyfile(vectors, target)
        return
    out = np.lib.format.open_memmap(target, mode="w+", dtype=np.float32, shape=vectors.shape)
    for start in range(0, len(vectors), _COPY_BLOCK):
        out[start : start + _COPY_BLOCK] = vectors[start : start + _COPY_BLOCK]
    out.flush()
    del out


def _write_docs(
    path: Path, ids: np.ndarray, fill_docs: Callable[[sqlite3.Connection], None], name: str
) -> tuple[str, int]:
    """The segment's ``docs.sqlite`` (rows + FTS5); returns its corpus sum and token count."""
    conn = connect(path)
    conn.execute("PRAGMA synchronous=OFF")  # unpublished: durability comes from the fsync at publish
    with conn:
        fill_docs(conn)
    stored = np.fromiter((r[0] for r in conn.execute("SELECT iid FROM docs ORDER BY iid")), dtype=np.int64)
    if not np.array_equal(stored, ids):
        conn.close()
        raise InvalidInputError(f"internal: segment {name} stores {len(stored)} rows for {len(ids)} vectors")
    with conn:
        conn.executescript(FTS_SCHEMA + VOCAB_SCHEMA)
        conn.execute("INSERT INTO docs_fts(docs_fts) VALUES ('rebuild')")
    corpus = sum_hex(rows_sum(conn.execute("SELECT ext_id, text, metadata FROM docs")))
    tokens = total_tokens(conn)
    conn.close()
    return corpus, tokens


def link_legacy_segment(version_dir: Path, manifest: Manifest, parent: Path, name: str) -> tuple[Path, SegmentManifest]:
    """``indexer upgrade``: a format-1 version's files become a segment (hard links, no copy)."""
    tmp = parent / f".{name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in SEGMENT_FILES:
        try:
            (tmp / f).hardlink_to(version_dir / f)
        except OSError:
            shutil.copy2(version_dir / f, tmp / f)
    conn = sqlite3.connect(f"file:{tmp / DOCS_DB}?mode=ro", uri=True)
    corpus = sum_hex(rows_sum(conn.execute("SELECT ext_id, text, metadata FROM docs")))
    tokens = total_tokens(conn)
    conn.close()
    meta = legacy_segment_manifest(version_dir, manifest, tokens)
    meta.name = name
    meta.corpus_sum = corpus
    meta.origin = {"kind": "upgrade", "from_version": manifest.version}
    meta.files = {f: file_sha256(tmp / f) for f in SEGMENT_FILES}
    meta.write(tmp)
    final = parent / name
    tmp.rename(final)
    return final, meta
