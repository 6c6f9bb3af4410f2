"""Typed dependencies for route handlers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.errors import ApiError
from app.runtime import Runtime
from semsearch.models import Reranker


def get_runtime(request: Request) -> Runtime:
    """The running service, or 503 while the index and model are not loaded (startup, shutdown)."""
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is None or not runtime.ready:
        raise ApiError(503, "not_ready", "the service is not ready: the index and model are not loaded")
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_reranker(rt: RuntimeDep) -> Reranker:
    """The configured reranker, or 503 saying how to configure one (before the body is looked at)."""
    return rt.reranking.require()


RerankerDep = Annotated[Reranker, Depends(get_reranker)]
