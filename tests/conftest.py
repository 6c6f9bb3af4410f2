"""Shared fixtures: one real encoder per session, small real corpora, small real indexes."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from semsearch.index.store import Record

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample" / "wordnet_glosses.jsonl.gz"


def sample_rows(n: int) -> list[dict]:
    """The first ``n`` rows of the bundled WordNet sample (real sentences with metadata)."""
    rows = []
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as fh:
        for line in fh:
            rows.append(json.loads(line))
            if len(rows) == n:
                break
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def encoder():
    from semsearch.models.encoder import Encoder

    return Encoder()


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "small.jsonl", sample_rows(300))


@pytest.fixture(scope="session")
def small_index(tmp_path_factory, small_corpus) -> Path:
    """A published flat index over 300 WordNet glosses (do not modify; copy it to mutate)."""
    from indexer.pipeline import BuildOptions, run_build

    root = tmp_path_factory.mktemp("index") / "idx"
    run_build(BuildOptions(inputs=[small_corpus], output=root, progress=False))
    return root


# ------------------------------------------------------------------ synthetic rows for the core writer

DIM = 16
META = {"model": "synthetic", "fingerprint": "0", "pooling": "mean", "backend": "torch", "max_seq_length": 0}
META["dimension"] = DIM
VOCAB = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "omicron",
    "pi",
    "rho",
    "sigma",
]


def same_scores(a: list, b: list, field: str = "score") -> None:
    """Same ``field`` of two hit lists to float32 rounding: FAISS picks its kernel (BLAS or not) by the
    size of what a segment scans, so the last bit of a cosine may differ between differently split segments."""
    for ra, rb in zip(a, b, strict=True):
        va = [getattr(h, field) for h in ra]
        vb = [getattr(h, field) for h in rb]
        assert [v is None for v in va] == [v is None for v in vb]
        assert np.allclose([v or 0.0 for v in va], [v or 0.0 for v in vb], rtol=0, atol=1e-6), field


def assert_same_search(one, many, queries: list[str], vecs: np.ndarray, cases) -> None:
    """``semsearch.search.modes.search`` over ``many`` (e.g. shards) returns ``one``'s hits, in order, with the
    same scores, for each ``(mode, filter)`` of ``cases``."""
    from semsearch.search.modes import search

    for mode, flt in cases:
        a = search(many, queries, vecs, 10, mode=mode, filter=flt)
        b = search(one, queries, vecs, 10, mode=mode, filter=flt)
        assert [[h.id for h in r] for r in a] == [[h.id for h in r] for r in b], (mode, flt)
        same_scores(a, b)


def synthetic_row(rng: np.random.Generator, ext_id: str) -> tuple[Record, np.ndarray]:
    """One seeded synthetic row: random words of VOCAB, a random unit vector of DIM, metadata g in 0..2."""
    text = " ".join(rng.choice(VOCAB, size=int(rng.integers(2, 9))))
    vec = rng.standard_normal(DIM).astype(np.float32)
    meta = {"g": int(rng.integers(0, 3))}
    return Record(text=text, ext_id=ext_id, metadata=meta), vec / np.linalg.norm(vec)


# ------------------------------------------------------------------ the fast tier: pytest -m "not slow"

# Fixtures that load the real model, build a real index or start a real server: a test using any of
# them (directly or through another fixture) is an integration test and gets the ``slow`` marker.
HEAVY_FIXTURES = frozenset(
    {"encoder", "small_index", "app_index", "app_client", "launch_server", "compat_reranker_dir", "untrained_reranker"}
)
# Modules whose tests run the CLI or the model without those fixtures (subprocesses, training, exports).
SLOW_MODULES = frozenset(
    {
        "test_backends",
        "test_cli",
        "test_cli_newcomer",
        "test_encoder",
        "test_eval_cli",
        "test_onnx_backend",
        "test_rerank",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        heavy = HEAVY_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        module = item.module.__name__.rsplit(".", 1)[-1] if getattr(item, "module", None) else ""
        if heavy or module in SLOW_MODULES or item.get_closest_marker("ray") or item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.slow)
