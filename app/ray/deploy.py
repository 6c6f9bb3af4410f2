"""Deploying the Serve application: the CPU check before, the deployments, the bounded waits, the foreground process."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import urllib.request
from typing import Any

from app.ray.ingress import Ingress
from app.ray.shard import ShardReplica
from app.services import index_path
from app.settings import Settings
from semsearch.errors import SemsearchError
from semsearch.index import Manifest, resolve_version_dir, shard_count
from semsearch.ray_cluster import RayResourcesError, check_cpus, connect, free_cpus_per_node, import_ray

log = logging.getLogger(__name__)

APP_NAME = "semsearch"
INGRESS_CPUS = 0.5  # the most CPUs the ingress reserves (ingress_cpus)
DEPLOY_TIMEOUT_S = 300.0  # every replica started (models and shards loaded)
READY_TIMEOUT_S = 120.0  # then the HTTP proxy answers /health


def ingress_cpus(settings: Settings) -> float:
    """CPUs the ingress reserves: ``--replica-cpus``, at most :data:`INGRESS_CPUS` (so a 2-shard index fits
    a 2-CPU head with ``--replica-cpus 0.5``; a reservation is Ray's bookkeeping, not a cap on its use)."""
    return min(settings.replica_cpus, INGRESS_CPUS)


def cpu_asks(settings: Settings, shards: int) -> list[tuple[str, float]]:
    """``(actor, CPUs)`` of every replica the application starts: each shard's replicas and the ingress."""
    asks = [(f"shard-{s}", settings.replica_cpus) for s in range(shards) for _ in range(settings.shard_replicas)]
    return [*asks, ("ingress", ingress_cpus(settings))]


def check_resources(ray: Any, settings: Settings, shards: int) -> None:
    """Raise :class:`RayResourcesError` (one line: CPUs needed and free, and what fixes it) when the cluster
    cannot place every replica: Serve would wait for the CPUs forever and HTTP requests would hang."""
    nodes = free_cpus_per_node(ray)
    fit = check_cpus(cpu_asks(settings, shards), nodes)
    if fit.fits:
        return
    cpus, replicas = settings.replica_cpus, settings.shard_replicas
    fixes = []
    smaller = next(
        (
            x
            for x in (round(cpus - 0.05 * i, 2) for i in range(1, int(cpus / 0.05)))
            if x > 0 and check_cpus(cpu_asks(settings.model_copy(update={"replica_cpus": x}), shards), nodes).fits
        ),
        None,
    )
    if smaller is not None:
        fixes.append(f"--replica-cpus {smaller:g}")
    if replicas > 1:
        fixes.append("fewer --shard-replicas")
    extra = max(1, math.ceil(sum(c for name, c in cpu_asks(settings, shards) if name in fit.unplaced) - 1e-6))
    head = settings.ray_address or os.environ.get("RAY_ADDRESS") or "<head address>"
    fixes.append(f"add a node with {extra} more CPU(s) (ray start --address {head} --num-cpus {extra})")
    raise RayResourcesError(
        f"the Ray cluster cannot run this index's {shards} shard(s): it needs {fit.needed:g} CPUs "
        f"({shards} shard(s) x {replicas} replica(s) x {cpus:g} CPU (--replica-cpus) + {ingress_cpus(settings):g} "
        f"for the ingress) but has {fit.free:g} free ({' + '.join(f'{n:g}' for n in fit.nodes)} on "
        f"{len(fit.nodes)} node(s); {', '.join(fit.unplaced)} would never start); fix: {' or '.join(fixes)}. "
        "Nothing was deployed"
    )


def build_application(settings: Settings, shards: int) -> Any:
    """The Serve application: ``shard-0..N-1`` deployments and the ``ingress``."""
    from ray import serve

    options = {"num_cpus": settings.replica_cpus}
    threads = max(1, int(settings.replica_cpus))
    shard_apps = [
        serve.deployment(
            name=f"shard-{s}",
            num_replicas=settings.shard_replicas,
            ray_actor_options=options,
            health_check_period_s=2,
            health_check_timeout_s=30,
            graceful_shutdown_timeout_s=5,
        )(ShardReplica).bind(str(settings.index), s, threads)
        for s in range(shards)
    ]
    ingress = serve.deployment(
        name="ingress",
        num_replicas=1,
        ray_actor_options={"num_cpus": ingress_cpus(settings)},
        max_ongoing_requests=max(100, settings.max_queue),
        graceful_shutdown_timeout_s=5,
    )(serve.ingress()(Ingress))
    return ingress.bind(settings, *shard_apps)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _wait_ready(host: str, port: int, timeout_s: float) -> None:
    shown = f"[{host}]" if ":" in host else host
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{shown}:{port}/health", timeout=5) as r:
                if r.status == 200:
                    return
        except Exception as e:  # not up yet
            last = e
        time.sleep(0.5)
    raise SemsearchError(f"the Serve application did not answer on port {port} within {timeout_s:.0f}s: {last}")


def _error(message: str) -> None:
    """The one ``error:`` line a start-up failure prints (stderr), as the indexer CLI does."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()


def _wait_running(serve: Any, timeout_s: float) -> None:
    """Wait (at most ``timeout_s``) until the application's replicas all run; a failed or stuck deployment
    raises with Serve's own reason (e.g. a replica that cannot be scheduled)."""
    deadline = time.monotonic() + timeout_s
    while True:
        app = serve.status().applications.get(APP_NAME)
        state = str(getattr(app, "status", "MISSING"))
        if state.endswith("RUNNING"):
            return
        if state.endswith("DEPLOY_FAILED") or time.monotonic() >= deadline:
            stuck = {
                name: f"{d.status}: {d.message}".strip().rstrip(":")
                for name, d in (getattr(app, "deployments", None) or {}).items()
                if not str(d.status).endswith("HEALTHY")
            }
            why = "; ".join(f"{n}: {m}" for n, m in stuck.items()) or getattr(app, "message", "") or state
            if state.endswith("DEPLOY_FAILED"):
                raise SemsearchError(f"the Serve application failed to deploy: {why}")
            raise SemsearchError(f"the Serve application was not running after {timeout_s:.0f}s: {why}")
        time.sleep(0.5)


def run(settings: Settings) -> int:
    """Check, deploy, announce, serve until SIGTERM/SIGINT, tear down. Returns the exit status.

    Every start-up wait is bounded; a start-up failure prints one ``error:`` line, leaves nothing deployed
    and returns 1."""
    try:
        ray = import_ray("ray.serve", flag="--engine ray")
        manifest = Manifest.read(resolve_version_dir(index_path(settings)))
        shards = shard_count(manifest.shards)
        connected = connect(ray, settings.ray_address, then="nothing was deployed")
    except SemsearchError as e:
        _error(e.message)
        return 1
    try:
        check_resources(ray, settings, shards)
    except SemsearchError as e:
        _error(e.message)
        if connected:
            ray.shutdown()
        return 1
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    from ray import serve
    from ray.serve.api import _run as serve_run  # serve.run without its unbounded wait (_blocking=False)

    try:
        port = settings.port or _free_port(settings.host)
        settings = settings.model_copy(update={"port": port})
        serve.start(http_options={"host": settings.host, "port": port}, proxy_location="HeadOnly")
        started = time.perf_counter()
        # serve.run waits for RUNNING without a bound (forever when a replica cannot be scheduled): deploy
        # without waiting, then wait with one
        serve_run(build_application(settings, shards), _blocking=False, name=APP_NAME, route_prefix="/")
        _wait_running(serve, DEPLOY_TIMEOUT_S)
        _wait_ready(settings.host, port, READY_TIMEOUT_S)
        shown = f"[{settings.host}]" if ":" in settings.host else settings.host
        log.info(
            "semsearch serving %s (%s, %d sentences, %d shard(s) x %d replica(s) on Ray Serve) at http://%s:%d/ "
            "(ready in %.1fs; Ctrl-C or SIGTERM to stop)",
            settings.index,
            manifest.version,
            manifest.count,
            shards,
            settings.shard_replicas,
            shown,
            port,
            time.perf_counter() - started,
        )
        while not stop.wait(0.5):
            pass
        log.info("stopping: deleting the Serve application")
        return 0
    except Exception as e:
        _error(f"cannot start: {getattr(e, 'message', None) or f'{type(e).__name__}: {e}'}; nothing is left deployed")
        return 1
    finally:
        with contextlib.suppress(Exception):
            serve.delete(APP_NAME)
        with contextlib.suppress(Exception):
            serve.shutdown()
        if connected:
            ray.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.info("semsearch stopped")
