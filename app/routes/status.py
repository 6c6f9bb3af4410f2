"""``/health``, ``/ready``, ``/info``, ``/metrics``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.deps import RuntimeDep
from app.metrics import Metrics
from app.rerank_worker import NO_RERANKER
from app.schemas import ErrorResponse, Status
from app.services import version_name
from semsearch import __version__
from semsearch.models import Reranker

router = APIRouter(tags=["status"])


@router.get("/health", response_model=Status, response_model_exclude_none=True)
async def health() -> Status:
    """Liveness: 200 whenever the process answers (no API key needed)."""
    return Status(status="ok")


@router.get("/ready", response_model=Status, responses={503: {"model": ErrorResponse, "description": "Not ready."}})
async def ready(rt: RuntimeDep) -> Status:
    """Readiness: 200 once the index and model are loaded, 503 before and while shutting down (``--data``:
    once the collections are listed; each loads on first use)."""
    if rt.collection is None:
        return Status(status="ready")
    return Status(status="ready", index_version=version_name(rt.services.indexes.current))


@router.get("/info")
async def info(rt: RuntimeDep) -> dict[str, Any]:
    """What is served: index manifest summary, encoder, reranker, limits, batching, last reload."""
    s = rt.settings
    if rt.collection is None:  # --data: no index of its own, the collections and their shared encoders
        return {
            "service": {"name": "semsearch", "version": __version__, "started_at": rt.started_at},
            "data": str(s.data),
            "collections": rt.catalog.info() if rt.catalog is not None else None,
            "reranker": reranker_info(rt.reranking.reranker),
            "api_key_required": s.api_key is not None,
        }
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
        "reranker": reranker_info(rt.reranking.reranker),
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
            "threads": s.threads,
        },
        "reload_poll_s": s.reload_poll_s if rt.reloader.root is not None else None,
        "last_reload": rt.reloader.last_reload,
        "last_reload_error": rt.reloader.last_error,
        "api_key_required": s.api_key is not None,
        "writes": rt.services.writes.info() if rt.services.writes is not None else {"writable": False},
        "collections": rt.catalog.info() if rt.catalog is not None else None,
    }


def reranker_info(reranker: Reranker | None) -> dict[str, Any]:
    """The ``reranker`` block of ``/info``: what is loaded and what its card says it was trained and tested on."""
    if reranker is None:
        return {"configured": False, "status": "not configured", "help": NO_RERANKER}
    meta = reranker.metadata
    data = meta.get("data") or {}

    def summary(keys: tuple[str, ...]) -> dict[str, Any] | None:
        fields = ("source", "rows", "sha256", "queries")
        out = {
            key: {k: data[key][k] for k in fields if k in data[key]} for key in keys if isinstance(data.get(key), dict)
        }
        return out or None

    fusion = reranker.fusion
    return {
        "configured": True,
        "status": "loaded",
        "name": reranker.name,
        "path": str(reranker.path) if reranker.path else None,
        "backend": reranker.backend,
        "kind": "cross-encoder",
        "max_length": reranker.max_length,
        "base_model": meta.get("base_model_name") or meta.get("base_model"),
        "trained_on": summary(("train_scored", "train_relevance")),
        "evaluated_on": summary(("dev", "test")),
        "best_epoch": meta.get("best_epoch"),
        "dev_metric": meta.get("dev_metric"),
        "dev_metrics": meta.get("dev_metrics"),
        "test_metrics": meta.get("test_metrics"),
        "fusion": (
            {
                "mode": fusion.mode,
                "weight": fusion.retrieval_weight,
                "scope": "per_query",
                "pairwise_weight": fusion.weight,
            }
            if fusion is not None
            else None
        ),
        "score": (
            "zscore fusion with retrieval scores when given, else sigmoid(logit)"
            if fusion is not None
            else "sigmoid(logit)"
        ),
        "created_at": meta.get("created_at"),
    }


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text format (this app's own registry)."""
    registry: Metrics = request.app.state.metrics
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)
