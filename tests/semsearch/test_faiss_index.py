"""FAISS index types on seeded clustered data: recall vs exact, stable ids, filters, save/load."""

from __future__ import annotations

import numpy as np
import pytest

from semsearch.errors import InvalidInputError
from semsearch.index.ann import VectorIndex, auto_index_type, default_nlist, resolve_params


def clustered(n: int, d: int = 64, clusters: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around random centres (like real embeddings: structured, not uniform noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.integers(0, n, 200)] + 0.2 * rng.standard_normal((200, d)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return x, q


@pytest.fixture(scope="module")
def data():
    x, q = clustered(20_000)
    ids = np.arange(len(x), dtype=np.int64) * 10 + 7  # sparse, non-positional ids
    exact = VectorIndex.build(x, ids, "flat")
    scores, truth = exact.search(q, 10)
    return x, q, ids, truth, scores


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth, strict=True)]))


@pytest.mark.parametrize(
    "index_type,minimum",
    [("hnsw", 0.97), ("ivf", 0.95), ("sq8", 0.97), ("pq", 0.95), ("hnsw-sq8", 0.97)],
)
def test_recall_against_exact(data, index_type, minimum):
    x, q, ids, truth, _ = data
    vi = VectorIndex.build(x, ids, index_type)
    scores, found = vi.search(q, 10)
    assert recall(found, truth) >= minimum
    assert np.isin(found, ids).all()  # ids are ours, never row positions
    # Compressed types rescore with exact vectors: reported scores are true cosines.
    rows = vi.rows_of(found[:, 0])
    np.testing.assert_allclose(scores[:, 0], np.einsum("md,md->m", q, x[rows]), atol=1e-5)


def test_binary_with_rescoring_on_real_embeddings(small_index):
    """Sign bits of real 384-d sentence embeddings + exact rescoring keep most of exact search's top-10."""
    vectors = np.load(next(small_index.glob("segments/*/vectors.npy")))
    corpus, queries = vectors[:250], vectors[250:]
    ids = np.arange(250, dtype=np.int64) * 3
    _, truth = VectorIndex.build(corpus, ids, "flat").search(queries, 10)
    binary = VectorIndex.build(corpus, ids, "binary")
    assert binary.index.code_size == 384 // 8  # 32x smaller than float32
    assert recall(binary.search(queries, 10)[1], truth) >= 0.9


def test_exact_scores_are_cosines_sorted(data):
    x, q, _, truth, scores = data
    rows = (truth - 7) // 10
    np.testing.assert_allclose(scores, np.einsum("md,mkd->mk", q, x[rows]), atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivf", "sq8"])
@pytest.mark.parametrize("share", [0.001, 0.5])
def test_filtered_search_is_true_top_k(data, index_type, share):
    x, q, ids, _, _ = data
    vi = VectorIndex.build(x, ids, index_type)
    rng = np.random.default_rng(1)
    allowed = np.sort(rng.choice(ids, size=int(len(ids) * share), replace=False))
    k = 10
    _, found = vi.search(q[:20], k, allowed=allowed)
    rows = (allowed - 7) // 10
    brute = q[:20] @ x[rows].T
    expected = allowed[np.argsort(-brute, axis=1)[:, :k]]
    assert found.shape == (20, k) and np.isin(found, allowed).all()
    if index_type in ("flat",) or share <= 0.01:
        np.testing.assert_array_equal(np.sort(found, 1), np.sort(expected, 1))
    else:
        assert recall(found, expected) >= 0.9


def test_save_load_mmap_round_trip(tmp_path, data):
    x, q, ids, _, _ = data
    for index_type in ("flat", "hnsw", "binary"):
        d = tmp_path / index_type
        d.mkdir()
        np.save(d / "vectors.npy", x)
        vi = VectorIndex.build(np.load(d / "vectors.npy", mmap_mode="r"), ids, index_type)
        vi.save(d)
        loaded = VectorIndex.load(d, index_type, vi.params, mmap=True)
        assert loaded.ntotal == len(x)
        np.testing.assert_array_equal(loaded.search(q, 10)[1], vi.search(q, 10)[1])


def test_params_and_presets():
    assert resolve_params("ivf", 100_000, 384)["nlist"] == default_nlist(100_000) == 1264
    assert resolve_params("hnsw", 10, 384, {"M": "16"})["M"] == 16
    with pytest.raises(InvalidInputError, match="valid: M, ef_construction"):
        resolve_params("hnsw", 10, 384, {"bogus": 1})
    with pytest.raises(InvalidInputError, match="choose one of: flat, hnsw"):
        resolve_params("annoy", 10, 384)
    assert [auto_index_type(n) for n in (1_000, 20_000, 20_001, 1_000_000, 5_000_000)] == [
        "flat",
        "flat",
        "hnsw-sq8",
        "hnsw-sq8",
        "binary",
    ]
