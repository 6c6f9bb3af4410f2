"""Collections: every index a service serves, loaded on first use, one model per (fingerprint, pooling, backend).

``--index DIR`` serves one collection (named by the directory), loaded at start-up as always.
``--data DIR`` serves every index directory directly under ``DIR`` (a directory holding ``current`` or a
``manifest.json``), named by its directory name; nothing is loaded at start-up but the directory
listing. A collection loads on its first request (its segments memory-mapped through a
:class:`~semsearch.search.SegmentPool` of its own, then checked like any startup: ``load_index``).

* **Shared models.** Collections whose manifests name the same (model fingerprint, pooling, backend)
  share one :class:`~semsearch.models.Encoder` and one :class:`~app.batcher.MicroBatcher` (each search
  job carries its collection's :class:`~app.services.IndexHolder`); another pooling gets its own
  encoder. A model stays loaded once loaded (models are few; collections are many).
* **Bounded memory.** With ``max_loaded_collections`` N > 0, loading one more unloads the least
  recently used collection that no request is using (``users`` counts requests between the collection
  dependency and their response); the reference-counted holder closes a version only once its last
  batch returns it.
* **Failure stays local.** A collection that fails to load or verify answers 503
  ``collection_unavailable`` for itself alone (its ``error`` in ``GET /collections/{name}``); it is
  tried again once its ``current`` version moves, or on ``POST /collections/{name}/admin/reload``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from app.batcher import MicroBatcher
from app.errors import ApiError
from app.metrics import Metrics
from app.reload import Reloader
from app.rerank_worker import RerankRunner
from app.security import COLLECTION_NAME, COLLECTION_NAME_MAX
from app.services import Services, encoder_for, encoder_key, reranker_for, set_threads, version_name, warm_up
from app.settings import Settings
from semsearch.errors import SemsearchError
from semsearch.index import MANIFEST, Manifest, resolve_version_dir
from semsearch.models import Encoder, Reranker

if TYPE_CHECKING:
    from app.runtime import Runtime

log = logging.getLogger(__name__)

DEFAULT_SETTING = "SEMSEARCH_DEFAULT_COLLECTION"


def valid_name(name: str) -> bool:
    return len(name) <= COLLECTION_NAME_MAX and COLLECTION_NAME.match(name) is not None


def is_index_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "current").exists() or (path / MANIFEST).is_file())


def scan(data: Path) -> dict[str, Path]:
    """The collections under ``data``: index directories with a valid name (others skipped with a log line)."""
    found: dict[str, Path] = {}
    with os.scandir(data) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            path = Path(entry.path)
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            if not valid_name(entry.name):
                log.warning("skipping %s: %r is not a collection name", path, entry.name)
            elif not is_index_dir(path):
                log.info("skipping %s: not an index directory (no `current`, no manifest.json)", path)
            else:
                found[entry.name] = path
    return found


def default_collection(settings: Settings, names: list[str]) -> str | None:
    """The collection the unprefixed routes act on (``--default-collection``, else the only one)."""
    if settings.default_collection is not None:
        if settings.default_collection not in names:
            raise SemsearchError(
                f"--default-collection {settings.default_collection!r} is not a collection under {settings.data} "
                f"(collections: {', '.join(names[:20]) or 'none'})"
            )
        return settings.default_collection
    return names[0] if len(names) == 1 else None


@dataclass
class SharedModel:
    """One encoder and its batcher, shared by the collections of one (fingerprint, pooling, backend)."""

    key: tuple[str, str, str]
    encoder: Encoder
    batcher: MicroBatcher
    collections: set[str] = field(default_factory=set)


@dataclass
class Collection:
    name: str
    path: Path
    runtime: Runtime | None = None
    error: dict[str, Any] | None = None
    users: int = 0
    last_used: float = 0.0
    pinned: bool = False  # the --index collection: loaded at start-up, never unloaded
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Catalog:
    """The served collections, their shared models and the loaded ones' runtimes."""

    def __init__(self, settings: Settings, metrics: Metrics, reranking: RerankRunner) -> None:
        self.settings = settings
        self.metrics = metrics
        self.reranking = reranking
        self.collections: dict[str, Collection] = {}
        self.default: str | None = None
        self.models: dict[tuple[str, str, str], SharedModel] = {}
        self._model_lock = asyncio.Lock()
        self.loads = 0
        self.unloads = 0

    # ------------------------------------------------------------------ set-up

    @classmethod
    def single(cls, base: Runtime) -> Catalog:
        """``--index``: the one collection, already loaded (the base runtime itself)."""
        from app.routes.collections import collection_name, index_root

        catalog = cls(base.settings, base.metrics, base.reranking)
        name = collection_name(base.settings)
        catalog.collections[name] = Collection(name, index_root(base.settings), base, pinned=True)
        encoder = base.services.encoder
        m = base.services.indexes.current.manifest
        key = encoder_key(base.settings, m)
        catalog.models[key] = SharedModel(key, encoder, base.batcher, {name})
        catalog.default = name
        base.catalog = catalog
        base.collection = name
        return catalog

    @classmethod
    def of_data(cls, settings: Settings, metrics: Metrics, reranking: RerankRunner) -> Catalog:
        """``--data``: every collection under the directory, none loaded."""
        assert settings.data is not None
        catalog = cls(settings, metrics, reranking)
        found = scan(settings.data)
        catalog.collections = {name: Collection(name, path) for name, path in found.items()}
        catalog.default = default_collection(settings, list(found))
        log.info(
            "serving %d collection(s) under %s (default: %s; loaded on first use, at most %s at once)",
            len(found),
            settings.data,
            catalog.default or "none",
            settings.max_loaded_collections or "all",
        )
        return catalog

    # ------------------------------------------------------------------ use

    def find(self, name: str) -> Collection:
        if not valid_name(name):
            raise ApiError(
                422,
                "invalid_input",
                "path.name: not a collection name (letters, digits, `_`, `-` and single dots between them, at most "
                f"{COLLECTION_NAME_MAX} characters, starting with a letter or digit)",
                [{"loc": ["path", "name"], "msg": "not a collection name", "type": "value_error"}],
            )
        coll = self.collections.get(name)
        if coll is None:
            raise ApiError(404, "collection_not_found", f"no collection {name!r} is served here", {"collection": name})
        return coll

    def default_name(self) -> str:
        if self.default is None:
            raise ApiError(
                404,
                "no_default_collection",
                f"no default collection: set {DEFAULT_SETTING} / --default-collection, or use "
                "/collections/{name}/... (GET /collections lists them)",
                {"setting": DEFAULT_SETTING},
            )
        return self.default

    async def acquire(self, name: str) -> Runtime:
        """The collection's runtime, loaded if need be; the caller must :meth:`release` it."""
        coll = self.find(name)
        coll.users += 1
        try:
            runtime = coll.runtime or await self._load(coll)
        except BaseException:
            coll.users -= 1
            raise
        coll.last_used = time.monotonic()
        self.metrics.collection_requests.labels(name).inc()
        return runtime

    def release(self, name: str) -> None:
        coll = self.collections.get(name)
        if coll is not None:
            coll.users -= 1
            coll.last_used = time.monotonic()

    # ------------------------------------------------------------------ loading and unloading

    def _current_target(self, coll: Collection) -> str:
        try:
            return resolve_version_dir(coll.path).name
        except SemsearchError as e:
            return f"unresolvable: {e.message}"

    async def _load(self, coll: Collection) -> Runtime:
        async with coll.lock:
            if coll.runtime is not None:
                return coll.runtime
            target = await asyncio.to_thread(self._current_target, coll)
            if coll.error is not None and coll.error.get("version") == target:
                raise self._unavailable(coll)
            try:
                runtime = await self._start(coll)
            except Exception as e:
                message = e.message if isinstance(e, SemsearchError) else f"{type(e).__name__}: {e}"
                code = e.code if isinstance(e, SemsearchError) else "load_failed"
                coll.error = {"version": target, "code": code, "message": message}
                log.error("collection %s cannot be served: %s", coll.name, message)
                raise self._unavailable(coll) from None
            coll.error = None
            coll.runtime = runtime
            self.loads += 1
            self.metrics.collection_loaded.labels(coll.name).set(1)
            self.metrics.collection_size.labels(coll.name).set(runtime.services.indexes.current.count)
        await self._evict(keep=coll.name)
        return runtime

    def _unavailable(self, coll: Collection) -> ApiError:
        assert coll.error is not None
        return ApiError(
            503,
            "collection_unavailable",
            f"collection {coll.name!r} cannot be served: {coll.error['message']}",
            {"collection": coll.name, "version": coll.error["version"], "reason": coll.error["code"]},
        )

    def settings_for(self, coll: Collection) -> Settings:
        return self.settings.model_copy(update={"index": coll.path, "data": None, "default_collection": None})

    async def _model(self, settings: Settings, manifest: Manifest) -> SharedModel:
        key = encoder_key(settings, manifest)
        async with self._model_lock:
            shared = self.models.get(key)
            if shared is None:
                log.info("loading encoder %s (pooling %s, backend %s)", manifest.model, key[1], key[2])
                encoder = await asyncio.to_thread(self._new_encoder, settings)
                s = self.settings
                batcher = MicroBatcher(
                    encoder,
                    cast(Any, None),  # every job carries its collection's holder
                    self.metrics,
                    window_s=s.batch_window_ms / 1000.0,
                    max_batch=s.max_batch,
                    max_queue=s.max_queue,
                    retry_after_s=s.retry_after_s,
                    max_batch_tokens=s.max_batch_tokens,
                    write_batch_tokens=s.write_batch_tokens,
                )
                batcher.start()
                shared = self.models[key] = SharedModel(key, encoder, batcher)
            return shared

    @staticmethod
    def _new_encoder(settings: Settings) -> Encoder:
        encoder = encoder_for(settings)
        warm_up(settings, encoder, None)
        return encoder

    async def _start(self, coll: Collection) -> Runtime:
        from app.runtime import Runtime

        settings = self.settings_for(coll)
        manifest = await asyncio.to_thread(Manifest.read, resolve_version_dir(coll.path))
        shared = await self._model(settings, manifest)
        services = await asyncio.to_thread(Services.load, settings, shared=(shared.encoder, self.reranking.reranker))
        shared.collections.add(coll.name)
        reloader = Reloader(coll.path, services, self.metrics)
        reloader.start_polling(settings.reload_poll_s)
        runtime = Runtime(
            settings, self.metrics, services, shared.batcher, self.reranking, reloader, ready=True, catalog=self
        )
        runtime.collection = coll.name
        log.info(
            "collection %s loaded (%s, %d sentences)",
            coll.name,
            version_name(services.indexes.current),
            services.indexes.current.count,
        )
        return runtime

    async def _evict(self, keep: str) -> None:
        limit = self.settings.max_loaded_collections
        if limit <= 0:
            return
        loaded = [c for c in self.collections.values() if c.runtime is not None]
        idle = sorted(
            (c for c in loaded if c.name != keep and c.users == 0 and not c.pinned), key=lambda c: c.last_used
        )
        for coll in idle[: max(0, len(loaded) - limit)]:
            await self.unload(coll)

    async def unload(self, coll: Collection) -> None:
        """Stop serving a loaded collection (its model stays loaded for the others)."""
        async with coll.lock:
            runtime = coll.runtime
            if runtime is None or coll.users > 0 or coll.pinned:
                return
            coll.runtime = None
            await runtime.reloader.stop()
            await asyncio.to_thread(runtime.services.close)  # closed once the last batch returns its version
            for shared in self.models.values():
                shared.collections.discard(coll.name)
            self.unloads += 1
            self.metrics.collection_loaded.labels(coll.name).set(0)
            log.info("collection %s unloaded (least recently used)", coll.name)

    async def stop(self) -> None:
        """Shut down (``--data``): every loaded collection's reloader, the shared batchers (waiting requests
        get 503), then the collections' indexes."""
        loaded = [c for c in self.collections.values() if c.runtime is not None and not c.pinned]
        for coll in loaded:
            assert coll.runtime is not None
            await coll.runtime.reloader.stop()
        for shared in self.models.values():
            await shared.batcher.stop()
        await self.reranking.stop()
        for coll in loaded:
            assert coll.runtime is not None
            coll.runtime.services.close()
            coll.runtime = None

    # ------------------------------------------------------------------ description

    def summary(self, coll: Collection) -> dict[str, Any]:
        """``GET /collections`` entry; an unloaded collection is described from its manifest (no loading)."""
        out: dict[str, Any] = {"name": coll.name}
        runtime = coll.runtime
        try:
            if runtime is not None:
                index = runtime.services.indexes.current
                m, count, version = index.manifest, index.count, index.directory.name
            else:
                directory = resolve_version_dir(coll.path)
                m = Manifest.read(directory)
                count, version = m.count, directory.name
        except SemsearchError as e:
            return {**out, "loaded": False, "error": {"code": e.code, "message": e.message}}
        out.update(
            count=count,
            model=m.model,
            pooling=m.pooling,
            backend=m.backend,
            index_type=m.index_type,
            segments=m.summary()["segments"],
            version=version,
            writable=runtime is not None and runtime.services.writes is not None,
            loaded=runtime is not None,
            default=coll.name == self.default,
        )
        if coll.error is not None:
            out["error"] = {"code": coll.error["code"], "message": coll.error["message"]}
        return out

    def info(self) -> dict[str, Any]:
        """``/info``'s ``collections`` block: each collection and which encoder it shares."""
        encoders = [
            {
                "model": shared.encoder.name,
                "fingerprint": shared.key[0],
                "pooling": shared.key[1],
                "backend": shared.key[2],
                "collections": sorted(shared.collections),
                "queue_depth": shared.batcher.depth,
            }
            for shared in self.models.values()
        ]
        loaded = [c.name for c in self.collections.values() if c.runtime is not None]
        return {
            "count": len(self.collections),
            "default": self.default,
            "loaded": sorted(loaded),
            "max_loaded": self.settings.max_loaded_collections or None,
            "loads": self.loads,
            "unloads": self.unloads,
            "encoders": encoders,
            "failed": {c.name: c.error for c in self.collections.values() if c.error is not None},
        }


def load_reranker(settings: Settings) -> Reranker | None:
    """``--data``: the service's reranker, loaded at start-up (shared by every collection)."""
    set_threads(settings.threads)
    reranker = reranker_for(settings)
    if reranker is not None:
        reranker.score("warm-up", ["warm-up"])
    return reranker
