"""``python -m app --engine ray``: the same service over a sharded index, on Ray Serve.

Modules: ``shard`` (the shard replicas), ``fanout`` (the ingress's fan-out, partial results), ``ingress``
(the ingress deployment and its services), ``deploy`` (the CPU check, the application, the foreground
process). It imports nothing of ``indexer/``.

One Serve application, ``semsearch``:

* ``shard-<s>`` deployments, one per shard (``--shard-replicas`` R replicas each): a replica loads
  only its shard's segments (memory-mapped, :meth:`SearchIndex.load` with ``shard=s``) and answers
  the search primitives for its rows (:func:`semsearch.search.sharded.shard_call`). A replica keeps the
  last few versions it was asked for, loaded through one segment pool, so a new version costs the
  new segments only (hot reload per shard) and a request pinned to a version is answered from it.
* ``ingress``: the plain service's FastAPI app, built by the same factory
  (:func:`app.main.create_app`: same routes, schemas, errors, auth, metrics, web page), whose index
  is a :class:`~semsearch.search.sharded.ShardedIndex` over :class:`ServeFanout`: the app's micro-batcher
  encodes each batch of queries once, and every search primitive is one call per shard, sent to
  all shards at once (``DeploymentHandle.remote``) and gathered; dense top k merged by score, BM25
  in two phases with the collection's statistics, filters and lexical scoring run on the shards,
  reranking on the ingress. Its reload poller follows ``current`` as the plain service's does.

A shard with no healthy replica (its call fails or times out after ``shard_timeout_s``) makes the
request fail with 503 ``shard_unavailable``; with ``SEMSEARCH_SHARD_PARTIAL=true`` the request is
answered from the shards that did, and the JSON body says ``"partial": true`` with
``"shards": {"answered": [...], "missing": [...]}``. Ray Serve restarts a dead replica; full
results return once it has loaded its shard.

Ray is imported only in this package, and only when this engine runs.
"""

from __future__ import annotations

from app.ray.deploy import (
    APP_NAME,
    DEPLOY_TIMEOUT_S,
    INGRESS_CPUS,
    READY_TIMEOUT_S,
    build_application,
    check_resources,
    cpu_asks,
    ingress_cpus,
    run,
)
from app.ray.fanout import PartialLog, PartialMiddleware, ServeFanout
from app.ray.ingress import Ingress, ShardedServices, load_services, open_version
from app.ray.shard import KEEP_VERSIONS, ShardReplica

__all__ = [
    "APP_NAME",
    "DEPLOY_TIMEOUT_S",
    "INGRESS_CPUS",
    "KEEP_VERSIONS",
    "READY_TIMEOUT_S",
    "Ingress",
    "PartialLog",
    "PartialMiddleware",
    "ServeFanout",
    "ShardReplica",
    "ShardedServices",
    "build_application",
    "check_resources",
    "cpu_asks",
    "ingress_cpus",
    "load_services",
    "open_version",
    "run",
]
