"""Idle and half-sent connections cannot take the server down (issue 20, item 8).

A real ``python -m app`` under ``ulimit -n 1024`` (set in the child before exec), short read deadlines,
and 1,100 hostile sockets: idle ones, ones stuck in their headers and ones stuck in their body. Before
the fix nothing closed them and accept() ran out of descriptors, so every good request failed for as
long as they stayed open. Now the connections over the cap get a JSON 503 and are closed at once, the
slow ones get a 408 and are closed at their deadline, and good requests succeed again within
``header_timeout_s`` (+ the time to answer), while the hostile sockets are still held by the client.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from app_fixtures import REPO, ServerProcess, wait_until

pytest_plugins = ["app_fixtures"]

HOSTILE = 1100
FD_LIMIT = 1024
TIMEOUT_S = 2.0


class LimitedServer(ServerProcess):
    """``python -m app`` with RLIMIT_NOFILE (soft and hard) set to ``FD_LIMIT`` before exec."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        super().__init__(args, env, lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT)))


@pytest.fixture(scope="module")
def limited_server(app_index: Path) -> Iterator[LimitedServer]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = HOSTILE + 200  # this test process holds the hostile sockets
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"the test process needs {need} file descriptors; its hard limit is {hard}")
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEMSEARCH_")}
    env.update(
        {
            "SEMSEARCH_RELOAD_POLL_S": "0",
            "SEMSEARCH_ACCESS_LOG": "false",
            "SEMSEARCH_HEADER_TIMEOUT_S": str(TIMEOUT_S),
            "SEMSEARCH_BODY_TIMEOUT_S": str(TIMEOUT_S),
            "SEMSEARCH_KEEP_ALIVE_S": str(TIMEOUT_S),
            "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        }
    )
    server = LimitedServer(["--index", str(app_index), "--port", "0"], env)
    server.wait_started()
    yield server
    server.stop()
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    return parts.hostname, parts.port


def _read_all(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def _json_body(raw: bytes) -> dict:
    _, _, body = raw.partition(b"\r\n\r\n")
    return dict(json.loads(body))


def test_the_fd_limit_is_checked_at_start_up(limited_server: LimitedServer) -> None:
    log = limited_server.log
    assert "the open-file limit is 1024 (hard 1024)" in log, log[-3000:]
    assert "serving with a cap of" in log


def test_good_requests_succeed_while_1100_idle_and_half_sent_sockets_are_held(limited_server: LimitedServer) -> None:
    host, port = _address(limited_server.url)
    payload = b'{"query": "a large wild cat", "k": 3}'
    hostile: list[tuple[str, socket.socket]] = []
    try:
        for i in range(HOSTILE):
            sock = socket.create_connection((host, port), timeout=10)
            kind = ("idle", "headers", "body")[i % 3]
            if kind == "headers":
                sock.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Ty")
            elif kind == "body":
                sock.sendall(
                    b"POST /search HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n" % len(payload) + payload[:5]
                )
            hostile.append((kind, sock))
        opened = time.monotonic()

        # Good requests, each on a new connection, until one succeeds: refused (503, the JSON shape) while
        # the slow sockets fill the cap, served once their deadline has closed them.
        answers: list[int] = []

        def good() -> bool:
            try:
                r = httpx.post(
                    limited_server.url + "/search",
                    content=payload,
                    timeout=30,
                    headers={"content-type": "application/json"},
                )
            except httpx.TransportError:
                answers.append(0)
                return False
            answers.append(r.status_code)
            if r.status_code == 503:
                assert r.json()["error"]["code"] == "too_many_connections", r.text
            return r.status_code == 200 and len(r.json()["results"]) == 3

        assert wait_until(good, timeout=TIMEOUT_S + 20, every=0.2), (answers[-10:], limited_server.log[-3000:])
        recovered = time.monotonic() - opened
        assert set(answers) <= {200, 503}, answers  # never a reset or a hang: a clear answer every time
        # ... and good requests keep succeeding while the hostile client still holds its sockets
        for _ in range(5):
            assert good()

        # every hostile socket was answered and closed by the server: a 503 over the cap, a 408 at the deadline
        codes: dict[str, set[str]] = {"idle": set(), "headers": set(), "body": set()}
        for kind, sock in hostile:
            raw = _read_all(sock, timeout=TIMEOUT_S + 10)
            assert raw, f"a {kind} socket was left open"
            codes[kind].add(_json_body(raw)["error"]["code"])
        assert codes["body"] <= {"request_timeout", "too_many_connections"} and "request_timeout" in codes["body"]
        assert "request_timeout" in codes["headers"] and "request_timeout" in codes["idle"]
        assert "too_many_connections" in codes["idle"] | codes["headers"] | codes["body"]
        print(f"\nrecovered after {recovered:.1f} s; answers while recovering: {answers}")
    finally:
        for _, sock in hostile:
            sock.close()
    assert "Too many open files" not in limited_server.log


def test_an_idle_keep_alive_connection_is_closed(limited_server: LimitedServer) -> None:
    host, port = _address(limited_server.url)
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        first = _read_all(sock, timeout=TIMEOUT_S + 10)  # the answer, then EOF when keep-alive expires
        assert first.startswith(b"HTTP/1.1 200"), first[:200]
        assert sock.recv(1) == b""  # closed by the server


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",  # not a request line
        b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",  # Content-Length not a number
        b"GET /search?q=\xff HTTP/1.1\r\nHost: x\r\n\r\n",  # raw non-ASCII byte in the URL
    ],
)
def test_what_the_parser_refuses_gets_the_one_json_error_shape(
    limited_server: LimitedServer, request_bytes: bytes
) -> None:
    with socket.create_connection(_address(limited_server.url), timeout=10) as sock:
        sock.sendall(request_bytes)
        raw = _read_all(sock, 10)
    assert raw.startswith(b"HTTP/1.1 400"), raw[:200]
    assert b"content-type: application/json" in raw.lower()
    error = _json_body(raw)["error"]
    assert error["code"] == "bad_request" and "could not be parsed" in error["message"]
