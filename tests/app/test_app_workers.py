"""``python -m app`` server-process options: the HTTP stack it runs on and ``--workers N`` processes."""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

pytest_plugins = ["app_fixtures"]


def test_server_runs_on_httptools_and_uvloop(launch_server: Callable[..., Any], app_index: Path) -> None:
    server = launch_server(app_index)
    server.wait_started()
    assert "(http httptools, loop uvloop;" in server.log, server.log
    with server.client() as client:
        assert client.post("/search", json={"query": "a domestic animal", "k": 2}).status_code == 200


def test_two_worker_processes_share_the_port(app_index: Path, app_clean_env: None) -> None:
    """--workers 2: two uvicorn worker processes answer on one socket, with the flags' settings, and
    SIGTERM stops them all gracefully."""
    ServerProcess = importlib.import_module("app_fixtures").ServerProcess  # the registered plugin module
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEMSEARCH_")}
    env.update({"SEMSEARCH_RELOAD_POLL_S": "0", "SEMSEARCH_ACCESS_LOG": "false"})
    server = ServerProcess(["--index", str(app_index), "--port", "0", "--workers", "2", "--max-k", "3"], env)
    try:
        server.wait_started()
        assert "(2 worker processes;" in server.log, server.log
        wait_until = importlib.import_module("app_fixtures").wait_until
        # the workers load the model after the socket is bound
        assert wait_until(lambda: server.log.count("Application startup complete") == 2, 240), server.log
        with server.client() as client:

            def one(i: int) -> tuple[int, int]:
                response = client.post("/search", json={"query": f"an animal number {i}", "k": 3})
                return response.status_code, len(response.json().get("results", []))

            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(one, range(40)))
            assert answers == [(200, 3)] * 40, answers
            # --max-k reached the workers (the flag is handed over as SEMSEARCH_MAX_K)
            assert client.post("/search", json={"query": "an animal", "k": 4}).status_code == 422
        # each worker logs its own start (its logging is set up like the parent's)
        pids = set(re.findall(r"Started server process \[(\d+)\]", server.log))
        assert len(pids) == 2, server.log
        assert server.log.count("app.services: serving index") == 3, server.log  # the parent's check + 2 workers
    finally:
        status = server.stop()
    assert status in (0, -15), server.log
