"""What only a real server shows: ``python -m app`` processes under concurrent load.

Micro-batching (seen in /metrics), 429 back-pressure, the API key, hot reload while requests are
flowing, refusing a corrupt version, and graceful SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from indexer.pipeline import BuildOptions, run_build, run_delete
from semsearch.index.layout import IndexRoot
from semsearch.index.manifest import Manifest

pytest_plugins = ["app_fixtures"]

Check = Callable[..., dict[str, Any]]
API_KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
QUERIES = [
    "a large wild cat",
    "a tool for cutting wood",
    "to move quickly on foot",
    "a feeling of great happiness",
    "a building where people worship",
    "a small boat",
    "the act of speaking",
    "a sweet dessert",
]


async def _concurrent_searches(url: str, n: int, headers: dict[str, str] | None = None) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, headers=headers or {}, timeout=120) as client:
        return list(
            await asyncio.gather(
                *(client.post("/search", json={"query": QUERIES[i % len(QUERIES)], "k": 3}) for i in range(n))
            )
        )


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    assert match, f"{name} not in metrics"
    return float(match.group(1))


def _private_copy(app_index: Path, tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    root = tmp_path_factory.mktemp(name) / "root"
    shutil.copytree(app_index, root, symlinks=True)
    return root


@pytest.fixture(scope="module")
def reload_root(app_index: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the small index: the hot-reload test publishes new versions into it."""
    return _private_copy(app_index, tmp_path_factory, "reload")


@pytest.fixture(scope="module")
def refuse_root(app_index: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another private copy: the refusal test switches its ``current`` to broken versions."""
    return _private_copy(app_index, tmp_path_factory, "refuse")


@pytest.fixture(scope="module")
def servers(launch_server: Callable[..., Any], app_index: Path, reload_root: Path, refuse_root: Path) -> dict[str, Any]:
    """The servers of this module, launched together (their start-up overlaps). Each test that changes
    a server's state (breaks its index; the SIGTERM test's is launched by its own fixture) has a server
    of its own, so no test depends on the order the others run in."""
    return {
        "keyed": launch_server(app_index, api_key=API_KEY, batch_window_ms=10, access_log="true"),
        "backpressure": launch_server(app_index, max_queue=2, batch_window_ms=500, max_batch=4, retry_after_s=3),
        "reloading": launch_server(reload_root, api_key=API_KEY, reload_poll_s=0.2),
        "refusing": launch_server(refuse_root, api_key=API_KEY, reload_poll_s=0.2),
    }


def _started(servers: dict[str, Any], name: str) -> Any:
    server = servers[name]
    server.wait_started()
    return server


@pytest.fixture(scope="module")
def keyed(servers: dict[str, Any]) -> Any:
    """API key required; a 10 ms batching window."""
    return _started(servers, "keyed")


@pytest.fixture(scope="module")
def backpressure(servers: dict[str, Any]) -> Any:
    """Two waiting requests at most, a long window: the queue fills at once."""
    return _started(servers, "backpressure")


@pytest.fixture(scope="module")
def reloading(servers: dict[str, Any]) -> Any:
    """Follows ``reload_root``'s ``current`` every 0.2 s; admin routes enabled by the key."""
    return _started(servers, "reloading")


@pytest.fixture(scope="module")
def refusing(servers: dict[str, Any]) -> Any:
    """Follows ``refuse_root``'s ``current`` every 0.2 s; admin routes enabled by the key."""
    return _started(servers, "refusing")


@pytest.fixture
def stopping(launch_server: Callable[..., Any], app_index: Path, servers: dict[str, Any]) -> Any:
    """The server the SIGTERM test stops: its own, launched after the module's servers (fewer
    start-ups at once on a small machine)."""
    server = launch_server(app_index, access_log="true")
    server.wait_started()
    return server


# --------------------------------------------------------------- API key, micro-batching, SIGTERM


def test_concurrent_requests_are_micro_batched(keyed: Any) -> None:
    def batch_metrics() -> tuple[float, float, float]:
        with keyed.client(headers=AUTH) as client:
            text = client.get("/metrics").text
        return (
            _metric(text, "semsearch_encode_batch_size_count"),  # encode calls
            _metric(text, "semsearch_encode_batch_size_sum"),  # texts encoded
            _metric(text, 'semsearch_encode_batch_size_bucket{le="1.0"}'),  # calls with a single text
        )

    calls0, texts0, single0 = batch_metrics()
    responses = asyncio.run(_concurrent_searches(keyed.url, 16, AUTH))
    assert [r.status_code for r in responses] == [200] * 16
    assert all(r.json()["results"] for r in responses)
    calls1, texts1, single1 = batch_metrics()
    calls, texts, single = calls1 - calls0, texts1 - texts0, single1 - single0
    assert texts == 16 and calls < 16 and single < calls  # some encode call served several requests


def test_api_key_is_required_except_on_health(keyed: Any, check_error: Check) -> None:
    with keyed.client() as client:
        assert client.get("/health").status_code == 200
        assert client.get("/").status_code == 200  # the page itself holds no data; it asks for the key
        for method, path in [
            ("GET", "/info"),
            ("GET", "/ready"),
            ("GET", "/metrics"),
            ("GET", "/search?q=cat"),
            ("POST", "/search"),
            ("POST", "/embed"),
            ("POST", "/admin/reload"),
            ("GET", "/nope"),
        ]:
            response = client.request(method, path, json={"query": "cat"} if method == "POST" else None)
            check_error(response, 401, "unauthorized")
            assert response.headers["www-authenticate"] == "Bearer"
        for bad in ("Bearer wrong-key", f"Basic {API_KEY}", f"Bearer {API_KEY}x", "Bearer"):
            check_error(client.get("/info", headers={"Authorization": bad}), 401)
        ok = client.post("/search", json={"query": "cat", "k": 2}, headers=AUTH)
        assert ok.status_code == 200 and len(ok.json()["results"]) == 2
        assert client.get("/info", headers=AUTH).json()["api_key_required"] is True
        reload = client.post("/admin/reload", headers=AUTH)
        assert reload.status_code == 200 and reload.json()["outcome"] == "unchanged"
        keyed.sync_log(client)  # every request above is in the log before it is searched for the key
    assert API_KEY not in keyed.log


def test_sigterm_shuts_down_gracefully(stopping: Any) -> None:
    with stopping.client() as client:
        assert client.post("/search", json={"query": "a large wild cat", "k": 2}).status_code == 200
    # uvicorn finishes the shutdown (lifespan included), then re-raises SIGTERM so that the exit
    # status still tells the supervisor which signal ended the process
    assert stopping.stop() == -signal.SIGTERM
    assert "Shutting down" in stopping.log and "semsearch stopped" in stopping.log
    assert "Finished server process" in stopping.log and "Traceback" not in stopping.log
    assert '"POST /search HTTP/1.1" 200' in stopping.log  # the request before it was served and logged


# --------------------------------------------------------------- back-pressure


def test_full_queue_answers_429_with_retry_after(backpressure: Any, check_error: Check) -> None:
    server = backpressure
    responses = asyncio.run(_concurrent_searches(server.url, 24))
    statuses = [r.status_code for r in responses]
    assert 500 not in statuses and set(statuses) <= {200, 429}, statuses
    assert statuses.count(429) >= 1 and statuses.count(200) >= 1, statuses
    for response in responses:
        if response.status_code == 429:
            check_error(response, 429, "overloaded")
            assert response.headers["retry-after"] == "3"
    with server.client() as client:
        assert client.post("/search", json={"query": "cat"}).status_code == 200  # recovers
        assert (
            'semsearch_http_requests_total{method="POST",route="/search",status="429"}' in client.get("/metrics").text
        )


# --------------------------------------------------------------- hot reload


NEW_ROWS = [
    {
        "id": "test-snow-cat",
        "text": "a pale wild cat of the snowy mountains of central Asia",
        "lemma": "snow leopard",
        "pos": "noun",
        "lexname": "noun.animal",
    },
    {
        "id": "test-river-boat",
        "text": "a flat boat used to carry goods along a river",
        "lemma": "barge",
        "pos": "noun",
        "lexname": "noun.artifact",
    },
]


def test_hot_reload_under_load_drops_no_request(
    reloading: Any, reload_root: Path, tmp_path: Path, app_corpus_rows: list[dict[str, Any]]
) -> None:
    extra = tmp_path / "extra.jsonl"
    extra.write_text("".join(json.dumps(r) + "\n" for r in NEW_ROWS), encoding="utf-8")
    deleted = app_corpus_rows[0]["id"]
    statuses: list[int] = []
    versions: list[str] = []

    async def scenario() -> None:
        stop = asyncio.Event()
        async with httpx.AsyncClient(base_url=reloading.url, headers=AUTH, timeout=120) as client:

            async def user(i: int) -> None:
                while not stop.is_set():
                    response = await client.post("/search", json={"query": QUERIES[i % len(QUERIES)], "k": 3})
                    statuses.append(response.status_code)
                    if response.status_code == 200:
                        versions.append(response.json()["index_version"])

            async def serving(version: str) -> None:
                for _ in range(600):
                    if (await client.get("/info")).json()["index_version"] == version:
                        return
                    await asyncio.sleep(0.1)
                raise AssertionError(f"{version} was never served")

            users = [asyncio.create_task(user(i)) for i in range(4)]
            await asyncio.sleep(0.5)
            await asyncio.to_thread(run_build, BuildOptions(inputs=[extra], output=reload_root, progress=False), True)
            await serving("v000002")
            await asyncio.to_thread(run_delete, reload_root, [deleted])
            await serving("v000003")
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*users)

    asyncio.run(scenario())
    assert statuses and set(statuses) == {200}, [s for s in statuses if s != 200]
    assert versions[0] == "v000001" and versions[-1] == "v000003"
    with reloading.client(headers=AUTH) as client:
        info = client.get("/info").json()
        assert info["count"] == len(app_corpus_rows) + len(NEW_ROWS) - 1
        assert info["last_reload"]["version"] == "v000003" and info["last_reload_error"] is None
        top = client.post("/search", json={"query": NEW_ROWS[0]["text"], "k": 1}).json()["results"][0]
        assert top["id"] == "test-snow-cat"
        hits = client.post("/search", json={"query": app_corpus_rows[0]["text"], "k": 50}).json()["results"]
        assert deleted not in {h["id"] for h in hits}
        assert 'semsearch_reloads_total{outcome="reloaded"} 2.0' in client.get("/metrics").text


def test_corrupt_version_is_refused_and_the_old_one_keeps_serving(
    refusing: Any, refuse_root: Path, check_error: Check, waiter: Callable[..., bool]
) -> None:
    root = IndexRoot(refuse_root)
    serving = root.current_version()
    # a new version whose segment's SQLite store is garbage (a copy of the served segment, corrupted)
    manifest = Manifest.read(root.versions_dir / str(serving))
    bad_segment = root.segments_dir / "s-corrupt-copy"
    shutil.copytree(root.segments_dir / manifest.segments[0]["name"], bad_segment)
    (bad_segment / "docs.sqlite").write_bytes(b"this is not a SQLite database" * 100)
    bad = root.versions_dir / root.next_version()
    shutil.copytree(root.versions_dir / str(serving), bad)
    manifest.segments = [{**manifest.segments[0], "name": bad_segment.name}, *manifest.segments[1:]]
    manifest.version = bad.name
    manifest.write(bad)
    tmp_link = refuse_root / ".current.test"
    os.symlink(f"versions/{bad.name}", tmp_link)
    os.replace(tmp_link, refuse_root / "current")  # the atomic switch a buggy writer could make

    with refusing.client(headers=AUTH) as client:
        assert waiter(lambda: client.get("/info").json()["last_reload_error"] is not None, timeout=60)
        info = client.get("/info").json()
        assert info["index_version"] == serving
        assert info["last_reload_error"]["version"] == bad.name
        assert info["last_reload_error"]["code"] == "corrupt_index"
        search = client.post("/search", json={"query": "a large wild cat", "k": 2})
        assert search.status_code == 200 and search.json()["index_version"] == serving
        assert client.get("/ready").status_code == 200
        error = check_error(client.post("/admin/reload"), 409, "reload_refused")
        assert error["detail"]["version"] == bad.name and error["detail"]["serving"] == serving
        assert bad.name in error["message"] and "docs.sqlite" in error["message"]

        # a version whose manifest names another model (hand-edited): reload applies startup's checks
        edited = root.versions_dir / root.next_version()
        shutil.copytree(root.versions_dir / str(serving), edited)
        data = json.loads((edited / "manifest.json").read_text())
        data["model"] = "someone/else"
        (edited / "manifest.json").write_text(json.dumps(data))
        os.symlink(f"versions/{edited.name}", tmp_link)
        os.replace(tmp_link, refuse_root / "current")
        error = check_error(client.post("/admin/reload"), 409, "reload_refused")
        assert error["detail"]["version"] == edited.name and "checksum does not match" in error["message"]
        info = client.get("/info").json()
        assert info["index_version"] == serving and info["index"]["model"] != "someone/else"
    assert f"refused index version {bad.name}" in refusing.log
