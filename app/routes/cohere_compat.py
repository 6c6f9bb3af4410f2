"""Cohere/Jina-compatible rerank: ``POST /v1/rerank`` (Cohere v1, Jina) and ``POST /v2/rerank`` (Cohere v2).

The scores are exactly ``/rerank``'s (the reranker card's score, fused with the bi-encoder cosine when the
card says so; ``raw_scores`` for the cross-encoder alone); errors are in OpenAI's shape
(:mod:`app.compat_errors`), which the Cohere SDK surfaces as the body of its ``ApiError``.
"""

from __future__ import annotations

import uuid

import numpy as np
from fastapi import APIRouter

from app.compat_schemas import (
    CompatRerankRequest,
    CompatRerankResponse,
    CompatRerankResult,
    RerankResultDocument,
    RerankUsage,
)
from app.deps import RerankerDep, RuntimeDep
from app.routes.openai_compat import RESPONSES, check_model
from app.routes.rerank import rerank_scores

router = APIRouter(tags=["compatible"])


async def rerank(reranker: RerankerDep, body: CompatRerankRequest, rt: RuntimeDep) -> CompatRerankResponse:
    """Documents sorted by the reranker's score, best first; `index` is the position in `documents`."""
    model = check_model(rt, body.model, "rerank") if body.model is not None else reranker.name
    texts = body.texts(rt.settings)
    scores, _, tokens = await rerank_scores(rt, body.query, texts, raw_scores=body.raw_scores, count_tokens=True)
    order = np.argsort(-scores, kind="stable")[: body.top_n]
    results = [
        CompatRerankResult(
            index=int(i),
            relevance_score=float(scores[i]),
            document=RerankResultDocument(text=texts[i]) if body.return_documents else None,
        )
        for i in order
    ]
    usage = RerankUsage(total_tokens=tokens)
    return CompatRerankResponse(id=str(uuid.uuid4()), results=results, model=model, usage=usage)


# one endpoint on both paths; the names keep the operation ids (rerank_v1_v1_rerank_post, rerank_v2_...)
ROUTES = {
    "/v1/rerank": ("rerank_v1", "Cohere v1 / Jina-compatible rerank", rerank.__doc__ or ""),
    "/v2/rerank": (
        "rerank_v2",
        "Cohere v2-compatible rerank",
        "`/v1/rerank` for the Cohere v2 client (`cohere.ClientV2(...).rerank`).",
    ),
}
for path, (name, summary, description) in ROUTES.items():
    router.add_api_route(
        path,
        rerank,
        methods=["POST"],
        name=name,
        summary=summary,
        description=description,
        response_model=CompatRerankResponse,
        response_model_exclude_none=True,
        responses=RESPONSES,
    )
