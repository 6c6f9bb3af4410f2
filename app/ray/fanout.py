"""The ingress's fan-out to the shard deployments, and the marking of partial results."""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import threading
import time
from typing import Any

from app.errors import ApiError
from semsearch.errors import SemsearchError

log = logging.getLogger(__name__)


class PartialLog:
    """When fan-outs left shards out (monotonic time, shards), for the responses in flight then."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: collections.deque[tuple[float, frozenset[int]]] = collections.deque(maxlen=10_000)

    def record(self, missing: set[int]) -> None:
        with self._lock:
            self._events.append((time.monotonic(), frozenset(missing)))

    def since(self, t0: float) -> set[int]:
        with self._lock:
            return {s for t, missing in self._events if t >= t0 for s in missing}


class ServeFanout:
    """A version's search primitives sent to every shard deployment at once, then gathered."""

    def __init__(
        self, handles: list[Any], version: str, timeout_s: float, partial: bool, partial_log: PartialLog
    ) -> None:
        self.handles = handles
        self.version = version
        self.timeout_s = timeout_s
        self.partial = partial
        self.partial_log = partial_log

    @property
    def shards(self) -> int:
        return len(self.handles)

    def call(self, method: str, *args: Any) -> list[Any | None]:
        from ray import exceptions as ray_errors

        deadline = time.monotonic() + self.timeout_s
        responses = [h.call.remote(self.version, method, *args) for h in self.handles]
        out: list[Any | None] = []
        missing: dict[int, str] = {}
        for s, response in enumerate(responses):
            try:
                out.append(response.result(timeout_s=max(0.01, deadline - time.monotonic())))
            except (SemsearchError, ray_errors.RayTaskError):
                raise  # the shard's own error (a RayTaskError subclasses its cause): not an outage
            except (TimeoutError, ray_errors.RayError, RuntimeError) as e:
                with contextlib.suppress(Exception):
                    response.cancel()
                missing[s] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                out.append(None)
        if missing:
            log.warning("shards without an answer: %s", missing)
            if not self.partial or method == "stats":
                raise ApiError(
                    503,
                    "shard_unavailable",
                    f"shard(s) {sorted(missing)} of {self.shards} have no healthy replica right now; "
                    "retry shortly (or allow partial results: SEMSEARCH_SHARD_PARTIAL=true)",
                    {"missing": sorted(missing), "shards": self.shards},
                )
            self.partial_log.record(set(missing))
        return out


class PartialMiddleware:
    """Adds ``"partial": true`` and the shards that answered to search responses that lacked shards."""

    PATHS = ("/search", "/search/batch")

    def __init__(self, app: Any, partial_log: PartialLog, shards: int) -> None:
        self.app = app
        self.partial_log = partial_log
        self.shards = shards

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] not in self.PATHS:
            await self.app(scope, receive, send)
            return
        t0 = time.monotonic()
        start: dict[str, Any] = {}
        body = bytearray()

        async def capture(message: Any) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            if message["type"] != "http.response.body":
                await send(message)
                return
            body.extend(message.get("body", b""))
            if message.get("more_body"):
                return
            missing = self.partial_log.since(t0)
            out = bytes(body)
            if missing and start.get("status") == 200:
                data = json.loads(out)
                data["partial"] = True
                data["shards"] = {
                    "answered": [s for s in range(self.shards) if s not in missing],
                    "missing": sorted(missing),
                }
                out = json.dumps(data).encode()
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(out)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": out, "more_body": False})

        await self.app(scope, receive, capture)
