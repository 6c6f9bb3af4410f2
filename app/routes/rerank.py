"""``/rerank``: score caller-supplied candidates for a query with the cross-encoder."""

from __future__ import annotations

import time

import numpy as np
from fastapi import APIRouter

from app.deps import RerankerDep, RuntimeDep
from app.routes.search import RESPONSES
from app.schemas import RerankHit, RerankRequest, RerankResponse

router = APIRouter(tags=["rerank"])


@router.post("/rerank", response_model=RerankResponse, responses=RESPONSES)
async def rerank(reranker: RerankerDep, body: RerankRequest, rt: RuntimeDep) -> RerankResponse:
    """Texts sorted by the reranker's score, best first; `index` is the position in `texts`."""
    started = time.perf_counter()
    body.check_limits(rt.settings)
    scores = await rt.reranking.score(body.query, body.texts)
    order = np.argsort(-scores, kind="stable")[: body.top_k]
    return RerankResponse(
        results=[RerankHit(index=int(i), text=body.texts[i], score=float(scores[i])) for i in order],
        took_ms=round((time.perf_counter() - started) * 1000, 3),
        model=reranker.name,
    )
