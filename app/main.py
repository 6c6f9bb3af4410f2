"""The app factory: ``create_app(settings)``; ``uvicorn --factory app.main:create_app`` reads the environment.

The lifespan loads the model, index and reranker once (in a worker thread), starts the micro-batcher and
the reload poller, and stops them again on shutdown (uvicorn turns SIGTERM into a graceful shutdown:
in-flight requests finish first).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from app.audit import AuditLog, AuditMiddleware
from app.catalog import default_collection, load_reranker, scan
from app.compat_errors import CompatErrorMiddleware
from app.deps import use_default_collection, use_named_collection
from app.errors import install_error_handlers
from app.keys import KeyRing, KeyWatcher
from app.metrics import Metrics, MetricsMiddleware
from app.routes import admin, cohere_compat, collections, documents, embed, openai_compat, rerank, search, status, web
from app.routes.collections import collection_name
from app.runtime import Runtime
from app.schemas import ErrorResponse, install_openapi_limits
from app.security import ApiKeyMiddleware, BodyLimitMiddleware, HeadMiddleware, StrictUrlMiddleware
from app.services import Services
from app.settings import Settings, get_settings
from semsearch import __version__

log = logging.getLogger(__name__)

# what a /collections/{name}/... route answers besides its own responses
COLLECTION_RESPONSES: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorResponse, "description": "The API key may not touch this collection."},
    404: {"model": ErrorResponse, "description": "No collection of this name is served here."},
}

DESCRIPTION = """Semantic search over a semsearch index (sentence embeddings + FAISS), with optional
cross-encoder reranking. Every error has the shape `{"error": {"code", "message", "detail"}}`, except
on the compatible routes (`/v1/...`, `/v2/...`: OpenAI embeddings and models, Cohere/Jina rerank), where it
is OpenAI's `{"error": {"message", "type", "param", "code"}}`.
When an API key is configured, send `Authorization: Bearer <key>`."""


def create_app(
    settings: Settings | None = None,
    *,
    services: Services | None = None,
    load: Callable[[], Services] | None = None,
) -> FastAPI:
    """Build the service. ``settings`` default to the environment (:func:`get_settings`); ``services``
    may be loaded beforehand (``python -m app`` does, to fail before binding the port); ``load`` replaces
    :meth:`Services.load` at startup (the Ray Serve ingress loads a sharded index, ``app.ray``)."""
    settings = settings or get_settings()
    metrics = Metrics()
    loader = load or (lambda: Services.load(settings))
    if settings.data is not None and load is None:
        data_default = default_collection(settings, list(scan(settings.data)))
    else:
        data_default = None
    keyring = KeyRing(settings.keys_file) if settings.keys_file is not None else None
    audit = AuditLog(settings.audit_log)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.data is not None and load is None:  # collections: nothing loaded until first use
            reranker = await asyncio.to_thread(load_reranker, settings)
            runtime = Runtime.start_data(settings, metrics, reranker)
        else:
            loaded = services if services is not None else await asyncio.to_thread(loader)
            runtime = Runtime.start(settings, loaded, metrics)
        app.state.runtime = runtime
        watcher = KeyWatcher(keyring, settings.reload_poll_s) if keyring is not None else None
        if watcher is not None:
            watcher.start()
        try:
            yield
        finally:
            if watcher is not None:
                await watcher.stop()
            await runtime.stop()
            audit.close()
            log.info("semsearch stopped")

    app = FastAPI(title="semsearch", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.keyring = keyring
    app.state.metrics = metrics
    app.state.runtime = None
    install_error_handlers(app)
    # the routes that act on a collection: unprefixed on the default one, and as /collections/{name}/...
    for module in (search, documents, embed, rerank, admin, openai_compat, cohere_compat):
        app.include_router(module.router, dependencies=[Depends(use_default_collection)])
    for module in (search, documents, embed, rerank, admin):
        app.include_router(
            module.router,
            prefix="/collections/{name}",
            dependencies=[Depends(use_named_collection)],
            responses=COLLECTION_RESPONSES,
        )
    for module in (status, collections, web):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=web.STATIC_DIR), name="static")
    install_openapi_limits(app, settings)
    # added innermost first: metrics sees everything, CORS answers preflights before the key check, HEAD
    # drops the body of every answer (the guards' too); the URL is decoded strictly after the key check
    app.add_middleware(StrictUrlMiddleware)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(
        ApiKeyMiddleware,
        api_key=settings.api_key_bytes(),
        keyring=keyring,
        default_collection=collection_name(settings) if settings.data is None else (data_default or ""),
    )
    app.add_middleware(AuditMiddleware, audit=audit)  # right outside the key check: refusals are audited too
    app.add_middleware(CompatErrorMiddleware)  # OpenAI's error shape on /v1, /v2 (auth and size errors too)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(HeadMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
