"""A loaded index version: search over FAISS + SQLite, and integrity verification."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semsearch.errors import CorruptIndexError, ModelMismatchError
from semsearch.layout import resolve_version_dir
from semsearch.manifest import Manifest
from semsearch.store import DOCS_DB, DocStore, UserId, corpus_checksum
from semsearch.vector_index import IDS_FILE, INDEX_FILE, VECTORS_FILE, VectorIndex

log = logging.getLogger(__name__)

VERSION_FILES = (INDEX_FILE, VECTORS_FILE, IDS_FILE, DOCS_DB)


@dataclass
class Hit:
    """One search result."""

    id: UserId
    text: str
    score: float
    metadata: dict[str, Any]
    iid: int
    doc_id: str | None = None
    start: int | None = None
    end: int | None = None
    # Component scores, set by semsearch.search (None when not computed): the bi-encoder cosine and
    # the BM25 score (FTS5 ``-bm25()``, higher is better). ``score`` is the mode's own score.
    dense_score: float | None = None
    lexical_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "text": self.text, "score": self.score, "metadata": self.metadata}
        if self.doc_id is not None:
            out["source"] = {"doc_id": self.doc_id, "start": self.start, "end": self.end}
        if self.dense_score is not None:
            out["dense_score"] = self.dense_score
        if self.lexical_score is not None:
            out["lexical_score"] = self.lexical_score
        return out


class SearchIndex:
    """One immutable index version, loaded for search (thread-safe for concurrent reads)."""

    def __init__(self, directory: Path, manifest: Manifest, vectors: VectorIndex, docs: DocStore) -> None:
        self.directory = directory
        self.manifest = manifest
        self.vectors = vectors
        self.docs = docs

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def count(self) -> int:
        return self.manifest.count

    @classmethod
    def load(cls, path: str | Path, mmap: bool = True, check: bool = True) -> SearchIndex:
        """Load the current version of an index root (or a version directory).

        ``check`` runs the quick integrity checks (file presence, counts, dimension) before the
        index is used; ``verify(full=True)`` adds checksums.
        """
        directory = resolve_version_dir(path)
        manifest = Manifest.read(directory)
        if check:
            problems = quick_problems(directory, manifest)
            if problems:
                raise CorruptIndexError(f"index version {directory} failed verification: " + "; ".join(problems))
        vectors = VectorIndex.load(directory, manifest.index_type, manifest.index_params, mmap=mmap)
        docs = DocStore(directory / DOCS_DB)
        idx = cls(directory, manifest, vectors, docs)
        if check and vectors.ntotal != manifest.count:
            raise CorruptIndexError(
                f"{directory}: FAISS holds {vectors.ntotal} vectors but the manifest says {manifest.count}"
            )
        log.info(
            "loaded index %s (%s, %d sentences, %s)", directory, manifest.version, manifest.count, manifest.index_type
        )
        return idx

    def close(self) -> None:
        self.docs.close()

    def check_encoder(self, model_fingerprint: str, model_name: str, pooling: str) -> None:
        """Refuse an encoder that is not the one the index was built with, naming both."""
        m = self.manifest
        if model_fingerprint != m.model_fingerprint or pooling != m.pooling:
            raise ModelMismatchError(
                f"index {self.directory} was built with model {m.model!r} (fingerprint {m.model_fingerprint}, "
                f"pooling {m.pooling}); the configured encoder is {model_name!r} (fingerprint "
                f"{model_fingerprint}, pooling {pooling})"
            )

    def search(self, query_vectors: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[list[Hit]]:
        """Top-k hits per query vector, best first; ``score`` is the cosine similarity."""
        scores, iids = self.vectors.search(query_vectors, k, allowed)
        return self.hits(scores, iids)

    def hits(self, scores: np.ndarray, iids: np.ndarray) -> list[list[Hit]]:
        """Join (scores, ids) rows with the stored documents."""
        wanted = {int(i) for i in iids.ravel() if i >= 0}
        docs = self.docs.get(wanted)
        out: list[list[Hit]] = []
        for row_scores, row_ids in zip(scores, iids, strict=True):
            row: list[Hit] = []
            for score, iid in zip(row_scores, row_ids, strict=True):
                doc = docs.get(int(iid))
                if doc is None:
                    continue
                row.append(Hit(doc.id, doc.text, float(score), doc.metadata, doc.iid, doc.doc_id, doc.start, doc.end))
            out.append(row)
        return out


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def quick_problems(directory: Path, manifest: Manifest) -> list[str]:
    """Cheap structural checks: files present, vectors shape and ids consistent with the manifest."""
    problems = [f"{name} is missing" for name in VERSION_FILES if not (directory / name).is_file()]
    if problems:
        return problems
    try:
        vectors = np.load(directory / VECTORS_FILE, mmap_mode="r")
        ids = np.load(directory / IDS_FILE, mmap_mode="r")
    except (OSError, ValueError) as e:
        return [f"cannot read vectors/ids: {e}"]
    if vectors.shape != (manifest.count, manifest.dimension):
        problems.append(
            f"vectors.npy has shape {vectors.shape}, manifest says ({manifest.count}, {manifest.dimension})"
        )
    if ids.shape != (manifest.count,):
        problems.append(f"ids.npy has {ids.shape[0] if ids.ndim else 0} ids, manifest says {manifest.count}")
    elif manifest.count > 1 and not bool(np.all(np.diff(ids) > 0)):
        problems.append("ids.npy is not strictly ascending")
    return problems


def verify(path: str | Path, full: bool = True) -> list[str]:
    """Every integrity problem of an index version, as precise messages (empty list = sound).

    Checks: manifest readable and sane, files present, file checksums (``full``), FAISS count =
    SQLite count = manifest count, the FAISS ids equal the SQLite ids, vectors unit length, corpus
    checksum.
    """
    try:
        directory = resolve_version_dir(path)
        manifest = Manifest.read(directory)
    except Exception as e:  # any failure to even find the version is itself the finding
        return [str(e)]
    problems = quick_problems(directory, manifest)
    if problems:
        return problems
    if full:
        for name, expected in sorted(manifest.files.items()):
            actual = file_sha256(directory / name)
            if actual != expected:
                problems.append(f"{name}: sha256 {actual[:12]}… differs from the manifest's {expected[:12]}…")
    try:
        vi = VectorIndex.load(directory, manifest.index_type, manifest.index_params, mmap=True)
    except CorruptIndexError as e:
        return [*problems, str(e)]
    if vi.ntotal != manifest.count:
        problems.append(f"FAISS holds {vi.ntotal} vectors, manifest says {manifest.count}")
    try:
        conn = sqlite3.connect(f"file:{directory / DOCS_DB}?mode=ro", uri=True)
        sql_ids = np.fromiter((r[0] for r in conn.execute("SELECT iid FROM docs ORDER BY iid")), dtype=np.int64)
        checksum = corpus_checksum(conn)
        conn.close()
    except sqlite3.DatabaseError as e:
        return [*problems, f"{DOCS_DB} is not a readable SQLite database: {e}"]
    if len(sql_ids) != manifest.count:
        problems.append(f"SQLite holds {len(sql_ids)} sentences, manifest says {manifest.count}")
    if not np.array_equal(sql_ids, np.asarray(vi.ids)):
        missing = np.setdiff1d(vi.ids, sql_ids)[:5].tolist()
        extra = np.setdiff1d(sql_ids, vi.ids)[:5].tolist()
        problems.append(f"FAISS ids and SQLite ids differ (in FAISS only: {missing}; in SQLite only: {extra})")
    elif manifest.count and hasattr(vi.index, "id_map"):
        faiss_ids = np.sort(_faiss_ids(vi.index))
        if not np.array_equal(faiss_ids, sql_ids):
            problems.append("the FAISS index's own id map differs from ids.npy")
    if checksum != manifest.corpus_checksum:
        problems.append(
            f"corpus checksum {checksum[:12]}… differs from the manifest's {manifest.corpus_checksum[:12]}…"
        )
    if manifest.count:
        sample = np.asarray(vi.vectors[: min(1000, manifest.count)], dtype=np.float32)
        norms = np.linalg.norm(sample, axis=1)
        if not np.allclose(norms, 1.0, atol=1e-3):
            problems.append("stored vectors are not unit length (normalized=true in the manifest)")
    if manifest.dimension != vi.dim:
        problems.append(f"vectors have dimension {vi.dim}, manifest says {manifest.dimension}")
    return problems


def _faiss_ids(index: Any) -> np.ndarray:
    import faiss

    return faiss.vector_to_array(index.id_map).astype(np.int64)
