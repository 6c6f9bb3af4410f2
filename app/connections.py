"""Connections cannot exhaust the server (issue 20, item 8): read deadlines, a cap, the fd limit.

uvicorn 0.55 closes an idle keep-alive connection (``timeout_keep_alive``) but has no deadline for
reading a request: a connection that never sends its headers, or sends them a byte at a time, or stops
half-way through its body, is held open forever, and nothing caps the number of connections (its
``limit_concurrency`` answers 503 only once a request's headers are in, after the socket is taken). With
``ulimit -n 1024``, 1,100 such sockets made accept() fail and every good request with it.

:func:`guarded_protocol` subclasses uvicorn's HTTP protocol (httptools or h11) with

* a **header deadline**: the request line and headers must be complete within ``header_timeout_s`` of
  the connection (first request) or of the request's first byte (later ones); no timer runs while a
  request is being answered, and an idle connection between requests is uvicorn's keep-alive's;
* a **body deadline**: the body must be complete within ``body_timeout_s`` of the headers;
* a **cap**: a connection beyond ``max_connections`` open ones gets a 503 ``too_many_connections`` in
  the one error shape and is closed at once (its file descriptor is free again immediately).

A missed deadline answers 408 ``request_timeout`` (when no response has started) and closes. The
timers are ``loop.call_later`` handles armed and cancelled per request: no polling, nothing per byte.

:func:`fit_fd_limit` runs at start-up: it raises the soft ``RLIMIT_NOFILE`` toward the hard limit and
lowers the cap, with a warning that gives the numbers, when the cap would not fit under it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("app")

FD_RESERVE = 64  # descriptors kept free beyond those open at start-up: index reloads, logs, the listening socket


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int
    header_timeout_s: float
    body_timeout_s: float


def _response(status: int, reason: str, code: str, message: str, detail: dict[str, Any]) -> bytes:
    body = json.dumps({"error": {"code": code, "message": message, "detail": detail}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\nconnection: close\r\n"
        f"content-length: {len(body)}\r\n"
    )
    if status == 503:
        head += "retry-after: 1\r\n"
    return head.encode() + b"\r\n" + body


def refusal(limit: int) -> bytes:
    return _response(
        503,
        "Service Unavailable",
        "too_many_connections",
        f"the server holds its maximum of {limit} connections; retry later",
        {"max_connections": limit},
    )


def timeout_response(what: str, seconds: float) -> bytes:
    return _response(
        408,
        "Request Timeout",
        "request_timeout",
        f"the request's {what} did not arrive within {seconds:g} s",
        {"waited_for": what, "timeout_s": seconds},
    )


class _Guard:
    """Mixin over a uvicorn HTTP protocol; ``limits`` is set on the subclass by :func:`guarded_protocol`."""

    limits: ConnectionLimits
    connections: set[Any]
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop

    _refused = False
    _phase = "headers"  # headers | body | idle (request complete: being answered, or keep-alive)
    _timer: asyncio.TimerHandle | None = None
    _responding = False

    def connection_made(self, transport: asyncio.Transport) -> None:
        if len(self.connections) >= self.limits.max_connections:
            self._refused = True
            transport.write(refusal(self.limits.max_connections))
            transport.close()
            return
        super().connection_made(transport)  # type: ignore[misc]
        self._arm("headers", self.limits.header_timeout_s)

    def send_400_response(self, msg: str) -> None:
        """What the HTTP parser refuses (a malformed request line or header, a bad ``Content-Length``,
        raw non-ASCII bytes in the URL...) in the one JSON error shape instead of uvicorn's plain text."""
        self._disarm()
        self.transport.write(
            _response(400, "Bad Request", "bad_request", f"the HTTP request could not be parsed: {msg}", {})
        )
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._phase == "idle" and self._timer is None:  # the first byte of a next request
            self._arm("headers", self.limits.header_timeout_s)
        super().data_received(data)  # type: ignore[misc]
        self._after_data()

    def _after_data(self) -> None:
        """Hook for protocols without parser callbacks (h11)."""

    # httptools parser callbacks
    def on_headers_complete(self) -> None:
        super().on_headers_complete()  # type: ignore[misc]
        self._arm("body", self.limits.body_timeout_s)

    def on_message_complete(self) -> None:
        super().on_message_complete()  # type: ignore[misc]
        self._phase = "idle"
        self._disarm()

    def _arm(self, phase: str, seconds: float) -> None:
        self._disarm()
        self._phase = phase
        self._timer = self.loop.call_later(seconds, self._expired, phase, seconds)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self, phase: str, seconds: float) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        cycle = getattr(self, "cycle", None)
        started = cycle is not None and getattr(cycle, "response_started", False)
        if not started:
            self.transport.write(timeout_response(phase, seconds))
        log.debug("closing a connection: its request %s did not arrive within %g s", phase, seconds)
        self.transport.close()


class _H11Guard(_Guard):
    """h11 has no parser callbacks: read the connection's state after each feed."""

    def on_headers_complete(self) -> None:  # pragma: no cover - not an h11 method
        raise NotImplementedError

    def on_message_complete(self) -> None:  # pragma: no cover - not an h11 method
        raise NotImplementedError

    def _after_data(self) -> None:
        import h11

        conn = getattr(self, "conn", None)
        if conn is None or self.transport.is_closing():
            return
        state = conn.their_state
        if state is h11.SEND_BODY and self._phase == "headers":
            self._arm("body", self.limits.body_timeout_s)
        elif state in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED) and self._phase != "idle":
            self._phase = "idle"
            self._disarm()
        elif state is h11.IDLE and self._phase == "idle" and not conn.trailing_data[0]:
            self._disarm()


_LIMITS: ConnectionLimits | None = None


def configure(limits: ConnectionLimits) -> None:
    """The limits of this process's guarded protocols (``python -m app`` sets them before serving)."""
    global _LIMITS
    _LIMITS = limits


def current_limits() -> ConnectionLimits:
    """The configured limits; in a ``--workers`` process, from its ``SEMSEARCH_*`` environment."""
    global _LIMITS
    if _LIMITS is None:
        from app.settings import get_settings

        s = get_settings()
        _LIMITS = ConnectionLimits(fit_fd_limit(s.max_connections), s.header_timeout_s, s.body_timeout_s)
    return _LIMITS


def _limits_of(_: Any) -> ConnectionLimits:
    return current_limits()


# Module-level classes (not made per call): a ``--workers`` config is pickled into its processes.
try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedHttpToolsProtocol(_Guard, HttpToolsProtocol):  # type: ignore[misc]
        limits = property(_limits_of)

except ImportError:  # pragma: no cover - httptools is a dependency (uvicorn[standard])
    GuardedHttpToolsProtocol = None  # type: ignore[assignment,misc]

from uvicorn.protocols.http.h11_impl import H11Protocol  # noqa: E402


class GuardedH11Protocol(_H11Guard, H11Protocol):  # type: ignore[misc]
    limits = property(_limits_of)


def guarded_protocol(http: str) -> type[asyncio.Protocol]:
    """uvicorn's ``http`` protocol class (``auto``: httptools when installed) with the guard."""
    if http in ("auto", "httptools") and GuardedHttpToolsProtocol is not None:
        return GuardedHttpToolsProtocol
    if http == "httptools":
        raise ImportError("httptools is not installed")
    return GuardedH11Protocol


def open_fds() -> int:
    """File descriptors this process has open (Linux /proc; elsewhere an estimate of 32)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 32


def fit_fd_limit(max_connections: int) -> int:
    """Raise the soft fd limit toward the hard one as far as the cap needs; return the cap that fits.

    Each connection is one descriptor; beyond them the process keeps those open now (model, index files,
    SQLite) and :data:`FD_RESERVE` more. A cap that does not fit is lowered, with a warning."""
    try:
        import resource
    except ImportError:  # not POSIX
        return max_connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    used = open_fds()
    needed = max_connections + used + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                log.info("raised the open-file limit from %d to %d (hard limit %s)", soft, target, hard)
                soft = target
            except (ValueError, OSError) as e:
                log.warning("cannot raise the open-file limit from %d: %s", soft, e)
    if soft == resource.RLIM_INFINITY:
        return max_connections
    fits = max(1, soft - used - FD_RESERVE)
    if fits < max_connections:
        log.warning(
            "the open-file limit is %d (hard %s) and %d are in use: at most %d connections fit, not "
            "SEMSEARCH_MAX_CONNECTIONS=%d; serving with a cap of %d (raise `ulimit -n` for more)",
            soft,
            "unlimited" if hard == resource.RLIM_INFINITY else hard,
            used,
            fits,
            max_connections,
            fits,
        )
        return fits
    return max_connections
