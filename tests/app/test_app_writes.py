"""Online writes through a real server started with --writable: visibility, get, delete, atomicity,
the writer lock against the CLI, refused configurations, flush + restart."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from app_fixtures import REPO, ServerProcess, assert_error, wait_until

pytest_plugins = ["app_fixtures"]


def copy_index(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


@pytest.fixture(scope="module")
def writable(app_index: Path, tmp_path_factory: pytest.TempPathFactory, launch_server: Callable[..., ServerProcess]):
    root = copy_index(app_index, tmp_path_factory.mktemp("writable") / "root")
    # no flush in this module (the counters of test_info_and_metrics_show_the_writes count on it)
    server = launch_server(root, writable="true", refresh_interval_s="0.5", flush_rows="1000000", flush_age_s="86000")
    server.wait_started()
    return root, server


def top(client: httpx.Client, query: str, **extra: Any) -> list[dict[str, Any]]:
    r = client.post("/search", json={"query": query, "k": 3, **extra})
    assert r.status_code == 200, r.text
    return r.json()["results"]


def test_upsert_wait_is_visible_on_return(writable: tuple[Path, ServerProcess]) -> None:
    _, server = writable
    with server.client() as c:
        text = "a zebra-striped teapot that whistles sea shanties"
        r = c.post("/documents", json={"documents": [{"id": "teapot", "text": text, "metadata": {"kind": "pot"}}]})
        assert r.status_code == 200, r.text
        assert r.json()["upserted"] == 1 and r.json()["visible"] is True
        hits = top(c, text)
        assert hits[0]["id"] == "teapot" and hits[0]["score"] >= 0.9999
        assert top(c, text, filter={"kind": "pot"})[0]["id"] == "teapot"
        assert top(c, "zebra teapot shanties", mode="lexical")[0]["id"] == "teapot"
        assert c.get("/documents/teapot").json() == {"id": "teapot", "text": text, "metadata": {"kind": "pot"}}


def test_upsert_without_wait_is_visible_within_the_refresh_interval(writable: tuple[Path, ServerProcess]) -> None:
    _, server = writable
    with server.client() as c:
        text = "an origami giraffe folded from a bus ticket"
        r = c.post("/documents", json={"documents": [{"id": 41, "text": text}], "wait": False})
        assert r.status_code == 200 and r.json()["visible"] is False
        assert c.get("/documents/41").json()["id"] == 41  # get is real time
        assert wait_until(lambda: top(c, text)[0]["id"] == 41, timeout=5, every=0.05)


def test_upsert_replaces_and_delete_removes(writable: tuple[Path, ServerProcess]) -> None:
    _, server = writable
    with server.client() as c:
        first = c.get("/search", params={"q": "cat", "k": 1}).json()["results"][0]  # a row of the disk segment
        new_text = "a replaced gloss about a velvet accordion"
        assert c.post("/documents", json={"documents": [{"id": first["id"], "text": new_text}]}).status_code == 200
        assert c.get(f"/documents/{first['id']}").json()["text"] == new_text
        assert first["id"] not in [h["id"] for h in top(c, first["text"])]  # the old row is tombstoned
        r = c.post("/documents/delete", json={"ids": [first["id"], "never-there"]})
        assert r.status_code == 200, r.text
        assert r.json()["deleted"] == 1 and r.json()["missing"] == ["never-there"]
        assert_error(c.get(f"/documents/{first['id']}"), 404, "not_found")
        assert all(h["id"] != first["id"] for h in top(c, new_text))
        c.post("/documents", json={"documents": [{"id": "del-me", "text": "a doomed sentence about marmalade"}]})
        r = c.delete("/documents/del-me")
        assert r.status_code == 200 and r.json()["deleted"] == 1
        assert_error(c.get("/documents/del-me"), 404)


def test_python_client_round_trip(writable: tuple[Path, ServerProcess]) -> None:
    """semsearch.client's upsert/get/delete against the real server, sync and async."""
    import asyncio

    from semsearch.client import AsyncClient, Client, Document

    _, server = writable
    text = "a brass telescope that only shows tomorrow's weather"
    with Client(server.url) as client:
        done = client.upsert([Document("sdk/1", text, {"via": "sdk"}), {"id": 901, "text": "a second sdk document"}])
        assert (done.upserted, done.visible) == (2, True)
        assert client.search(text, k=1).results[0].id == "sdk/1"
        assert client.get("sdk/1") == Document("sdk/1", text, {"via": "sdk"})  # a '/' in the id survives the path
        assert client.get(901) == Document(901, "a second sdk document", {})
        gone = client.delete(["sdk/1", "sdk/never"])
        assert (gone.deleted, gone.missing, gone.visible) == (1, ["sdk/never"], True)
        assert client.get("sdk/1") is None
        assert all(h.id != "sdk/1" for h in client.search(text, k=3).results)

    async def run() -> None:
        async with AsyncClient(server.url) as aclient:
            ack = await aclient.upsert([Document("sdk/2", "an async sdk document")], wait=False)
            assert ack.upserted == 1 and ack.seq > done.seq
            assert await aclient.get("sdk/2") == Document("sdk/2", "an async sdk document", {})
            assert (await aclient.delete([901])).deleted == 1
            assert await aclient.get(901) is None

    asyncio.run(run())


def metric(text: str, name: str) -> float:
    """The value of one sample line of the Prometheus text (``name`` with its labels, exactly)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


def test_info_and_metrics_show_the_writes(writable: tuple[Path, ServerProcess]) -> None:
    root, server = writable
    with server.client() as c:
        before = c.get("/info").json()["writes"]
        assert before["writable"] is True and before["flush_rows"] == 1000000 and before["refresh_interval_s"] == 0.5
        docs = [{"id": f"info-{i}", "text": f"an info counter sentence number {i}"} for i in range(3)]
        assert c.post("/documents", json={"documents": docs}).status_code == 200
        assert c.post("/documents/delete", json={"ids": ["info-0", "info-none"]}).status_code == 200
        after = c.get("/info").json()["writes"]
        assert after["upsert_requests"] == before["upsert_requests"] + 1
        assert after["upserted"] == before["upserted"] + 3
        assert (after["delete_requests"], after["deleted"]) == (before["delete_requests"] + 1, before["deleted"] + 1)
        assert after["pending_rows"] == before["pending_rows"] + 2  # no flush in this module (flush_rows huge)
        assert after["applied_seq"] == after["visible_seq"] == before["applied_seq"] + 2
        assert after["refreshes"] > before["refreshes"] and after["last_refresh"].endswith("Z")
        wal = sum(p.stat().st_size for p in (root / "wal").glob("*.log"))
        assert after["wal_bytes"] == wal > before["wal_bytes"] and after["wal_files"] >= 1
        assert after["flushes"] == 0 and after["last_flush"] is None and after["merges"] == 0
        assert after["queue"] == {"in_flight": 0, "max": after["queue"]["max"]}
        text = c.get("/metrics").text
        assert metric(text, "semsearch_wal_bytes") == wal
        assert metric(text, "semsearch_pending_writes") == after["pending_rows"] + after["pending_deletes"]
        assert metric(text, 'semsearch_writes_total{op="upsert"}') >= 3
        assert metric(text, "semsearch_last_refresh_timestamp_seconds") > 0
        assert metric(text, "semsearch_last_flush_timestamp_seconds") == 0
        assert "semsearch_wal_commit_seconds_count" in text


def test_a_request_with_one_bad_document_writes_nothing(writable: tuple[Path, ServerProcess]) -> None:
    _, server = writable
    with server.client() as c:
        docs = [{"id": "atom-1", "text": "fine"}, {"id": "atom-2", "text": "   "}]
        assert_error(c.post("/documents", json={"documents": docs}), 422, "invalid_input")
        raw = (
            b'{"documents": [{"id": "atom-1", "text": "fine"}, {"id": "atom-2", "text": "x", "metadata": {"n": NaN}}]}'
        )
        r = c.post("/documents", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 422, r.text
        both = [{"id": "a", "text": "x"}, {"id": 1, "text": "y"}, {"id": "1", "text": "z"}]
        assert_error(c.post("/documents", json={"documents": both}), 422)
        assert_error(c.get("/documents/atom-1"), 404)
        # an id keeps its type: 41 (an integer, written above or here) cannot become "41"
        c.post("/documents", json={"documents": [{"id": 77, "text": "an integer id"}]})
        mixed = [{"id": "ok-77", "text": "x"}, {"id": "77", "text": "a string id"}]
        r = c.post("/documents", json={"documents": mixed})
        assert_error(r, 422)
        assert_error(c.get("/documents/ok-77"), 404)
        assert c.get("/documents/77").json()["id"] == 77


def test_cli_is_refused_while_the_service_holds_the_lock(writable: tuple[Path, ServerProcess]) -> None:
    root, _ = writable
    run = subprocess.run(
        [sys.executable, "-m", "indexer", "delete", "--index", str(root), "--ids", "x", "--missing-ok"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1, run.stderr
    assert "semsearch service (--writable)" in run.stderr and "writer lock" in run.stderr


def test_writes_are_refused_without_writable(app_client: Any) -> None:
    r = app_client.post("/documents", json={"documents": [{"id": "x", "text": "y"}]})
    assert r.status_code == 403 and r.json()["error"]["code"] == "writes_disabled"
    assert "SEMSEARCH_WRITABLE" in r.json()["error"]["message"]
    assert app_client.post("/documents/delete", json={"ids": ["x"]}).status_code == 403
    assert app_client.delete("/documents/x").status_code == 403
    assert app_client.get("/documents/nope").status_code == 404
    assert app_client.get("/info").json()["writes"] == {"writable": False}


def test_workers_and_ray_with_writable_are_refused(app_index: Path) -> None:
    for extra in (["--workers", "2"], ["--engine", "ray"]):
        run = subprocess.run(
            [sys.executable, "-m", "app", "--index", str(app_index), "--writable", *extra],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 2
        assert "--writable" in run.stderr and "cannot start" in run.stderr


def test_flush_and_restart_keep_everything(
    app_index: Path, tmp_path: Path, launch_server: Callable[..., ServerProcess]
) -> None:
    root = copy_index(app_index, tmp_path / "root")
    server = launch_server(root, writable="true", flush_rows="5", refresh_interval_s="0.2")
    server.wait_started()
    docs = [
        {"id": f"f{i}", "text": f"flush test sentence number {i} about lighthouses", "metadata": {"i": i}}
        for i in range(12)
    ]
    with server.client() as c:
        for d in docs:
            assert c.post("/documents", json={"documents": [d], "wait": False}).status_code == 200
        assert c.post("/documents/delete", json={"ids": ["f3"]}).json()["deleted"] == 1
        assert wait_until(lambda: len(list((root / "versions").iterdir())) > 1, 60)
        assert wait_until(lambda: c.get("/info").json()["writes"]["flushes"] >= 1, 10)
        info = c.get("/info").json()["writes"]
        assert info["last_flush"]["version"] and info["flush_failures"] == 0 and info["last_error"] is None
        assert metric(c.get("/metrics").text, 'semsearch_flushes_total{outcome="flushed"}') == info["flushes"]
        assert metric(c.get("/metrics").text, "semsearch_last_flush_timestamp_seconds") > 0
        c.post("/documents", json={"documents": [{"id": "late", "text": "written after the flush"}]})
    assert server.stop() == -signal.SIGTERM  # graceful: uvicorn re-raises the signal
    again = launch_server(root, writable="true")
    again.wait_started()
    with again.client() as c:
        for d in docs:
            r = c.get(f"/documents/{d['id']}")
            if d["id"] == "f3":
                assert r.status_code == 404
            else:
                assert r.json() == d
                assert top(c, d["text"])[0]["id"] == d["id"]
        assert c.get("/documents/late").status_code == 200
    assert again.stop() == -signal.SIGTERM
    assert "flushed" in again.log or "nothing" not in again.log
    verify = subprocess.run(
        [sys.executable, "-m", "indexer", "verify", "--index", str(root)], cwd=REPO, capture_output=True, text=True
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_an_integral_float_id_is_the_integer(writable: tuple[Path, ServerProcess]) -> None:
    """630966.0 is a JSON Schema integer (schemathesis sent it): it is stored and returned as 630966."""
    _, server = writable
    with server.client() as c:
        r = c.post("/documents", json={"documents": [{"id": 630966.0, "text": "an integral float id"}]})
        assert r.status_code == 200, r.text
        assert c.get("/documents/630966").json()["id"] == 630966
        assert_error(c.post("/documents", json={"documents": [{"id": 6.5, "text": "no"}]}), 422)


def test_deleting_every_document_flushes_to_an_empty_version(
    app_index: Path,
    app_corpus_rows: list[dict[str, Any]],
    tmp_path: Path,
    launch_server: Callable[..., ServerProcess],
) -> None:
    """A flush that leaves zero live rows publishes an empty version (it used to fail for good, keeping the
    deletes in memory and in the WAL); after a kill and a restart searches answer nothing, /info counts 0,
    and new upserts work."""
    import json

    root = copy_index(app_index, tmp_path / "root")
    server = launch_server(root, writable="true", flush_rows="100", refresh_interval_s="0.2")
    server.wait_started()
    ids: list[Any] = [r["id"] for r in app_corpus_rows]
    with server.client() as c:
        r = c.post("/documents", json={"documents": [{"id": "e1", "text": "a pending row deleted before any flush"}]})
        assert r.status_code == 200, r.text
        ids.append("e1")
        last = 0
        for i in range(0, len(ids), 100):
            r = c.post("/documents/delete", json={"ids": ids[i : i + 100], "wait": i + 100 >= len(ids)})
            assert r.status_code == 200 and r.json()["missing"] == [], r.text
            last = r.json()["seq"]
        flushed = root / "wal" / "flushed.json"
        assert wait_until(lambda: flushed.is_file() and json.loads(flushed.read_text())["seq"] >= last, 60), server.log
        assert wait_until(lambda: c.get("/info").json()["count"] == 0, 10)
        assert top(c, "a cat") == [] and top(c, "cat", mode="lexical") == [] and top(c, "cat", mode="hybrid") == []
    server.proc.kill()  # no shutdown flush: what is on disk is what the background flush published
    server.proc.wait(30)
    again = launch_server(root, writable="true", refresh_interval_s="0.2")
    again.wait_started()
    with again.client() as c:
        assert c.get("/info").json()["count"] == 0
        assert top(c, "a cat") == [] and top(c, "cat", mode="hybrid") == []
        assert_error(c.get(f"/documents/{ids[0]}"), 404)
        text = "a lighthouse keeper's cat that counts ships"
        assert c.post("/documents", json={"documents": [{"id": "after", "text": text}]}).status_code == 200
        assert [h["id"] for h in top(c, text)] == ["after"]
        assert c.get("/info").json()["count"] == 1
    assert again.stop() == -signal.SIGTERM
    verify = subprocess.run(
        [sys.executable, "-m", "indexer", "verify", "--index", str(root)], cwd=REPO, capture_output=True, text=True
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "replayed" not in again.log  # the kill lost nothing: the empty version held every delete


@pytest.fixture
def tiny_wal_disk(app_index: Path, tmp_path: Path) -> Iterator[Path]:
    """An index root whose ``wal/`` is a 256 KiB tmpfs (needs root and mount(2); skipped otherwise)."""
    root = copy_index(app_index, tmp_path / "root")
    wal = root / "wal"
    wal.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(wal)], capture_output=True, text=True
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the full-disk test (needs root): {mount.stderr.strip()}")
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(wal)], capture_output=True)


def test_a_full_wal_disk_is_a_507_and_loses_nothing_acknowledged(
    tiny_wal_disk: Path, launch_server: Callable[..., ServerProcess]
) -> None:
    """Upserts fill the WAL's disk until one gets 507 insufficient_storage: that request wrote nothing,
    every acknowledged one is kept (also through kill -9 and the WAL replay), and reads keep working."""
    root = tiny_wal_disk
    settings = {"writable": "true", "flush_rows": "1000000", "flush_age_s": "86000", "refresh_interval_s": "0.2"}
    server = launch_server(root, **settings)
    server.wait_started()
    acked: dict[str, str] = {}
    refused: list[str] = []
    with server.client() as c:
        for n in range(20):  # ~1.7 KB of WAL per document: 256 KiB is full within 3 requests of 50
            docs = [{"id": f"fill-{n}-{i}", "text": f"disk filler {n} sentence {i} about tides"} for i in range(50)]
            r = c.post("/documents", json={"documents": docs, "wait": n % 2 == 0})
            if r.status_code != 200:
                assert_error(r, 507, "insufficient_storage")
                message = r.json()["error"]["message"]
                assert "write-ahead log" in message and "not applied" in message, message
                assert r.json()["error"]["detail"]["disk_full"] is True
                refused = [d["id"] for d in docs]
                break
            acked |= {d["id"]: d["text"] for d in docs}
        assert refused and acked, "the WAL disk never filled up"
        assert c.get("/health").status_code == 200
        assert top(c, "disk filler 0 sentence 7 about tides")[0]["id"] == "fill-0-7"  # reads keep working
        assert c.get("/search", params={"q": "cat", "k": 1}).status_code == 200
        assert_error(c.get(f"/documents/{refused[0]}"), 404)  # the refused request: nothing of it
        assert c.get(f"/documents/{next(iter(acked))}").status_code == 200
        assert c.get("/info").json()["writes"]["last_error"].startswith("could not append")
        # the refused append was cut back (no partial record holds the space): a small write still fits
        r = c.post("/documents", json={"documents": [{"id": "after-full", "text": "a small write after the 507"}]})
        assert r.status_code == 200, r.text
        acked["after-full"] = "a small write after the 507"
    server.proc.kill()  # no shutdown flush: the restart must replay the acknowledged writes from the WAL
    server.proc.wait(30)
    again = launch_server(root, **settings)
    again.wait_started()
    with again.client() as c:
        for doc_id, text in acked.items():
            r = c.get(f"/documents/{doc_id}")
            assert r.status_code == 200 and r.json()["text"] == text, doc_id
        for doc_id in refused:
            assert_error(c.get(f"/documents/{doc_id}"), 404)
        assert top(c, next(iter(acked.values())))[0]["id"] == next(iter(acked))
    assert "replayed" in again.log


def test_kill_during_a_flush_loses_nothing_acknowledged(
    app_index: Path, tmp_path: Path, launch_server: Callable[..., ServerProcess]
) -> None:
    """SIGKILL while a flush's ``staging/flush-*`` exists (the flush is writing its segment), restart:
    every acknowledged document is there with its text, the request in flight is all or nothing, the
    killed flush's staging is cleaned up by the next commit, and verify passes."""
    import threading
    import time

    root = copy_index(app_index, tmp_path / "root")
    settings = {"writable": "true", "flush_rows": "150", "flush_age_s": "86000", "refresh_interval_s": "0.2"}
    server = launch_server(root, **settings)
    server.wait_started()
    staging = root / "staging"
    killed = threading.Event()

    def in_flush() -> bool:
        try:
            return any(p.name.startswith("flush-") for p in staging.iterdir())
        except OSError:
            return False

    def killer() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and server.proc.poll() is None:
            if in_flush():
                server.proc.kill()
                killed.set()
                return
            time.sleep(0.0005)

    watcher = threading.Thread(target=killer, daemon=True)
    watcher.start()
    acked: dict[str, str] = {}
    in_flight: list[dict[str, Any]] = []
    with server.client() as c:
        for n in range(200):
            docs = [
                {"id": f"k{n}-{i}", "text": f"kill during flush {n} sentence {i} about lanterns"} for i in range(25)
            ]
            in_flight = docs
            try:
                r = c.post("/documents", json={"documents": docs, "wait": False})
            except httpx.TransportError:
                break
            assert r.status_code == 200, r.text
            acked |= {d["id"]: d["text"] for d in docs}
            in_flight = []
            if killed.is_set():
                break
    watcher.join(60)
    assert killed.is_set(), "no flush was caught in the act"
    server.proc.wait(30)
    assert in_flush()  # the kill did land inside the flush
    again = launch_server(root, **settings)
    again.wait_started()
    with again.client() as c:
        for doc_id, text in acked.items():
            r = c.get(f"/documents/{doc_id}")
            assert r.status_code == 200 and r.json()["text"] == text, doc_id
        if in_flight:
            present = {c.get(f"/documents/{d['id']}").status_code for d in in_flight}
            assert len(present) == 1, "the request in flight at the kill was half applied"
    assert again.stop() == -signal.SIGTERM  # graceful: flushes, and that commit removes the dead staging
    assert not in_flush()
    verify = subprocess.run(
        [sys.executable, "-m", "indexer", "verify", "--index", str(root)], cwd=REPO, capture_output=True, text=True
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
