"""Typed dependencies for route handlers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi import Path as PathParam

from app.errors import ApiError
from app.runtime import Runtime
from app.security import COLLECTION_NAME, COLLECTION_NAME_MAX
from semsearch.models import Reranker

CollectionName = Annotated[
    str,
    PathParam(
        pattern=COLLECTION_NAME.pattern,
        max_length=COLLECTION_NAME_MAX,
        description="A collection: letters, digits, `_`, `-` and single dots between them (never `..`), at most "
        "64 characters, starting with a letter or digit.",
    ),
]
COLLECTION_RUNTIME = "semsearch.collection_runtime"  # request scope entry set by use_collection


def get_runtime(request: Request) -> Runtime:
    """The running service, or 503 while the index and model are not loaded (startup, shutdown).

    On a collection's routes (:func:`use_collection` ran first) it is that collection's runtime: its index,
    its model's batcher, its reloader."""
    chosen: Runtime | None = request.scope.get(COLLECTION_RUNTIME)
    if chosen is not None:
        return chosen
    return process_runtime(request)


def process_runtime(request: Request) -> Runtime:
    """The service's own runtime (``--data``: the catalog's, with no index of its own)."""
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is None or not runtime.ready:
        raise ApiError(503, "not_ready", "the service is not ready: the index and model are not loaded")
    return runtime


async def use_default_collection(request: Request) -> AsyncIterator[None]:
    """:func:`use_collection` for the unprefixed routes: the default collection."""
    async for _ in use_collection(request, None):
        yield


async def use_named_collection(request: Request, name: CollectionName) -> AsyncIterator[None]:
    """:func:`use_collection` for ``/collections/{name}/...`` (a name outside the pattern is a 422)."""
    async for _ in use_collection(request, name):
        yield


async def use_collection(request: Request, name: str | None) -> AsyncIterator[None]:
    """The collection a search, embed, rerank, document or reload route acts on: ``{name}`` of
    ``/collections/{name}/...``, else the default collection (404 naming the setting when there is none).

    A router-level dependency, so it runs before the handler's own (which then get the collection's
    runtime from :func:`get_runtime`): it loads the collection on first use (lazily, 503 for it alone if it
    cannot be served) and counts the request as a user until the response, so it is never unloaded under it."""
    runtime = process_runtime(request)
    catalog = runtime.catalog
    assert catalog is not None
    if name is None:
        name = catalog.default_name()
    chosen = await catalog.acquire(name)
    request.scope[COLLECTION_RUNTIME] = chosen
    try:
        yield
    finally:
        catalog.release(name)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_reranker(rt: RuntimeDep) -> Reranker:
    """The configured reranker, or 503 saying how to configure one (before the body is looked at)."""
    return rt.reranking.require()


RerankerDep = Annotated[Reranker, Depends(get_reranker)]
