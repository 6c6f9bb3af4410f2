"""FAISS index types, built by factory, with stable int64 ids and exact rescoring.

Every version stores the exact float32 vectors (``vectors.npy``, memory-mapped, row order =
ascending id in ``ids.npy``) next to the FAISS file. Compressed types (SQ8, PQ, binary) retrieve
``rescore`` × k candidates and re-rank them with the exact vectors, so ``score`` is always the
true cosine; filtered search scans the matching rows exactly when they are few, so a filter
never yields fewer than k results while k rows match.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import faiss as _faiss
import numpy as np

from semsearch.choices import IndexType, check_choice
from semsearch.errors import CorruptIndexError, InvalidInputError
from semsearch.index.format import IDS_FILE, INDEX_FILE, VECTORS_FILE

log = logging.getLogger(__name__)

# faiss-cpu ships partial SWIG stubs that reject valid calls (SearchParameters keyword arguments,
# downcast results); the module is used untyped here rather than sprinkling ignores.
faiss: Any = _faiss


INDEX_TYPES: tuple[str, ...] = get_args(IndexType)
# Params a user may set with --index-param key=value, and their types.
PARAM_TYPES: dict[str, type] = {
    "M": int,
    "ef_construction": int,
    "ef_search": int,
    "nlist": int,
    "nprobe": int,
    "pq_m": int,
    "rescore": int,
    "train_size": int,
}
# binary 20: recall@10 0.983 vs 0.963 with 10, for +0.07 ms per query at 100K (docs/benchmarks.md)
_RESCORE_DEFAULT = {"sq8": 4, "pq": 8, "hnsw-sq8": 4, "binary": 20}
EXACT_SCAN_MAX = 50_000  # filtered search: scan the matching rows exactly up to this many
EXCLUDE_OVERFETCH_MAX = 4096  # tombstones skipped by over-fetching; more go through an id selector


def auto_index_type(n: int) -> str:
    """The preset behind ``--index-type auto``: exact while a scan stays around 1-2 ms per query
    (flat: 8.8 ms at 100K on one core), graph + SQ8 codes up to 2M, binary codes beyond."""
    if n <= 20_000:
        return "flat"
    if n <= 2_000_000:
        return "hnsw-sq8"
    return "binary"


def default_nlist(n: int) -> int:
    """About 4·sqrt(n) lists, with at least 39 training points per centroid (FAISS's guideline)."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39 or 1))


def resolve_params(index_type: str, n: int, dim: int, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fill in defaults for an index type; unknown keys are an error that lists the valid ones."""
    check_choice(index_type, INDEX_TYPES, "index type")
    given = dict(given or {})
    for key in given:
        if key not in PARAM_TYPES:
            raise InvalidInputError(f"unknown index parameter {key!r}; valid: {', '.join(PARAM_TYPES)}")
    p: dict[str, Any] = {}
    if index_type in ("hnsw", "hnsw-sq8"):
        p.update(M=32, ef_construction=100, ef_search=128)
    if index_type in ("ivf", "pq"):
        nlist = given.get("nlist") or default_nlist(n)
        p.update(nlist=nlist, nprobe=max(1, min(nlist, max(8, nlist // 8))))
    if index_type == "pq":
        p.update(pq_m=next(m for m in (48, 32, 24, 16, 12, 8, 4, 2, 1) if dim % m == 0))
    if index_type in _RESCORE_DEFAULT:
        p["rescore"] = _RESCORE_DEFAULT[index_type]
    if index_type in ("ivf", "pq", "sq8", "hnsw-sq8"):
        p["train_size"] = min(n, 100_000)
    p.update({k: PARAM_TYPES[k](v) for k, v in given.items()})
    return p


def _new_faiss_index(index_type: str, dim: int, p: dict[str, Any]) -> Any:
    ip = faiss.METRIC_INNER_PRODUCT
    if index_type == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if index_type == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, p["M"], ip)
        inner.hnsw.efConstruction = p["ef_construction"]
        return faiss.IndexIDMap2(inner)
    if index_type == "hnsw-sq8":
        inner = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, p["M"], ip)
        inner.hnsw.efConstruction = p["ef_construction"]
        return faiss.IndexIDMap2(inner)
    if index_type == "sq8":
        return faiss.IndexIDMap2(faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, ip))
    if index_type == "ivf":
        return faiss.index_factory(dim, f"IVF{p['nlist']},Flat", ip)
    if index_type == "pq":
        return faiss.index_factory(dim, f"IVF{p['nlist']},PQ{p['pq_m']}x4fs", ip)
    if index_type == "binary":
        if dim % 8:
            raise InvalidInputError(f"binary index needs a dimension divisible by 8, got {dim}")
        return faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(dim))
    raise InvalidInputError(f"unknown index type {index_type!r}")


def to_binary(vectors: np.ndarray) -> np.ndarray:
    """Sign-quantise unit vectors to packed bits (the sentence-transformers binary recipe)."""
    return np.packbits(np.asarray(vectors) > 0, axis=1)


@dataclass
class VectorIndex:
    """A FAISS index plus the exact vectors and ids it was built from."""

    index: Any
    index_type: str
    params: dict[str, Any]
    vectors: np.ndarray  # (n, d) float32, usually a read-only memmap
    ids: np.ndarray  # (n,) int64 ascending
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        ids: np.ndarray,
        index_type: str,
        params: dict[str, Any] | None = None,
        block: int = 65_536,
        seed: int = 1234,
    ) -> VectorIndex:
        """Build (train if needed, then ``add_with_ids`` in blocks) from vectors and ascending ids."""
        n, dim = vectors.shape
        if len(ids) != n:
            raise InvalidInputError(f"{len(ids)} ids for {n} vectors")
        if index_type == "auto":
            index_type = auto_index_type(n)
        p = resolve_params(index_type, n, dim, params)
        index = _new_faiss_index(index_type, dim, p)
        if not index.is_trained and n:
            rng = np.random.default_rng(seed)
            sample_rows = np.sort(rng.choice(n, size=min(n, p.get("train_size", n)), replace=False))
            sample = np.ascontiguousarray(vectors[sample_rows], dtype=np.float32)
            if index_type in ("ivf", "pq") and len(sample) < p["nlist"]:
                raise InvalidInputError(
                    f"{index_type} with nlist={p['nlist']} needs at least {p['nlist']} vectors; the corpus has {n}"
                )
            log.info("training %s index on %d vectors", index_type, len(sample))
            index.train(sample)
        for start in range(0, n, block):
            chunk = np.ascontiguousarray(vectors[start : start + block], dtype=np.float32)
            chunk_ids = np.ascontiguousarray(ids[start : start + block], dtype=np.int64)
            if index_type == "binary":
                index.add_with_ids(to_binary(chunk), chunk_ids)
            else:
                index.add_with_ids(chunk, chunk_ids)
        vi = cls(index, index_type, p, vectors, np.asarray(ids, dtype=np.int64))
        vi.apply_search_params()
        return vi

    def apply_search_params(self) -> None:
        p = self.params
        if "ef_search" in p:
            faiss.downcast_index(self.index.index).hnsw.efSearch = p["ef_search"]
        if "nprobe" in p:
            faiss.extract_index_ivf(self.index).nprobe = p["nprobe"]

    def save(self, directory: Path) -> None:
        if self.index_type == "binary":
            faiss.write_index_binary(self.index, str(directory / INDEX_FILE))
        else:
            faiss.write_index(self.index, str(directory / INDEX_FILE))
        np.save(directory / IDS_FILE, self.ids)
        if not (directory / VECTORS_FILE).exists():
            np.save(directory / VECTORS_FILE, np.asarray(self.vectors, dtype=np.float32))

    @classmethod
    def load(cls, directory: Path, index_type: str, params: dict[str, Any], mmap: bool = True) -> VectorIndex:
        path = directory / INDEX_FILE
        if not path.is_file():
            raise CorruptIndexError(f"{path} is missing")
        try:
            vectors = np.load(directory / VECTORS_FILE, mmap_mode="r" if mmap else None)
            ids = np.load(directory / IDS_FILE)
        except (OSError, ValueError) as e:
            raise CorruptIndexError(f"cannot read vectors/ids in {directory}: {e}") from e
        try:
            if index_type == "binary":
                index = faiss.read_index_binary(str(path))
            else:
                flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
                try:
                    index = faiss.read_index(str(path), flags)
                except RuntimeError:
                    index = faiss.read_index(str(path))  # types without mmap support load into RAM
        except RuntimeError as e:
            raise CorruptIndexError(f"{path} is not a readable FAISS index: {e}") from e
        vi = cls(index, index_type, dict(params), vectors, ids)
        vi.apply_search_params()
        return vi

    def rows_of(self, iids: np.ndarray) -> np.ndarray:
        """Row positions in ``vectors`` of the given ids (they must exist)."""
        return np.searchsorted(self.ids, iids)

    def exact_scores(self, queries: np.ndarray, iids: np.ndarray) -> np.ndarray:
        """Cosine of each query (m, d) with the vectors of ``iids`` (m, c); -1 ids give -inf."""
        valid = iids >= 0
        rows = self.rows_of(np.where(valid, iids, self.ids[0] if len(self.ids) else 0))
        cand = np.asarray(self.vectors[rows.ravel()], dtype=np.float32).reshape(*iids.shape, -1)
        scores = np.einsum("md,mcd->mc", queries, cand)
        return np.where(valid, scores, -np.inf).astype(np.float32)

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None, excluded: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query, best first; missing slots have id -1.

        ``allowed``: restrict to these ids (a metadata filter). Few allowed rows are scanned exactly;
        many go through FAISS with an id selector, falling back to the exact scan if that returns
        fewer than k. ``excluded``: ids never to return (tombstones); a few are skipped by fetching
        k + len(excluded) and dropping them (exact for flat: the true top k of the live rows), many
        through an id selector.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        m = len(queries)
        if excluded is not None and len(excluded):
            excluded = np.asarray(excluded, dtype=np.int64)
            if allowed is not None:
                allowed = np.setdiff1d(np.asarray(allowed, dtype=np.int64), excluded)
            else:
                return self._search_excluding(queries, k, excluded)
        k = max(1, min(k, self.ntotal)) if self.ntotal else 0
        if k == 0 or m == 0:
            return np.zeros((m, 0), np.float32), np.zeros((m, 0), np.int64)
        if allowed is not None:
            allowed = np.unique(np.asarray(allowed, dtype=np.int64))
            if len(allowed) <= EXACT_SCAN_MAX or self.index_type in ("binary", "pq"):  # no id selectors there
                return self._exact_subset(queries, k, allowed)
            scores, iids = self._ann(queries, k, allowed)
            if (iids[:, : min(k, len(allowed))] < 0).any():
                return self._exact_subset(queries, k, allowed)
            return scores, iids
        return self._ann(queries, k, None)

    def _search_excluding(self, queries: np.ndarray, k: int, excluded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m = len(queries)
        live = self.ntotal - int(np.isin(excluded, self.ids).sum())
        k = min(k, live)
        if k <= 0 or m == 0:
            return np.zeros((m, 0), np.float32), np.zeros((m, 0), np.int64)
        if len(excluded) > EXCLUDE_OVERFETCH_MAX and self.index_type not in ("binary", "pq"):
            batch = faiss.IDSelectorBatch(excluded)
            sel = faiss.IDSelectorNot(batch)
            scores, iids = self._ann(queries, k, None, selector=(sel, batch))
            if (iids[:, :k] < 0).any():  # the graph ran out of live neighbours: scan them exactly
                return self._exact_subset(queries, k, np.setdiff1d(self.ids, excluded))
            return scores, iids
        scores, iids = self._ann(queries, min(self.ntotal, k + len(excluded)), None)
        dead = np.isin(iids, excluded) | (iids < 0)
        scores = np.where(dead, -np.inf, scores)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        scores, iids = np.take_along_axis(scores, order, 1), np.take_along_axis(iids, order, 1)
        return scores.astype(np.float32), np.where(np.isfinite(scores), iids, -1)

    def _ann(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None, selector: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        rescore = int(self.params.get("rescore", 1))
        fetch = min(self.ntotal, k * rescore)
        if self.index_type == "binary":
            _, iids = self.index.search(to_binary(queries), fetch)
        else:
            if allowed is not None:
                selector = faiss.IDSelectorBatch(allowed)
            # ``selector`` (and what it wraps) stays referenced here until the search returns
            search_params = self._search_params(selector[0] if isinstance(selector, tuple) else selector)
            if search_params is not None:
                _, iids = self.index.search(queries, fetch, params=search_params)
            else:
                scores, iids = self.index.search(queries, fetch)
                if rescore == 1:
                    return scores[:, :k], iids[:, :k]
        scores = self.exact_scores(queries, iids)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, 1), np.take_along_axis(iids, order, 1)

    def _search_params(self, sel: Any) -> Any:
        if sel is None:
            return None
        p = self.params
        if "ef_search" in p:
            return faiss.SearchParametersHNSW(sel=sel, efSearch=max(p["ef_search"], 2 * p.get("M", 32)))
        if "nprobe" in p:
            return faiss.SearchParametersIVF(sel=sel, nprobe=p["nprobe"])
        return faiss.SearchParameters(sel=sel)

    def _exact_subset(self, queries: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m = len(queries)
        allowed = allowed[np.isin(allowed, self.ids)]
        if len(allowed) == 0:
            return np.zeros((m, 0), np.float32), np.zeros((m, 0), np.int64)
        vecs = np.asarray(self.vectors[self.rows_of(allowed)], dtype=np.float32)
        scores = queries @ vecs.T
        kk = min(k, len(allowed))
        top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        top_scores = np.take_along_axis(scores, top, 1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        return np.take_along_axis(top_scores, order, 1), allowed[np.take_along_axis(top, order, 1)]
