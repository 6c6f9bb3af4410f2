"""The Ray Serve ingress's fan-out and partial-result marking, without a cluster.

The shards are real (a 2-shard index loaded shard by shard); only the ``DeploymentHandle`` is
replaced, by an object with the same ``.call.remote(...).result(timeout_s=...)`` surface that runs
the shard in-process, or, for a shard "without a healthy replica", times out the way a handle
does. The real Serve path (cluster, replicas, kill and restart) is tests/indexer/test_ray.py.
"""

from __future__ import annotations

import os
import time

import httpx
import numpy as np
import pytest
from conftest import META, synthetic_row
from fastapi import FastAPI

# read when Ray is imported; the same as tests/indexer/test_ray.py sets, whichever module imports Ray first
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
pytest.importorskip("ray")

from app.errors import ApiError
from app.ray import PartialLog, PartialMiddleware, ServeFanout
from semsearch.index.layout import IndexRoot
from semsearch.index.manifest import Manifest
from semsearch.index.sharding import shard_of
from semsearch.index.writer import IndexWriter
from semsearch.search.modes import search
from semsearch.search.reader import SearchIndex
from semsearch.search.sharded import ShardedIndex, shard_call


class _Response:
    def __init__(self, fn):
        self.fn = fn

    def result(self, timeout_s=None):
        return self.fn()

    def cancel(self):
        pass


class _Handle:
    """A shard deployment's handle: answers from a loaded shard, or times out when ``down``."""

    def __init__(self, index: SearchIndex):
        self.index = index
        self.down = False
        self.call = self

    def remote(self, version, method, *args):
        if self.down:

            def fail():
                raise TimeoutError("no replica answered")

            return _Response(fail)
        return _Response(lambda: shard_call(self.index, method, *args))


class _Only:
    """A fan-out over one shard of another fan-out (the reference for partial results)."""

    def __init__(self, fanout, shard: int):
        self.fanout, self.shard = fanout, shard

    @property
    def shards(self) -> int:
        return 1

    def call(self, method, *args):
        h = self.fanout.handles[self.shard]
        return [h.call.remote("v1", method, *args).result()]


@pytest.fixture()
def two_shards(tmp_path):
    rng = np.random.default_rng(3)
    root = IndexRoot(tmp_path / "idx")
    with root.lock():
        writer = IndexWriter(root, "build", META, {"type": "flat", "params": {}}, shards=2)
        rows = [synthetic_row(rng, f"r{i}") for i in range(60)]
        writer.add_chunk([r for r, _ in rows], np.stack([v for _, v in rows]), [], len(rows), "error")
        writer.commit({"kind": "build"})
    shards = [SearchIndex.load(root.path, shard=s) for s in (0, 1)]
    yield root, shards
    for s in shards:
        s.close()


def _sharded(root, shards, partial: bool):
    log = PartialLog()
    handles = [_Handle(s) for s in shards]
    directory = root.resolve()
    index = ShardedIndex(directory, Manifest.read(directory), ServeFanout(handles, "v1", 1.0, partial, log))
    return index, handles, log


def test_a_missing_shard_is_503_by_default(two_shards):
    root, shards = two_shards
    index, handles, _ = _sharded(root, shards, partial=False)
    q = np.ones((1, 16), np.float32) / 4.0
    assert len(search(index, ["alpha"], q, 5)[0]) == 5
    handles[0].down = True
    with pytest.raises(ApiError) as e:
        search(index, ["alpha"], q, 5)
    assert e.value.status == 503 and e.value.code == "shard_unavailable"


def test_partial_results_come_from_the_shards_that_answered(two_shards):
    root, shards = two_shards
    index, handles, log = _sharded(root, shards, partial=True)
    q = np.ones((1, 16), np.float32) / 4.0
    t0 = time.monotonic()
    full = search(index, ["alpha beta"], q, 10, mode="dense")[0]
    assert log.since(t0) == set()
    handles[1].down = True
    part = search(index, ["alpha beta"], q, 10, mode="dense")[0]
    # the top 10 of shard 0's rows: what the whole index ranks among them, in the same order
    assert part and all(shard_of(h.id, 2) == 0 for h in part)
    whole = search(index.__class__(index.directory, index.manifest, _Only(index.fanout, 0)), ["x"], q, 60)[0]
    assert [h.id for h in part] == [h.id for h in whole][:10]
    assert any(shard_of(h.id, 2) == 1 for h in full)
    assert log.since(t0) == {1}


def test_partial_middleware_marks_the_responses_in_flight(two_shards):
    log = PartialLog()
    app = FastAPI()

    @app.post("/search")
    async def fake_search(missing: bool = False):
        if missing:
            log.record({1})
        return {"results": [], "took_ms": 1.0, "index_version": "v1", "reranked": False}

    wrapped = PartialMiddleware(app, partial_log=log, shards=2)
    transport = httpx.ASGITransport(app=wrapped)

    async def run():
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            whole = (await client.post("/search")).json()
            part = (await client.post("/search", params={"missing": True})).json()
            return whole, part

    import asyncio

    whole, part = asyncio.run(run())
    assert "partial" not in whole
    assert part["partial"] is True and part["shards"] == {"answered": [0], "missing": [1]}


def test_the_cpu_check_names_what_is_needed_free_and_the_fixes(monkeypatch, two_shards):
    """The start-up check of ``--engine ray`` (without a cluster: the free CPUs per node are given)."""
    from app.ray import deploy
    from app.settings import Settings
    from semsearch.ray_cluster import RayResourcesError, check_cpus

    settings = Settings(index=two_shards[0].path, engine="ray", ray_address="10.0.0.1:6379")
    assert deploy.ingress_cpus(settings) == 0.5  # the default --replica-cpus 1: a fractional ingress
    monkeypatch.setattr(deploy, "free_cpus_per_node", lambda ray: [1.0, 1.0])
    with pytest.raises(RayResourcesError) as e:
        deploy.check_resources(None, settings, shards=2)
    msg = e.value.message
    assert "needs 2.5 CPUs (2 shard(s) x 1 replica(s) x 1 CPU (--replica-cpus) + 0.5 for the ingress)" in msg, msg
    assert "has 2 free (1 + 1 on 2 node(s); ingress would never start)" in msg, msg
    assert "fix: --replica-cpus 0.5 or add a node with 1 more CPU(s) (ray start --address 10.0.0.1:6379" in msg, msg
    deploy.check_resources(None, settings.model_copy(update={"replica_cpus": 0.5}), shards=2)
    deploy.check_resources(None, settings, shards=1)  # 1 + 0.5 on two 1-CPU nodes
    # an actor's CPUs come from one node: 1.5 free in all, but no node has 1
    assert not check_cpus([("shard-0", 1.0)], [0.75, 0.75]).fits
    assert check_cpus([("a", 0.5), ("b", 0.5), ("c", 1.0)], [1.0, 1.0]).fits
