"""``/rerank``: score caller-supplied candidates for a query with the cross-encoder."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from fastapi import APIRouter

from app.deps import RerankerDep, RuntimeDep
from app.routes.search import RESPONSES
from app.runtime import Runtime
from app.schemas import RerankHit, RerankRequest, RerankResponse

router = APIRouter(tags=["rerank"])


async def rerank_scores(
    rt: Runtime, query: str, texts: Sequence[str], *, raw_scores: bool, count_tokens: bool = False
) -> tuple[np.ndarray, str, int]:
    """The reranker card's scores of ``texts`` for ``query`` (input order), their kind and, when asked, the
    cross-encoder's token count. When the card fuses with the bi-encoder, the query and texts are embedded
    first (micro-batched like ``/embed``) for their cosines; ``raw_scores`` skips that: sigmoid(logit)."""
    reranker = rt.reranking.require()
    cosines: list[float] | None = None
    if not raw_scores and reranker.fusion is not None:
        vectors = await rt.batcher.embed([query, *texts])
        cosines = (vectors[1:] @ vectors[0]).astype(np.float64).tolist()
    return await rt.reranking.score_texts(query, texts, cosines, count_tokens=count_tokens)


@router.post("/rerank", response_model=RerankResponse, responses=RESPONSES)
async def rerank(reranker: RerankerDep, body: RerankRequest, rt: RuntimeDep) -> RerankResponse:
    """Texts sorted by the score the reranker's card defines (fused with the bi-encoder cosine when the
    card says so; `raw_scores` for the cross-encoder alone), best first; `index` is the position in `texts`."""
    started = time.perf_counter()
    body.check_limits(rt.settings)
    scores, kind, _ = await rerank_scores(rt, body.query, body.texts, raw_scores=body.raw_scores)
    order = np.argsort(-scores, kind="stable")[: body.top_k]
    return RerankResponse(
        results=[RerankHit(index=int(i), text=body.texts[i], score=float(scores[i])) for i in order],
        took_ms=round((time.perf_counter() - started) * 1000, 3),
        model=reranker.name,
        scoring=kind,  # type: ignore[arg-type]
    )
