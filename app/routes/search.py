"""``/search`` (POST and GET) and ``/search/batch``: micro-batched retrieval, optional reranking."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from app.batcher import SearchSpec
from app.deps import RuntimeDep
from app.errors import invalid, unparsable_body_reason
from app.runtime import Runtime
from app.schemas import (
    DEFAULT_CANDIDATES,
    DEFAULT_K,
    GROUP_BY_PATTERN,
    MAX_OFFSET,
    BatchSearchRequest,
    BatchSearchResponse,
    ErrorResponse,
    GroupHit,
    SearchGroup,
    SearchHit,
    SearchOptions,
    SearchRequest,
    SearchResponse,
    Source,
    check_get_filter,
    check_range,
    check_text,
    not_blank,
)
from semsearch.search import MAX_GROUP_SIZE, Group, Grouping, Hit, Mode, attach_documents, group_hits

router = APIRouter(tags=["search"])

RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": what}
    for status, what in (
        (422, "Invalid input (blank or too long query, k out of range, bad filter or mode)."),
        (429, "Overloaded: the queue is full; see Retry-After."),
        (503, "Not ready, or rerank requested without a configured reranker."),
    )
}


def _hit(hit: Hit, reranked: bool) -> SearchHit:
    return SearchHit(
        id=hit.id,
        text=hit.text,
        score=hit.score,
        metadata=hit.metadata,
        source=Source(doc_id=hit.doc_id, start=hit.start, end=hit.end) if hit.doc_id is not None else None,
        retrieval_score=hit.dense_score if reranked else None,
    )


def _group(group: Group, reranked: bool) -> SearchGroup:
    return SearchGroup(
        group=group.group,
        score=group.score,
        metadata=group.metadata,
        hits=[
            GroupHit(
                id=h.id,
                text=h.text,
                score=h.score,
                start=h.start,
                end=h.end,
                retrieval_score=h.dense_score if reranked else None,
            )
            for h in group.hits
        ],
        document=group.document,
    )


async def run_search(rt: Runtime, queries: Sequence[str], opts: SearchOptions) -> tuple[list[list[Any]], str]:
    """Retrieve (micro-batched) and, when asked, rerank the top ``candidates`` of each query; with
    ``group_by`` the results are groups (reranked hits are grouped after reranking); ``offset`` pages."""
    if opts.rerank:
        rt.reranking.require()  # 503 before any work: rerank is never silently skipped
    need = opts.offset + opts.k
    grouping = Grouping(opts.group_by, opts.group_size, opts.return_document) if opts.group_by is not None else None
    if grouping is not None and not opts.rerank:
        spec = SearchSpec(opts.k, opts.mode, opts.filter, grouping=grouping, offset=opts.offset)
        outcome = await rt.batcher.search(queries, spec)
        return [[_group(g, False) for g in row] for row in outcome.groups or []], outcome.index_version
    fetch = max(need, opts.candidates) if opts.rerank else need
    spec = SearchSpec(fetch, opts.mode, opts.filter, with_dense_scores=opts.rerank)
    outcome = await rt.batcher.search(queries, spec, rt.services.indexes)
    if grouping is not None:  # rerank every candidate passage, then group them
        rows = await rt.reranking.rerank(queries, outcome.hits, fetch)
        groups = [group_hits(row, grouping)[opts.offset : need] for row in rows]
        if grouping.return_document:
            await asyncio.to_thread(_attach_documents, rt, [g for row in groups for g in row])
        return [[_group(g, True) for g in row] for row in groups], outcome.index_version
    rows = await rt.reranking.rerank(queries, outcome.hits, need) if opts.rerank else outcome.hits
    return [[_hit(h, opts.rerank) for h in row[opts.offset :]] for row in rows], outcome.index_version


def _attach_documents(rt: Runtime, groups: list[Group]) -> None:
    with rt.services.indexes.use() as index:
        attach_documents(index, groups)


MAX_FILTER_PARAM_CHARS = 32_000  # what the GET filter schema allows, escaped; URLs over ~64 KB fail in uvicorn


def parse_filter_param(text: str | None) -> dict[str, Any] | None:
    """``?filter=`` as a JSON object; any text that is not one is a 422 (never a 500: size, depth and
    number length are bounded before or while parsing)."""
    if text is None:
        return None
    if len(text) > MAX_FILTER_PARAM_CHARS:
        raise invalid(["query", "filter"], f"is {len(text)} characters long; the limit is {MAX_FILTER_PARAM_CHARS}")
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as e:
        raise invalid(["query", "filter"], f"is not valid JSON: {e}", "json_invalid") from None
    except (RecursionError, ValueError) as e:  # too deep, or an integer with too many digits
        raise invalid(["query", "filter"], unparsable_body_reason(e), "json_invalid") from None
    if not isinstance(parsed, dict):
        raise invalid(["query", "filter"], "must be a JSON object", "dict_type")
    problem = check_get_filter(parsed)
    if problem:
        raise invalid(["query", "filter"], problem)
    return parsed


def _took_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


@router.post("/search", response_model=SearchResponse, response_model_exclude_none=True, responses=RESPONSES)
async def search(body: SearchRequest, rt: RuntimeDep) -> SearchResponse:
    """Top-k sentences for a query, best first (score = the mode's score; the reranker's score with `rerank`)."""
    started = time.perf_counter()
    body.check_limits(rt.settings)
    rows, version = await run_search(rt, [body.query], body)
    return SearchResponse(results=rows[0], took_ms=_took_ms(started), index_version=version, reranked=body.rerank)


@router.get("/search", response_model=SearchResponse, response_model_exclude_none=True, responses=RESPONSES)
async def search_get(
    rt: RuntimeDep,
    q: Annotated[str, Query(min_length=1, description="The query text (not blank, no NUL).")],
    k: Annotated[int | None, Query(ge=1, description="Number of results (1..max_k; default 10).")] = None,
    mode: Annotated[Mode, Query(description="dense, lexical or hybrid.")] = "dense",
    filter: Annotated[
        str | None, Query(description='Metadata filter as a JSON object, e.g. {"pos":"noun"} (as for POST).')
    ] = None,
    rerank: Annotated[bool, Query(description="Rerank with the cross-encoder.")] = False,
    candidates: Annotated[int | None, Query(ge=1, description="Hits rescored when reranking (default 50).")] = None,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Skip this many results (the next page).")] = 0,
    group_by: Annotated[
        str | None,
        Query(max_length=128, pattern=GROUP_BY_PATTERN, description="Group by doc_id or a metadata field."),
    ] = None,
    group_size: Annotated[int, Query(ge=1, le=MAX_GROUP_SIZE, description="Hits per group (default 3).")] = 3,
    return_document: Annotated[bool, Query(description="Add each group's document text.")] = False,
) -> SearchResponse:
    """`POST /search` for browsers and curl: `GET /search?q=a+large+wild+cat&k=5`."""
    started = time.perf_counter()
    s = rt.settings
    try:
        not_blank(q)
    except ValueError as e:
        raise invalid(["query", "q"], str(e)) from None
    check_text(["query", "q"], q, s.max_query_chars, "SEMSEARCH_MAX_QUERY_CHARS")
    k = min(DEFAULT_K, s.max_k) if k is None else k
    candidates = min(DEFAULT_CANDIDATES, s.max_candidates) if candidates is None else candidates
    check_range(["query", "k"], k, s.max_k, "SEMSEARCH_MAX_K")
    check_range(["query", "candidates"], candidates, s.max_candidates, "SEMSEARCH_MAX_CANDIDATES")
    parsed = parse_filter_param(filter)
    try:
        opts = SearchOptions(
            k=k,
            mode=mode,
            filter=parsed,
            rerank=rerank,
            candidates=candidates,
            offset=offset,
            group_by=group_by,
            group_size=group_size,
            return_document=return_document,
        )
    except ValidationError as e:  # the filter's grammar and bounds, checked by the schema as for POST
        raise RequestValidationError(
            [{**err, "loc": ("query", *err["loc"])} for err in e.errors(include_url=False, include_input=False)]
        ) from None
    rows, version = await run_search(rt, [q], opts)
    return SearchResponse(results=rows[0], took_ms=_took_ms(started), index_version=version, reranked=rerank)


@router.post("/search/batch", response_model=BatchSearchResponse, response_model_exclude_none=True, responses=RESPONSES)
async def search_batch(body: BatchSearchRequest, rt: RuntimeDep) -> BatchSearchResponse:
    """Several queries at once, encoded in one batch; one result list per query, in order."""
    started = time.perf_counter()
    body.check_limits(rt.settings)
    rows, version = await run_search(rt, body.queries, body)
    return BatchSearchResponse(results=rows, took_ms=_took_ms(started), index_version=version, reranked=body.rerank)
