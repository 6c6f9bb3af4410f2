"""The audit log: one JSON line per write or admin call, refused ones included.

With ``--audit-log FILE`` (``SEMSEARCH_AUDIT_LOG``) lines are appended to FILE (one ``write(2)`` per line on
a file opened with ``O_APPEND``, so the processes of ``--workers N`` can share it); without it they go
to the logger ``semsearch.audit`` at INFO. A line::

    {"time": "2026-05-01T12:00:00.123+00:00", "key": "ingest", "method": "POST", "path": "/documents",
     "collection": "catalogue", "scope": "write", "status": 200, "counts": {"documents": 120}, "ms": 41.2}

It never holds a key (only its name) or any document text: the counts are the lengths of the list fields
of a JSON body (``documents``, ``ids``, ``texts``), taken from a copy of the body as the route reads it
(at most :data:`MAX_COUNTED_BODY` bytes; bigger bodies, and requests refused before their body was read,
get none), and routes may add their own counts (a snapshot's file name and rows) through :func:`note`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.keys import Principal
from app.security import ACCESS_KEY, PRINCIPAL_KEY, Access

audit_logger = logging.getLogger("semsearch.audit")
log = logging.getLogger(__name__)

NOTES_KEY = "semsearch.audit"  # scope entry: extra counts a route adds (see note())
COUNTED_FIELDS = ("documents", "ids", "texts")
MAX_COUNTED_BODY = 4_000_000
AUDITED_SCOPES = frozenset({"write", "admin"})


class AuditLog:
    """Where audit lines go: a file (appended, one write per line) or the ``semsearch.audit`` logger."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._fd: int | None = None
        if path is not None:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False, separators=(", ", ": "))
        if self._fd is None:
            audit_logger.info("%s", line)
            return
        try:
            os.write(self._fd, (line + "\n").encode("utf-8"))
        except OSError as e:  # a full disk must not fail the request; say so in the server log
            log.error("cannot write the audit log %s: %s", self.path, e)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def note(scope: Scope, **counts: Any) -> None:
    """Add counts (or a file name) to this request's audit line; never a key or document text."""
    notes = scope.get(NOTES_KEY)
    if isinstance(notes, dict):
        notes.update(counts)


def body_counts(body: bytes) -> dict[str, int]:
    """Lengths of the list fields of a JSON object body (or the length of a JSON array body)."""
    if not body or len(body) > MAX_COUNTED_BODY:
        return {}
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return {}
    if isinstance(data, list):
        return {"items": len(data)}
    if isinstance(data, dict):
        return {k: len(v) for k in COUNTED_FIELDS if isinstance(v := data.get(k), list)}
    return {}


class AuditMiddleware:
    """Writes the audit line of every request whose access is ``write`` or ``admin``, after its response
    (status included: 401/403/429 refusals too). Sits outside :class:`app.security.ApiKeyMiddleware`."""

    def __init__(self, app: ASGIApp, audit: AuditLog) -> None:
        self.app = app
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        body = bytearray()
        status = 0
        notes: dict[str, Any] = {}
        scope[NOTES_KEY] = notes

        async def receive_copy() -> Message:
            message = await receive()
            if message["type"] == "http.request" and len(body) <= MAX_COUNTED_BODY:
                body.extend(message.get("body", b""))
            return message

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive_copy, send_status)
        finally:
            access: Access | None = scope.get(ACCESS_KEY)
            if access is not None and access.scope in AUDITED_SCOPES:
                principal: Principal | None = scope.get(PRINCIPAL_KEY)
                self.audit.write(
                    {
                        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                        "key": principal.name if principal is not None else None,
                        "method": scope["method"],
                        "path": scope["path"],
                        "collection": access.collection,
                        "scope": access.scope,
                        "status": status or 500,
                        "counts": {**body_counts(bytes(body)), **notes},
                        "ms": round((time.perf_counter() - started) * 1000, 1),
                    }
                )
