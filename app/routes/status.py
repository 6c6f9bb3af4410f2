"""``/health``, ``/ready``, ``/info``, ``/metrics``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.deps import RuntimeDep
from app.metrics import Metrics
from app.schemas import ErrorResponse, Status
from app.serving import version_name
from semsearch import __version__

router = APIRouter(tags=["status"])


@router.get("/health", response_model=Status, response_model_exclude_none=True)
async def health() -> Status:
    """Liveness: 200 whenever the process answers (no API key needed)."""
    return Status(status="ok")


@router.get("/ready", response_model=Status, responses={503: {"model": ErrorResponse, "description": "Not ready."}})
async def ready(rt: RuntimeDep) -> Status:
    """Readiness: 200 once the index and model are loaded, 503 before and while shutting down."""
    return Status(status="ready", index_version=version_name(rt.services.indexes.current))


@router.get("/info")
async def info(rt: RuntimeDep) -> dict[str, Any]:
    """What is served: index manifest summary, encoder, reranker, limits, batching, last reload."""
    s = rt.settings
    index = rt.services.indexes.current
    encoder = rt.services.encoder
    return {
        "service": {"name": "semsearch", "version": __version__, "started_at": rt.started_at},
        "index_version": version_name(index),
        "count": index.count,
        "index": {**index.manifest.summary(), "path": str(s.index), "directory": str(index.directory)},
        "encoder": {
            "model": encoder.name,
            "fingerprint": encoder.fingerprint,
            "pooling": encoder.pooling,
            "backend": encoder.backend,
            "dimension": encoder.dim,
            "max_seq_length": encoder.max_seq_length,
        },
        "reranker": rt.reranking.info(),
        "limits": {
            "max_k": s.max_k,
            "max_query_chars": s.max_query_chars,
            "max_batch_queries": s.max_batch_queries,
            "max_embed_texts": s.max_embed_texts,
            "max_text_chars": s.max_text_chars,
            "max_rerank_texts": s.max_rerank_texts,
            "max_candidates": s.max_candidates,
        },
        "batching": {
            "enabled": s.batching,
            "window_ms": s.batch_window_ms,
            "max_batch": s.max_batch,
            "max_queue": s.max_queue,
            "queue_depth": rt.batcher.depth,
            "threads": s.workers_threads,
        },
        "reload_poll_s": s.reload_poll_s if rt.reloader.root is not None else None,
        "last_reload": rt.reloader.last_reload,
        "last_reload_error": rt.reloader.last_error,
        "api_key_required": s.api_key is not None,
    }


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text format (this app's own registry)."""
    registry: Metrics = request.app.state.metrics
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)
