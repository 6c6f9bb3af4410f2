"""``indexer build --engine ray`` when encoder actors die, and with an ANN index type (issue 12).

On the same real local 2-node cluster as ``test_ray.py`` (``_ray_cluster.cluster``, one per module), the build runs as
the CLI and the test SIGKILLs the encoder actor's process from outside (what the OOM killer or a lost
node does: no hook in the product):

* killed once while it encodes a batch: Ray restarts the actor and retries the batch, and the build
  completes with the local build's rows, vectors and checksum; being a 2-shard ``hnsw-sq8`` build of
  600 rows (both shards above ``MIN_TRAINED_ROWS``, so the segments really are HNSW-SQ8), its
  recall@10 against exact search is within 0.01 of the local build's;
* killed every time it encodes (past its restarts): one ``error:`` line, exit 1, and nothing
  published: ``current`` still names the previous version, which verifies; the committed chunks stay
  in staging for ``--resume`` (docs/scale.md).

The killer only touches this test process's own descendants (the cluster's worker processes).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from _ray_cluster import ENV, cluster_fixture  # noqa: F401 (the fixture)
from conftest import sample_rows, write_jsonl

pytestmark = [pytest.mark.ray, pytest.mark.timeout(2400)]  # the first test pays for the cluster and 2 builds

ROWS = 600  # 275 and 325 rows in the two shards: both above MIN_TRAINED_ROWS
K = 10


class ActorKiller(threading.Thread):
    """SIGKILLs Ray Data's encoder actor (``_MapWorker``) processes while they run a batch (``submit``).

    ``times``: how many kills at most (None: every time one runs a batch, until stopped).
    """

    def __init__(self, times: int | None) -> None:
        super().__init__(daemon=True)
        self.times = times
        self.kills: list[int] = []
        self.titles: set[str] = set()
        self.done = threading.Event()

    def run(self) -> None:
        me = psutil.Process()
        while not self.done.is_set() and (self.times is None or len(self.kills) < self.times):
            for p in me.children(recursive=True):
                try:
                    title = " ".join(p.cmdline())
                except psutil.Error:
                    continue
                if not title.startswith("ray::") or "MapWorker" not in title:
                    continue
                self.titles.add(title)
                if "submit" in title and p.pid not in self.kills:
                    os.kill(p.pid, signal.SIGKILL)
                    self.kills.append(p.pid)
                    break
            time.sleep(0.02)

    def __enter__(self) -> ActorKiller:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join(10)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("faultcorpus") / "rows.jsonl", sample_rows(ROWS))


COMMON = ["--backend", "torch", "--index-type", "hnsw-sq8", "--chunk-size", "50", "--no-progress"]


def _build(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "indexer", "build", *args, *COMMON],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _ray(cluster_address: str) -> list[str]:
    return ["--engine", "ray", "--ray-address", cluster_address, "--shards", "2", "--encoders", "1"]


@pytest.fixture(scope="module")
def local_build(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("faultlocal") / "local"
    r = _build("--input", str(corpus), "--output", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def killed_once_build(cluster, corpus, local_build, tmp_path_factory):
    """A 2-shard Ray build whose encoder actor was SIGKILLed once in the middle of a batch."""
    out = tmp_path_factory.mktemp("faultray") / "sharded"
    with ActorKiller(times=1) as killer:
        r = _build("--input", str(corpus), "--output", str(out), *_ray(cluster.address))
    assert len(killer.kills) == 1, f"no encoder actor was seen running a batch: {sorted(killer.titles)}"
    return out, r


def test_a_killed_encoder_actor_is_retried_and_the_build_completes(killed_once_build, local_build):
    from semsearch.index.layout import IndexRoot
    from semsearch.index.manifest import Manifest
    from semsearch.search.reader import SearchIndex, verify
    from semsearch.search.sharded import load_local

    out, r = killed_once_build
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"published v000001: {ROWS} sentences" in r.stdout
    a, b = Manifest.read(IndexRoot(local_build).resolve()), Manifest.read(IndexRoot(out).resolve())
    assert (b.count, b.corpus_checksum, b.build["rejects"]) == (a.count, a.corpus_checksum, a.build["rejects"])
    assert b.shards == {"count": 2, "key": "sha1-8"} and b.build["engine"] == "ray"
    assert verify(out) == []
    one, many = SearchIndex.load(local_build), load_local(out)
    try:
        ids_a, vecs_a = one.live_vectors()
        parts = [s.live_vectors() for s in many.fanout.indexes]
        ids_b = np.concatenate([p[0] for p in parts])
        vecs_b = np.concatenate([p[1] for p in parts])[np.argsort(ids_b)]
        assert np.array_equal(np.sort(ids_b), ids_a)  # every row once: the retried batch was not doubled
        assert np.allclose(vecs_a, vecs_b, rtol=0, atol=1e-5)
        docs_a, docs_b = one.docs_for(ids_a), many.docs_for(ids_a)
        assert {i: (d.id, d.text) for i, d in docs_a.items()} == {i: (d.id, d.text) for i, d in docs_b.items()}
    finally:
        one.close()
        many.close()


def _recall(index, queries: np.ndarray, ids: np.ndarray, vectors: np.ndarray) -> float:
    exact = ids[np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :K]]
    _, found = index.dense(queries, K)
    return float(np.mean([len(set(f.tolist()) & set(e.tolist())) / K for f, e in zip(found, exact, strict=True)]))


def test_an_ann_ray_build_is_recall_equivalent_to_a_local_build(killed_once_build, local_build, encoder):
    from semsearch.search.reader import SearchIndex
    from semsearch.search.sharded import load_local

    out, r = killed_once_build
    assert r.returncode == 0, r.stderr[-3000:]
    queries = encoder.encode([row["text"] for row in sample_rows(ROWS + 100)[ROWS:]])
    one, many = SearchIndex.load(local_build), load_local(out)
    try:
        types = [v.segment.meta.index_type for s in (one, *many.fanout.indexes) for v in s.views]
        assert types == ["hnsw-sq8"] * 3, types  # one local segment, one per shard: no flat fallback
        assert all(v.segment.count >= 256 for s in many.fanout.indexes for v in s.views)
        ids, vectors = one.live_vectors()
        local, sharded = _recall(one, queries, ids, vectors), _recall(many, queries, ids, vectors)
    finally:
        one.close()
        many.close()
    print(f"recall@{K} vs exact: local {local:.4f}, 2-shard Ray {sharded:.4f}")
    assert abs(local - sharded) <= 0.01, (local, sharded)
    assert local >= 0.9  # the ANN index works at all (the comparison above is the point)


def test_an_actor_that_dies_every_time_fails_the_build_and_publishes_nothing(cluster, corpus, local_build, tmp_path):
    from semsearch.index.layout import IndexRoot
    from semsearch.search.reader import verify

    out = tmp_path / "idx"
    shutil.copytree(local_build, out, symlinks=True)  # a published v000001 the failed build must not touch
    before = IndexRoot(out).resolve().name
    with ActorKiller(times=None) as killer:
        r = _build("--input", str(corpus), "--output", str(out), *_ray(cluster.address))
    assert len(killer.kills) >= 3, sorted(killer.titles)  # the first life and both restarts
    assert r.returncode == 1, (r.stdout, r.stderr[-3000:])
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.stderr[-3000:]
    assert "the Ray build failed and nothing was published" in errors[0] and "--resume" in errors[0]
    assert "Traceback" not in r.stderr
    assert IndexRoot(out).resolve().name == before == "v000001" and verify(out) == []
    assert not (out / "versions" / "v000002").exists()
    staged = [p.name for p in (out / "staging").iterdir()]
    assert len(staged) == 1 and staged[0].startswith("build-"), staged  # kept for --resume (documented)
