"""Deprecated home (one release) of the Ray Serve application, now the package :mod:`app.ray`.

``app/__main__.py`` and older callers import it from here."""

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
