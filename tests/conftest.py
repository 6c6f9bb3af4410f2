"""Shared fixtures: one real encoder per session, small real corpora, small real indexes."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample" / "wordnet_glosses.jsonl.gz"
SHARED_DATA = REPO.parent / "shared" / "data"


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
    from semsearch.encoder import Encoder

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
