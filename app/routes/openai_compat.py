"""OpenAI-compatible ``POST /v1/embeddings`` and ``GET /v1/models`` over the index's own encoder.

Embeddings go through the same micro-batcher as ``/embed`` (same vectors, same limits, metrics, auth);
errors on these paths are in OpenAI's shape (:mod:`app.compat_errors`).
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np
from fastapi import APIRouter

from app.compat_schemas import (
    Embedding,
    EmbeddingsRequest,
    EmbeddingsResponse,
    EmbeddingsUsage,
    ModelCard,
    ModelList,
    OpenAIErrorResponse,
)
from app.deps import RuntimeDep
from app.errors import ApiError, invalid
from app.runtime import Runtime
from app.schemas import prompt_for
from semsearch.text import text_problem

router = APIRouter(tags=["compatible"])

RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": OpenAIErrorResponse, "description": what}
    for status, what in (
        (400, "Invalid input (no texts, too many or too long, token ids, dimensions, unknown field)."),
        (404, "The model is not served here (code model_not_found)."),
        (429, "Overloaded: the queue is full; see Retry-After."),
        (503, "Not ready, or no reranker configured."),
    )
}


def aliases(name: str) -> list[str]:
    """Other names accepted for a served model: the last path component of its id (when different)."""
    short = name.rstrip("/").rsplit("/", 1)[-1]
    return [short] if short and short != name else []


def served_models(rt: Runtime) -> list[ModelCard]:
    """The encoder first, then the reranker when one is configured."""
    created = int(rt.started_at)
    name = rt.services.encoder.name
    cards = [ModelCard(id=name, created=created, kind="embedding", aliases=aliases(name))]
    reranker = rt.services.reranker
    if reranker is not None:
        cards.append(ModelCard(id=reranker.name, created=created, kind="rerank", aliases=aliases(reranker.name)))
    return cards


def check_model(rt: Runtime, requested: str, kind: str) -> str:
    """The id of the served ``kind`` model named by ``requested`` (its id or an alias), else a 404."""
    cards = served_models(rt)
    for card in cards:
        if card.kind == kind and requested in (card.id, *card.aliases):
            return card.id
    offered = [n for c in cards if c.kind == kind for n in (c.id, *c.aliases)]
    other = next((c.id for c in cards if c.kind != kind and requested in (c.id, *c.aliases)), None)
    hint = f"; {other!r} is the {'reranker' if kind == 'embedding' else 'encoder'} here" if other else ""
    raise ApiError(
        404,
        "model_not_found",
        f"model {requested!r} is not served here{hint}; the {kind} model is "
        + (" or ".join(repr(n) for n in offered) if offered else "not configured")
        + " (see GET /v1/models)",
        {"param": "model", "served": offered},
    )


def _base64(vector: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")


@router.post(
    "/v1/embeddings", response_model=EmbeddingsResponse, responses=RESPONSES, summary="OpenAI-compatible embeddings"
)
async def embeddings(body: EmbeddingsRequest, rt: RuntimeDep) -> EmbeddingsResponse:
    """The same unit vectors as `/embed`, as OpenAI's `embeddings.create` returns them (`float` or `base64`)."""
    encoder = rt.services.encoder
    model = check_model(rt, body.model, "embedding")
    if body.dimensions is not None and body.dimensions != encoder.dim:
        raise ApiError(
            400,
            "unsupported_dimensions",
            f"dimensions={body.dimensions} is not available: {model} produces {encoder.dim}-dimensional vectors "
            "and is not trained for truncation (Matryoshka); omit dimensions or send "
            f"{encoder.dim}",
            {"param": "dimensions", "dimension": encoder.dim},
        )
    texts = body.texts(rt.settings)
    prompt = prompt_for(encoder, body.input_type)
    vectors, tokens = await asyncio.gather(
        rt.batcher.embed(texts, prompt), asyncio.to_thread(encoder.count_tokens, [prompt + t for t in texts])
    )
    data = [
        Embedding(index=i, embedding=_base64(v) if body.encoding_format == "base64" else v.tolist())
        for i, v in enumerate(vectors)
    ]
    return EmbeddingsResponse(data=data, model=model, usage=EmbeddingsUsage(prompt_tokens=tokens, total_tokens=tokens))


@router.get("/v1/models", response_model=ModelList, responses=RESPONSES, summary="OpenAI-compatible model list")
async def models(rt: RuntimeDep) -> ModelList:
    """The served encoder, then the reranker when configured; `id` or an alias goes into `model`."""
    return ModelList(data=served_models(rt))


@router.get("/v1/models/{model_id:path}", response_model=ModelCard, responses=RESPONSES)
async def model(model_id: str, rt: RuntimeDep) -> ModelCard:
    """One served model by id or alias (OpenAI's `models.retrieve`)."""
    problem = text_problem(model_id, allow_blank=True)
    if problem:
        raise invalid(["path", "model_id"], problem)
    for card in served_models(rt):
        if model_id in (card.id, *card.aliases):
            return card
    message = f"model {model_id!r} is not served here (see GET /v1/models)"
    raise ApiError(404, "model_not_found", message, {"param": "model"})
