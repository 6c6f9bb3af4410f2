"""``/embed``: sentence embeddings from the index's own encoder (unit vectors)."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import RuntimeDep
from app.routes.search import RESPONSES
from app.schemas import EmbedRequest, EmbedResponse, prompt_for

router = APIRouter(tags=["embed"])


@router.post("/embed", response_model=EmbedResponse, responses=RESPONSES)
async def embed(body: EmbedRequest, rt: RuntimeDep) -> EmbedResponse:
    """L2-normalised embeddings (cosine = dot product), micro-batched with concurrent searches."""
    body.check_limits(rt.settings)
    encoder = rt.services.encoder
    vectors = await rt.batcher.embed(body.texts, prompt_for(encoder, body.input_type))
    return EmbedResponse(
        embeddings=vectors.tolist(), model=encoder.name, pooling=encoder.pooling, dimension=encoder.dim
    )
