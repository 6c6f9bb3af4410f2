"""``/documents``: online writes (``--writable``) and reading a document by id.

Writes are validated here (ids, text, metadata, limits: 422 before anything is queued), encoded in the
batcher's low-priority lane (queries first) and committed by :class:`app.writes.LiveIndex`. Without
``--writable`` every write route answers 403 ``writes_disabled`` naming the setting; ``GET`` works
either way.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter

from app.deps import RuntimeDep
from app.errors import ApiError
from app.runtime import Runtime
from app.schemas import (
    DeleteRequest,
    DeleteResponse,
    DocumentOut,
    ErrorResponse,
    UpsertRequest,
    UpsertResponse,
)
from app.writes import LiveIndex, WriteRequest, document

router = APIRouter(tags=["documents"])

WRITE_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": what}
    for status, what in (
        (403, "Writes are off: start the service with --writable (SEMSEARCH_WRITABLE=true)."),
        (422, "Invalid input (bad id, blank or too long text, bad metadata, an id changing type): nothing written."),
        (429, "The write queue is full; see Retry-After. Nothing written."),
        (503, "Not ready, shutting down, or the write-ahead log cannot be written. Nothing written."),
        (507, "The disk holding the write-ahead log is full. Nothing written; reads keep working."),
    )
}


def _writer(rt: Runtime) -> LiveIndex:
    writes = rt.services.writes
    if writes is None:
        raise ApiError(
            403,
            "writes_disabled",
            "this service is read-only: start it with --writable (SEMSEARCH_WRITABLE=true) to accept writes",
            {"setting": "SEMSEARCH_WRITABLE"},
        )
    return writes


def _took_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


async def _commit(writes: LiveIndex, req: WriteRequest) -> dict[str, Any]:
    # shielded: once handed to the writer the request commits even if the client goes away
    result: dict[str, Any] = await asyncio.shield(asyncio.wrap_future(writes.submit(req)))
    return result


@router.post("/documents", response_model=UpsertResponse, responses=WRITE_RESPONSES)
async def upsert(body: UpsertRequest, rt: RuntimeDep) -> UpsertResponse:
    """Insert or replace documents by id: all of them or none. `wait` (default true): return once they are
    searchable; false: once durable (in the write-ahead log, fsynced)."""
    started = time.perf_counter()
    writes = _writer(rt)
    body.check_limits(rt.settings)
    writes.admit()
    try:
        vectors = await rt.batcher.embed_writes([d.text for d in body.documents])
        req = WriteRequest(
            "upsert",
            [d.id for d in body.documents],
            [d.text for d in body.documents],
            [d.metadata for d in body.documents],
            vectors,
            wait=body.wait,
        )
        result = await _commit(writes, req)
    finally:
        writes.done()
    return UpsertResponse(
        upserted=result["upserted"], seq=result["seq"], visible=result["visible"], took_ms=_took_ms(started)
    )


async def _delete(rt: Runtime, ids: list[int | str], wait: bool, started: float) -> DeleteResponse:
    writes = _writer(rt)
    writes.admit()
    try:
        result = await _commit(writes, WriteRequest("delete", ids, wait=wait))
    finally:
        writes.done()
    return DeleteResponse(
        deleted=result["deleted"],
        missing=result["missing"],
        seq=result["seq"],
        visible=result["visible"],
        took_ms=_took_ms(started),
    )


@router.post("/documents/delete", response_model=DeleteResponse, responses=WRITE_RESPONSES)
async def delete_many(body: DeleteRequest, rt: RuntimeDep) -> DeleteResponse:
    """Delete documents by id; `missing` lists the ids that named no document."""
    started = time.perf_counter()
    _writer(rt)
    body.check_limits(rt.settings)
    return await _delete(rt, list(body.ids), body.wait, started)


@router.delete("/documents/{id:path}", response_model=DeleteResponse, responses=WRITE_RESPONSES)
async def delete_one(id: str, rt: RuntimeDep) -> DeleteResponse:
    """Delete one document (the id as the path gives it: `/documents/7` names `7` and `"7"` alike);
    waits until the delete is visible."""
    started = time.perf_counter()
    _check_path_id(id)
    return await _delete(rt, [id], True, started)


@router.get(
    "/documents/{id:path}",
    response_model=DocumentOut,
    responses={404: {"model": ErrorResponse, "description": "No document with this id."}},
)
async def get_document(id: str, rt: RuntimeDep) -> DocumentOut:
    """A document by id (with `--writable`: every acknowledged write, searchable yet or not)."""
    _check_path_id(id)
    writes = rt.services.writes
    if writes is not None:
        found = await asyncio.to_thread(writes.get, id)
    else:
        with rt.services.indexes.use() as index:
            found = await asyncio.to_thread(document, index, id) if hasattr(index, "iids_for_ext_ids") else None
    if found is None:
        raise ApiError(404, "not_found", f"no document with id {id!r}", {"id": id})
    return DocumentOut(id=found[0], text=found[1], metadata=found[2])


def _check_path_id(value: str) -> None:
    from app.errors import invalid
    from semsearch.ids import id_problem

    problem = id_problem(value)
    if problem:
        raise invalid(["path", "id"], problem)
