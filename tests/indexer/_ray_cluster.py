"""The real local Ray cluster the Ray tests share: a head and a second node on 127.0.0.1.

Importing this module sets the environment Ray reads when it is imported (keep 127.0.0.1 rather
than the machine's routable address; no usage stats), and skips the importing test module where
Ray is not installed. ``ENV`` is that environment for the CLI subprocesses; ``cluster_fixture``
the module-scoped fixture ``cluster`` (import it into a test module to give that module a cluster of its
own).
"""

from __future__ import annotations

import os

import pytest
from conftest import REPO

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
ray = pytest.importorskip("ray")

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module", name="cluster")
def cluster_fixture():
    from ray.cluster_utils import Cluster

    store = 200 << 20
    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": store, "include_dashboard": False},
    )
    try:
        c.add_node(num_cpus=1, object_store_memory=store)
        c.wait_for_nodes()
        assert c.address.startswith("127.0.0.1:")
        yield c
    finally:
        ray.shutdown()  # this process's own connection, if a test made one
        c.shutdown()
