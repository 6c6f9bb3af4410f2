"""Shared fixtures of the service tests: one small real index, one in-process app, real server processes.

Everything is real: the packaged MiniLM model, FAISS and the index files written by the indexer.

This is a plugin module (each test module here says ``pytest_plugins = ["app_fixtures"]``) rather than
``tests/app/conftest.py``: tests in ``tests/`` import helpers with ``from conftest import ...``, which
breaks as soon as a second ``conftest`` module exists. Plugin fixtures are global, hence the ``app_``
prefixes (a ``tests/conftest.py`` fixture of the same name would win).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from indexer.pipeline import BuildOptions, run_build

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample" / "wordnet_glosses.jsonl.gz"
API_KEY = "test-key-0123456789"
_SERVING_RE = re.compile(r"semsearch serving .* at (http://\S+?)/ ")


@pytest.fixture(scope="session")
def app_clean_env() -> Iterator[None]:
    """Settings come from the tests, never from the developer's SEMSEARCH_* variables."""
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith("SEMSEARCH_")]:
            mp.delenv(name)
        yield


@pytest.fixture(scope="session")
def app_corpus_rows() -> list[dict[str, Any]]:
    """About 310 real WordNet glosses: every 40th row (all parts of speech) plus the cat glosses."""
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    picked = [r for i, r in enumerate(rows) if i % 40 == 0]
    cats = [r for r in rows if r["lexname"] == "noun.animal" and re.search(r"\bcats?\b", r["text"]) and r not in picked]
    return picked + cats


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def app_corpus_file(tmp_path_factory: pytest.TempPathFactory, app_corpus_rows: list[dict[str, Any]]) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "glosses.jsonl", app_corpus_rows)


@pytest.fixture(scope="session")
def app_index(tmp_path_factory: pytest.TempPathFactory, app_corpus_file: Path) -> Path:
    """An index root with one published version (v000001), built by the real indexer."""
    root = tmp_path_factory.mktemp("index") / "root"
    run_build(BuildOptions(inputs=[app_corpus_file], output=root, progress=False))
    return root


@pytest.fixture(scope="session")
def app_settings(app_index: Path, app_clean_env: None) -> Callable[..., Settings]:
    """Settings for an in-process app over the small index (no reload polling unless asked)."""

    def make(**overrides: Any) -> Settings:
        # reranker_backend torch: the tests compare with torch scores (auto is tested on its own)
        values: dict[str, Any] = {"index": app_index, "reload_poll_s": 0, "threads": 2, "reranker_backend": "torch"}
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture(scope="session")
def app_client(app_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    """The shared in-process app (lifespan on): no API key, no reranker."""
    app = create_app(app_settings())
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


# ------------------------------------------------------------------------------------ real servers


class ServerProcess:
    """``python -m app`` in a subprocess; ``url`` is read from its "semsearch serving ... at URL" line."""

    def __init__(self, args: list[str], env: dict[str, str], preexec_fn: Callable[[], Any] | None = None) -> None:
        self.lines: list[str] = []
        self.url = ""
        self._ready = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app", *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=preexec_fn,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            match = _SERVING_RE.search(line)
            if match:
                self.url = match.group(1)
                self._ready.set()
        self._ready.set()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_started(self, timeout: float = 300) -> None:  # several start at once on 2 shared cores
        if not self._ready.wait(timeout) or not self.url:
            self.stop()
            raise AssertionError(f"server did not start:\n{self.log}")

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)

    def sync_log(self, client: httpx.Client) -> None:
        """Until everything the server logged so far has been read (needs its access log on): a
        request with a unique mark, then wait for the mark's access-log line."""
        mark = f"/health?sync={uuid.uuid4().hex}"
        client.get(mark)
        assert wait_until(lambda: mark in self.log, 30), self.log[-2000:]

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM (graceful), then wait; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(10)  # the pipe's last lines: every line the server wrote is in ``log``
        return self.proc.returncode


@pytest.fixture(scope="module")
def launch_server() -> Iterator[Callable[..., ServerProcess]]:
    """Launch real uvicorn servers (``python -m app --port 0``) without waiting for them (several start
    in parallel); call ``wait_started()`` before use. All are stopped (SIGTERM) at the end of the test
    module, so the suite never holds more than one module's servers (each has the model loaded)."""
    started: list[ServerProcess] = []

    def launch(index: Path, **settings: Any) -> ServerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEMSEARCH_")}
        env.update({f"SEMSEARCH_{k.upper()}": str(v) for k, v in settings.items()})
        env.setdefault("SEMSEARCH_RELOAD_POLL_S", "0")
        env.setdefault("SEMSEARCH_RERANKER_BACKEND", "torch")  # as app_settings: no ONNX export per server
        env.setdefault("SEMSEARCH_ACCESS_LOG", "false")
        server = ServerProcess(["--index", str(index), "--port", "0"], env)
        started.append(server)
        return server

    yield launch
    for server in started:
        server.stop()


def wait_until(condition: Callable[[], bool], timeout: float = 30, every: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return condition()


@pytest.fixture(scope="session")
def waiter() -> Callable[..., bool]:
    """``waiter(condition, timeout)``: poll until true (no timing asserts, only deadlines)."""
    return wait_until


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The one error shape; returns the ``error`` object."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "detail"}, error
    assert isinstance(error["code"], str) and isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return dict(error)


@pytest.fixture(scope="session")
def check_error() -> Callable[..., dict[str, Any]]:
    return assert_error


@pytest.fixture(scope="session")
def untrained_reranker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real cross-encoder folder (the packaged MiniLM with an untrained one-logit head, no card), so
    rerank requests are served rather than 503."""
    from sentence_transformers import CrossEncoder

    from semsearch.models.source import resolve_model

    out = tmp_path_factory.mktemp("untrained-reranker") / "model"
    CrossEncoder(str(resolve_model(None).path), num_labels=1).save(str(out))
    return out
