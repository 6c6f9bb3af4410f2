"""``python -m app --engine ray``: the same service over a sharded index, on Ray Serve.

One Serve application, ``semsearch``:

* ``shard-<s>`` deployments, one per shard (``--shard-replicas`` R replicas each): a replica loads
  only its shard's segments (memory-mapped, :meth:`SearchIndex.load` with ``shard=s``) and answers
  the search primitives for its rows (:func:`semsearch.sharded.shard_call`). A replica keeps the
  last few versions it was asked for, loaded through one segment pool, so a new version costs the
  new segments only (hot reload per shard) and a request pinned to a version is answered from it.
* ``ingress``: the plain service's FastAPI app, built by the same factory
  (:func:`app.main.create_app`: same routes, schemas, errors, auth, metrics, web page), whose index
  is a :class:`~semsearch.sharded.ShardedIndex` over :class:`ServeFanout`: the app's micro-batcher
  encodes each batch of queries once, and every search primitive is one call per shard, sent to
  all shards at once (``DeploymentHandle.remote``) and gathered; dense top k merged by score, BM25
  in two phases with the collection's statistics, filters and lexical scoring run on the shards,
  reranking on the ingress. Its reload poller follows ``current`` as the plain service's does.

A shard with no healthy replica (its call fails or times out after ``shard_timeout_s``) makes the
request fail with 503 ``shard_unavailable``; with ``SEMSEARCH_SHARD_PARTIAL=true`` the request is
answered from the shards that did, and the JSON body says ``"partial": true`` with
``"shards": {"answered": [...], "missing": [...]}``. Ray Serve restarts a dead replica; full
results return once it has loaded its shard.

Ray is imported only here, and only when this engine runs.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.errors import ApiError
from app.services import IndexHolder, Services, encoder_for, set_threads, start_reranker
from app.settings import Settings
from semsearch.errors import CorruptIndexError, SemsearchError
from semsearch.layout import resolve_version_dir
from semsearch.manifest import MANIFEST, Manifest
from semsearch.ray_cluster import RayResourcesError, check_cpus, connect, free_cpus_per_node, import_ray
from semsearch.search_index import SearchIndex, SegmentPool
from semsearch.sharded import ShardedIndex, shard_call
from semsearch.sharding import shard_count

log = logging.getLogger(__name__)

APP_NAME = "semsearch"
INGRESS_CPUS = 0.5  # the most CPUs the ingress reserves (ingress_cpus)
DEPLOY_TIMEOUT_S = 300.0  # every replica started (models and shards loaded)
READY_TIMEOUT_S = 120.0  # then the HTTP proxy answers /health
KEEP_VERSIONS = 3  # versions a shard replica keeps loaded (the current one and in-flight predecessors)


# ------------------------------------------------------------------------------------ shard replicas


class ShardReplica:
    """A Serve replica of one shard: the shard's segments of the versions it is asked about."""

    def __init__(self, index: str, shard: int, threads: int) -> None:
        set_threads(threads)
        self.path = Path(index)
        self.shard = shard
        self.pool = SegmentPool()
        self._lock = threading.Lock()
        self._versions: collections.OrderedDict[str, SearchIndex] = collections.OrderedDict()
        self._index(resolve_version_dir(self.path).name)  # fail the replica now if the shard does not load

    def _version_dir(self, version: str) -> Path:
        if (self.path / MANIFEST).is_file():  # a version directory served as is
            return self.path
        return self.path / "versions" / version

    def _index(self, version: str) -> SearchIndex:
        with self._lock:
            index = self._versions.get(version)
            if index is not None:
                self._versions.move_to_end(version)
                return index
        index = SearchIndex.load(self._version_dir(version), mmap=True, pool=self.pool, shard=self.shard)
        with self._lock:
            if version in self._versions:  # loaded meanwhile by another request
                index.close()
                return self._versions[version]
            self._versions[version] = index
            while len(self._versions) > KEEP_VERSIONS:
                _, old = self._versions.popitem(last=False)
                old.close()
        log.info("shard %d: loaded version %s (%d segments)", self.shard, version, len(index.views))
        return index

    def call(self, version: str, method: str, *args: Any) -> Any:
        return shard_call(self._index(version), method, *args)

    def pid(self) -> int:
        return os.getpid()

    def check_health(self) -> None:
        if not self._versions:
            raise RuntimeError(f"shard {self.shard} has no version loaded")


# ------------------------------------------------------------------------------------ the ingress side


class PartialLog:
    """When fan-outs left shards out (monotonic time, shards), for the responses in flight then."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: collections.deque[tuple[float, frozenset[int]]] = collections.deque(maxlen=10_000)

    def record(self, missing: set[int]) -> None:
        with self._lock:
            self._events.append((time.monotonic(), frozenset(missing)))

    def since(self, t0: float) -> set[int]:
        with self._lock:
            return {s for t, missing in self._events if t >= t0 for s in missing}


class ServeFanout:
    """A version's search primitives sent to every shard deployment at once, then gathered."""

    def __init__(
        self, handles: list[Any], version: str, timeout_s: float, partial: bool, partial_log: PartialLog
    ) -> None:
        self.handles = handles
        self.version = version
        self.timeout_s = timeout_s
        self.partial = partial
        self.partial_log = partial_log

    @property
    def shards(self) -> int:
        return len(self.handles)

    def call(self, method: str, *args: Any) -> list[Any | None]:
        from ray import exceptions as ray_errors

        deadline = time.monotonic() + self.timeout_s
        responses = [h.call.remote(self.version, method, *args) for h in self.handles]
        out: list[Any | None] = []
        missing: dict[int, str] = {}
        for s, response in enumerate(responses):
            try:
                out.append(response.result(timeout_s=max(0.01, deadline - time.monotonic())))
            except (SemsearchError, ray_errors.RayTaskError):
                raise  # the shard's own error (a RayTaskError subclasses its cause): not an outage
            except (TimeoutError, ray_errors.RayError, RuntimeError) as e:
                with contextlib.suppress(Exception):
                    response.cancel()
                missing[s] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                out.append(None)
        if missing:
            log.warning("shards without an answer: %s", missing)
            if not self.partial or method == "stats":
                raise ApiError(
                    503,
                    "shard_unavailable",
                    f"shard(s) {sorted(missing)} of {self.shards} have no healthy replica right now; "
                    "retry shortly (or allow partial results: SEMSEARCH_SHARD_PARTIAL=true)",
                    {"missing": sorted(missing), "shards": self.shards},
                )
            self.partial_log.record(set(missing))
        return out


@dataclass
class ShardedServices(Services):
    """The ingress's services: encoder and reranker here, the index a :class:`ShardedIndex` over the
    shard deployments (``handles``), which each reload opens again. Made whole by :func:`load_services`."""

    handles: list[Any]
    settings: Settings
    partial_log: PartialLog

    def load_version(self, path: Path) -> Any:
        return open_version(path, self.encoder, self.handles, self.settings, self.partial_log)


def open_version(
    path: Path, encoder: Any, handles: list[Any], settings: Settings, partial_log: PartialLog
) -> ShardedIndex:
    """A version of the index over the running shard deployments, checked for ``encoder``."""
    directory = resolve_version_dir(path)
    manifest = Manifest.read(directory)
    if shard_count(manifest.shards) != len(handles):
        raise CorruptIndexError(
            f"index version {directory.name} has {shard_count(manifest.shards)} shard(s) but {len(handles)} shard "
            "deployments are running; restart the service to serve it"
        )
    fanout = ServeFanout(handles, directory.name, settings.shard_timeout_s, settings.shard_partial, partial_log)
    index = ShardedIndex(directory, manifest, fanout)  # gathers every shard's statistics (loads the version there)
    index.check_encoder(encoder.fingerprint, encoder.name, encoder.pooling)
    return index


def load_services(settings: Settings, handles: list[Any], partial_log: PartialLog) -> ShardedServices:
    """The plain service's startup (encoder, reranker, checks) with a sharded index."""
    set_threads(settings.threads)
    encoder = encoder_for(settings)
    index = open_version(settings.index, encoder, handles, settings, partial_log)
    reranker = start_reranker(settings, encoder, index)
    holder = IndexHolder(index)  # type: ignore[arg-type]
    services = ShardedServices(encoder, holder, reranker, SegmentPool(), handles, settings, partial_log)
    log.info(
        "ingress: serving %s (%s, %d sentences in %d shards)", index.directory, index.version, index.count, len(handles)
    )
    return services


class PartialMiddleware:
    """Adds ``"partial": true`` and the shards that answered to search responses that lacked shards."""

    PATHS = ("/search", "/search/batch")

    def __init__(self, app: Any, partial_log: PartialLog, shards: int) -> None:
        self.app = app
        self.partial_log = partial_log
        self.shards = shards

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] not in self.PATHS:
            await self.app(scope, receive, send)
            return
        t0 = time.monotonic()
        start: dict[str, Any] = {}
        body = bytearray()

        async def capture(message: Any) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            if message["type"] != "http.response.body":
                await send(message)
                return
            body.extend(message.get("body", b""))
            if message.get("more_body"):
                return
            missing = self.partial_log.since(t0)
            out = bytes(body)
            if missing and start.get("status") == 200:
                data = json.loads(out)
                data["partial"] = True
                data["shards"] = {
                    "answered": [s for s in range(self.shards) if s not in missing],
                    "missing": sorted(missing),
                }
                out = json.dumps(data).encode()
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(out)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": out, "more_body": False})

        await self.app(scope, receive, capture)


class Ingress:
    """The Serve ingress deployment: the plain service's app with a sharded index."""

    def __init__(self, settings: Settings, *handles: Any) -> None:
        self.settings = settings
        self.handles = list(handles)

    def __serve_build_asgi_app__(self) -> Any:
        from app.main import create_app

        partial_log = PartialLog()
        settings, handles = self.settings, self.handles
        app = create_app(settings, load=lambda: load_services(settings, handles, partial_log))
        app.add_middleware(PartialMiddleware, partial_log=partial_log, shards=len(handles))
        return app


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


# ------------------------------------------------------------------------------------ the foreground process


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
        manifest = Manifest.read(resolve_version_dir(settings.index))
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
