"""Ray, for real: a local 2-node cluster on the loopback interface, driven through the CLIs.

``ray.cluster_utils.Cluster`` starts a head and a second node on 127.0.0.1 (with
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` Ray keeps the loopback address instead of the machine's
routable one); ``indexer build --engine ray`` and ``python -m app --engine ray`` join it by its
address, as they would a real cluster. Checked here:

* a 2-shard Ray build (2 encoder actors, one per node) equals a local build of the same rows:
  count, corpus checksum, rejects, ``verify``, and identical search results (dense, lexical,
  hybrid, filtered);
* the sharded Ray Serve service answers the plain service's HTTP contract with the same results
  as the single-index service, its errors, and hot reload of a version published by ``add``;
* killing a shard replica's process gives 503 ``shard_unavailable`` until Ray Serve has restarted
  it, then full results again.

The cluster is shared by the tests of this module and always shut down.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from _ray_cluster import ENV, cluster_fixture, ray  # noqa: F401 (the fixture)
from conftest import assert_same_search, sample_rows, write_jsonl

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]  # the first test also pays for the cluster and builds
QUERIES = ["a large wild cat", "a musical instrument with strings", "feeling of sadness", "body of water"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    rows = sample_rows(300)
    rows.insert(150, {"id": "empty-row", "text": "   "})  # a reject, reported the same way by both engines
    return write_jsonl(tmp_path_factory.mktemp("raycorpus") / "rows.jsonl", rows)


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "indexer", *args], env=ENV, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def builds(cluster, corpus, tmp_path_factory):
    """(local build, 2-shard Ray build) of the same rows."""
    base = tmp_path_factory.mktemp("raybuilds")
    local, sharded = base / "local", base / "sharded"
    common = ["--input", str(corpus), "--backend", "torch", "--chunk-size", "100", "--no-progress"]
    r = _cli("build", *common, "--output", str(local))
    assert r.returncode == 0, r.stderr
    r = _cli(
        "build",
        *common,
        "--output",
        str(sharded),
        "--engine",
        "ray",
        "--ray-address",
        cluster.address,
        "--shards",
        "2",
        "--encoders",
        "2",
        "--cpus-per-encoder",
        "0.75",  # two actors cannot share a 1-CPU node: one per node
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "published v000001: 300 sentences" in r.stdout and "1 rows rejected" in r.stdout
    return local, sharded


def test_ray_build_equals_local_build(builds, encoder):
    from semsearch.index.layout import IndexRoot
    from semsearch.index.manifest import Manifest
    from semsearch.search.reader import SearchIndex, verify
    from semsearch.search.sharded import load_local

    local, sharded = builds
    a, b = Manifest.read(IndexRoot(local).resolve()), Manifest.read(IndexRoot(sharded).resolve())
    assert (b.count, b.corpus_checksum, b.dimension, b.model_fingerprint) == (
        a.count,
        a.corpus_checksum,
        a.dimension,
        a.model_fingerprint,
    )
    assert b.shards == {"count": 2, "key": "sha1-8"} and sorted(e["shard"] for e in b.segments) == [0, 1]
    assert b.build["engine"] == "ray" and b.build["encoders"] == 2 and b.build["encoder_nodes"] == 2
    assert b.build["rejects"] == a.build["rejects"] == 1
    rejects = [json.loads(p.read_text()) for p in (sorted((r / "rejects").glob("*.jsonl"))[0] for r in builds)]
    assert rejects[0] == rejects[1]
    assert verify(sharded) == []
    vecs = encoder.encode(QUERIES)
    one, many = SearchIndex.load(local), load_local(sharded)
    try:
        tops = {"lexname": "noun.Tops"}
        cases = [("dense", None), ("lexical", None), ("hybrid", None), ("dense", tops), ("hybrid", tops)]
        assert_same_search(one, many, QUERIES, vecs, cases)
    finally:
        one.close()
        many.close()


def test_ray_build_reports_an_unreachable_cluster(corpus, tmp_path):
    free = _free_port()
    r = _cli(
        "build", "--input", str(corpus), "--output", str(tmp_path / "x"), "--engine", "ray",
        "--ray-address", f"127.0.0.1:{free}", "--no-progress", "--backend", "torch", timeout=180,
    )  # fmt: skip
    assert r.returncode == 1
    assert "error: cannot reach the Ray cluster at 127.0.0.1:" in r.stderr
    assert not (tmp_path / "x" / "current").exists()


# ------------------------------------------------------------------------------------ serving


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _service(args: list[str], ready_timeout: float = 240):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", *args, "--port", str(port), "--threads", "1", "--no-access-log"],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/ready", timeout=5).status_code == 200:
                    break
            assert time.monotonic() < deadline, "service did not become ready"
            time.sleep(0.5)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _results(body: dict) -> list:
    return [(h["id"], round(h["score"], 5)) for h in body["results"]]


def _shard_pid(cluster, shard: int) -> int:
    from ray import serve

    if not ray.is_initialized():
        ray.init(address=cluster.address, log_to_driver=False)
    return int(serve.get_deployment_handle(f"shard-{shard}", app_name="semsearch").pid.remote().result(timeout_s=30))


@pytest.fixture(scope="module")
def plain_results(builds):
    """The single-index service's answers (the contract the sharded service must match)."""
    local, _ = builds
    out = {}
    with _service(["--index", str(local)]) as (url, _):
        for name, body in _requests():
            out[name] = httpx.post(url + body[0], json=body[1], timeout=60).json()
        out["bad_k"] = httpx.post(url + "/search", json={"query": "x", "k": 0}, timeout=60)
    return out


def _requests():
    yield "dense", ("/search", {"query": QUERIES[0], "k": 10})
    yield "lexical", ("/search", {"query": QUERIES[1], "k": 10, "mode": "lexical"})
    yield "hybrid", ("/search", {"query": QUERIES[2], "k": 10, "mode": "hybrid"})
    yield "filter", ("/search", {"query": QUERIES[3], "k": 5, "filter": {"lexname": "noun.Tops"}})
    yield "batch", ("/search/batch", {"queries": QUERIES, "k": 5, "mode": "hybrid"})


def test_sharded_serving_same_contract_kill_and_reload(cluster, builds, plain_results, tmp_path):
    # a private copy: this test publishes v000002 into it, and the module's builds stay as built
    sharded = tmp_path / "sharded"
    shutil.copytree(builds[1], sharded, symlinks=True)
    args = ["--index", str(sharded), "--engine", "ray", "--ray-address", cluster.address]
    args += ["--replica-cpus", "0.25", "--shard-timeout-s", "8", "--reload-poll-s", "1"]
    with _service(args) as (url, proc):
        # the same HTTP contract and the same results as the single-index service
        for name, (path, body) in _requests():
            got = httpx.post(url + path, json=body, timeout=60)
            assert got.status_code == 200, got.text
            want = plain_results[name]
            if name == "batch":
                assert [_results({"results": r}) for r in got.json()["results"]] == [
                    _results({"results": r}) for r in want["results"]
                ]
            else:
                assert _results(got.json()) == _results(want), name
                assert got.json()["results"] and set(got.json()) == set(want)
        bad = httpx.post(url + "/search", json={"query": "x", "k": 0}, timeout=60)
        assert bad.status_code == plain_results["bad_k"].status_code == 422
        assert bad.json()["error"]["code"] == plain_results["bad_k"].json()["error"]["code"]
        assert httpx.get(url + "/search", params={"q": QUERIES[0], "k": 3}, timeout=60).status_code == 200
        info = httpx.get(url + "/info", timeout=30).json()
        assert info["count"] == 300 and info["index_version"] == "v000001"
        assert "semsearch_http_requests_total" in httpx.get(url + "/metrics", timeout=30).text
        assert httpx.get(url + "/", timeout=30).status_code == 200  # the web page

        # one shard's only replica hangs (SIGSTOP): every request gets 503 within the shard timeout. A
        # plain kill cannot test this: Serve may restart the replica inside the timeout on a fast machine
        want = _results(plain_results["dense"])
        pid = _shard_pid(cluster, 0)
        os.kill(pid, signal.SIGSTOP)
        try:
            for _ in range(2):
                r = httpx.post(url + "/search", json={"query": QUERIES[0], "k": 10}, timeout=60)
                assert r.status_code == 503, r.text
                error = r.json()["error"]
                assert error["code"] == "shard_unavailable" and error["detail"]["missing"] == [0]
            assert httpx.get(url + "/health", timeout=30).status_code == 200  # the ingress itself is fine
        finally:
            os.kill(pid, signal.SIGKILL)  # now the replica dies: Serve restarts it and full results return
        statuses = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            r = httpx.post(url + "/search", json={"query": QUERIES[0], "k": 10}, timeout=60)
            statuses.append(r.status_code)
            assert r.status_code in (200, 503), r.text
            if r.status_code == 503:
                assert r.json()["error"]["code"] == "shard_unavailable"
            else:
                assert _results(r.json()) == want  # never a silently partial answer
                break
            time.sleep(0.5)
        assert statuses[-1] == 200, statuses
        assert _shard_pid(cluster, 0) != pid

        # hot reload: `add` publishes v000002 (rows routed to their shards); each shard loads its part
        extra = write_jsonl(tmp_path / "extra.jsonl", [{"id": "zz-new", "text": "a purple elephant playing chess"}])
        r = _cli("add", "--input", str(extra), "--index", str(sharded), "--no-progress")
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 60
        while httpx.get(url + "/info", timeout=30).json()["index_version"] != "v000002":
            assert time.monotonic() < deadline, "no reload"
            time.sleep(0.5)
        r = httpx.post(url + "/search", json={"query": "elephant playing chess", "k": 1}, timeout=60)
        assert r.status_code == 200, r.text
        top = r.json()
        assert top["results"][0]["id"] == "zz-new" and top["index_version"] == "v000002"
    assert proc.returncode == 0  # SIGTERM: the Serve application was torn down cleanly


def _two_shard_index(path: Path) -> Path:
    """A synthetic 2-shard index (no model needed: the CPU check happens before anything loads)."""
    import numpy as np
    from conftest import META, synthetic_row

    from semsearch.index.layout import IndexRoot
    from semsearch.index.writer import IndexWriter

    rng = np.random.default_rng(5)
    root = IndexRoot(path)
    with root.lock():
        writer = IndexWriter(root, "build", META, {"type": "flat", "params": {}}, shards=2)
        rows = [synthetic_row(rng, f"r{i}") for i in range(20)]
        writer.add_chunk([r for r, _ in rows], np.stack([v for _, v in rows]), [], len(rows), "error")
        writer.commit({"kind": "build"})
    return path


def test_a_cluster_without_the_cpus_fails_fast_with_one_error_line(cluster, tmp_path):
    """2 shards x 1 CPU + the ingress's 0.5 on a 2-CPU cluster (two 1-CPU nodes) can never be scheduled: Serve
    would wait forever and HTTP requests hang. The service says so in one ``error:`` line within seconds,
    exits 1, and holds no CPU of the cluster afterwards. (A fitting one serves:
    test_sharded_serving_same_contract_kill_and_reload, --replica-cpus 0.25.)"""
    index = _two_shard_index(tmp_path / "idx")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "app", "--index", str(index), "--engine", "ray", "--ray-address", cluster.address,
         "--port", str(_free_port())],
        env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    took = time.monotonic() - started
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 1, done.stderr[-3000:]
    assert len(errors) == 1, done.stderr[-3000:]
    assert "needs 2.5 CPUs" in errors[0] and "has 2 free" in errors[0], errors[0]
    assert "--replica-cpus 0.5" in errors[0] and "--num-cpus 1" in errors[0] and "ingress" in errors[0], errors[0]
    assert took < 60, took
    if not ray.is_initialized():
        ray.init(address=cluster.address, log_to_driver=False)
    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU", 0.0) < ray.cluster_resources()["CPU"]:  # nothing holds a CPU
        assert time.monotonic() < deadline, (ray.available_resources(), ray.cluster_resources())
        time.sleep(0.5)
