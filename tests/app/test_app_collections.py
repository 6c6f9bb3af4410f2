"""Many collections on one server (``--data``), through real server processes: each collection answers its own
searches, one encoder per (model, pooling, backend) (measured RSS), lazy loading, LRU unloading, a corrupt
collection failing alone, hostile names, and a 50-collection start in bounded time and memory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from app_fixtures import ServerProcess, write_jsonl

from indexer.pipeline import BuildOptions, run_build

pytest_plugins = ["app_fixtures"]

ANIMALS = [
    "a large wild cat with a tawny coat",
    "a domesticated dog kept as a pet",
    "a bird that cannot fly and lives in antarctica",
    "a large grey mammal with a trunk",
    "a small rodent with a long tail",
]
TOOLS = [
    "a hand tool for driving nails",
    "a tool with a blade for cutting wood",
    "a device for tightening bolts",
    "an instrument for measuring length",
    "a power tool that drills holes",
]


def _build(root: Path, rows: list[str], pooling: str) -> Path:
    corpus = write_jsonl(root.parent / f"{root.name}.jsonl", [{"id": f"r{i}", "text": t} for i, t in enumerate(rows)])
    run_build(BuildOptions(inputs=[corpus], output=root, pooling=pooling, progress=False))  # type: ignore[arg-type]
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, app_clean_env: None) -> Path:
    built = tmp_path_factory.mktemp("built")
    animals = _build(built / "animals", ANIMALS, "mean")
    tools = _build(built / "tools", TOOLS, "cls")
    data = tmp_path_factory.mktemp("data")
    shutil.copytree(animals, data / "animals", symlinks=True)
    shutil.copytree(animals, data / "animals2", symlinks=True)  # same model and pooling: shares the encoder
    shutil.copytree(tools, data / "tools", symlinks=True)
    broken = shutil.copytree(animals, data / "broken", symlinks=True)
    manifest = next((broken / "versions").glob("*/manifest.json"))
    fields = json.loads(manifest.read_text())
    fields["count"] += 1  # a hand edit: its checksum no longer matches, the load is refused
    manifest.write_text(json.dumps(fields))
    (data / "notes").mkdir()  # not an index: skipped with a log line
    return data


def _launch(data: Path, **settings: Any) -> ServerProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEMSEARCH_")}
    env.update({f"SEMSEARCH_{k.upper()}": str(v) for k, v in settings.items()})
    env.setdefault("SEMSEARCH_RELOAD_POLL_S", "0")
    env.setdefault("SEMSEARCH_ACCESS_LOG", "false")
    server = ServerProcess(["--data", str(data), "--port", "0"], env)
    server.wait_started()
    return server


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def server(data_dir: Path) -> Iterator[ServerProcess]:
    proc = _launch(data_dir, threads=1)
    yield proc
    proc.stop()


def _loaded(client: httpx.Client) -> dict[str, bool]:
    return {c["name"]: c["loaded"] for c in client.get("/collections").json()["collections"]}


def _top(client: httpx.Client, name: str, query: str) -> str:
    r = client.post(f"/collections/{name}/search", json={"query": query, "k": 1})
    assert r.status_code == 200, r.text
    text: str = r.json()["results"][0]["text"]
    return text


def test_lazy_loading_own_answers_and_one_encoder_per_model(server: ServerProcess) -> None:
    with server.client() as c:
        listed = c.get("/collections").json()["collections"]
        assert [x["name"] for x in listed] == ["animals", "animals2", "broken", "tools"]  # `notes` skipped
        assert not any(x["loaded"] for x in listed)
        tools = next(x for x in listed if x["name"] == "tools")
        assert (tools["pooling"], tools["count"], tools["index_type"]) == ("cls", 5, "flat")
        assert "not an index directory" in server.log
        assert c.get("/info").json()["collections"]["encoders"] == []  # no model loaded yet
        # unprefixed routes: no default among several collections
        r = c.post("/search", json={"query": "cat"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "no_default_collection"
        assert "SEMSEARCH_DEFAULT_COLLECTION" in r.json()["error"]["message"]

        rss0 = rss_mib(server.proc.pid)
        assert _top(c, "animals", "a big cat") == ANIMALS[0]
        rss1 = rss_mib(server.proc.pid)
        assert _loaded(c)["animals"] and not _loaded(c)["animals2"]
        assert _top(c, "animals2", "an elephant") == ANIMALS[3]
        rss2 = rss_mib(server.proc.pid)
        assert _top(c, "tools", TOOLS[0]) == TOOLS[0]  # CLS pooling of MiniLM is weak: its own texts
        rss3 = rss_mib(server.proc.pid)
        # GET forms, batch, embed by collection (the collection's own model and pooling)
        r = c.get("/collections/tools/search", params={"q": TOOLS[1], "k": 1})
        assert r.status_code == 200 and r.json()["results"][0]["text"] == TOOLS[1]
        assert _top(c, "animals", TOOLS[1]) in ANIMALS  # each collection searches its own rows
        r = c.post("/collections/animals/search/batch", json={"queries": ["mouse", "penguin"], "k": 1})
        assert [row[0]["text"] for row in r.json()["results"]] == [ANIMALS[4], ANIMALS[2]]
        cls_vec = c.post("/collections/tools/embed", json={"texts": ["x"]}).json()
        mean_vec = c.post("/collections/animals/embed", json={"texts": ["x"]}).json()
        assert (cls_vec["pooling"], mean_vec["pooling"]) == ("cls", "mean")
        assert cls_vec["embeddings"] != mean_vec["embeddings"]
        r = c.get("/collections/tools/documents/r3")
        assert r.status_code == 200 and r.json()["text"] == TOOLS[3]

        encoders = c.get("/info").json()["collections"]["encoders"]
        by_pooling = {e["pooling"]: e["collections"] for e in encoders}
        assert by_pooling == {"mean": ["animals", "animals2"], "cls": ["tools"]}
        metrics = c.get("/metrics").text
        assert 'semsearch_collection_requests_total{collection="tools"}' in metrics
        assert 'semsearch_collection_loaded{collection="animals2"} 1.0' in metrics
    first_encoder, shared, second_encoder = rss1 - rss0, rss2 - rss1, rss3 - rss2
    print(
        f"RSS MiB: start {rss0:.0f}, +mean encoder {first_encoder:.0f}, +2nd mean collection {shared:.0f}, "
        f"+cls encoder {second_encoder:.0f}"
    )
    # a second collection of the same model costs its index, not an encoder; another pooling costs one
    assert shared < 0.25 * second_encoder, (rss0, rss1, rss2, rss3)


def test_corrupt_collection_fails_alone(server: ServerProcess) -> None:
    with server.client() as c:
        for _ in range(2):  # refused again at once (not reloaded per request)
            r = c.post("/collections/broken/search", json={"query": "cat"})
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "collection_unavailable"
            assert "broken" in r.json()["error"]["message"]
        assert _top(c, "animals", "a big cat") == ANIMALS[0]
        assert _top(c, "tools", TOOLS[0]) == TOOLS[0]  # CLS pooling of MiniLM is weak: its own texts
        broken = c.get("/collections/broken").json()
        assert broken["loaded"] is False and "error" in broken


@pytest.mark.parametrize(
    ("path", "statuses"),
    [
        ("/collections/%2e%2e/search", {404, 422}),
        ("/collections/..%2Fanimals/search", {404, 422}),
        ("/collections/a%2Fb/search", {404, 422}),
        ("/collections/" + "a" * 200 + "/search", {422}),
        ("/collections/nope/search", {404}),
        ("/collections/.hidden/search", {422}),
        ("/collections/notes/search", {404}),
    ],
)
def test_hostile_collection_names(server: ServerProcess, path: str, statuses: set[int]) -> None:
    with server.client() as c:
        r = c.post(path, json={"query": "cat"})
    assert r.status_code in statuses, (path, r.status_code, r.text)


def test_lru_unloads_the_least_recently_used_idle_collection(data_dir: Path) -> None:
    proc = _launch(data_dir, threads=1, max_loaded_collections=1, default_collection="animals")
    try:
        with proc.client() as c:
            r = c.post("/search", json={"query": "a big cat", "k": 1})  # the default collection
            assert r.status_code == 200 and r.json()["results"][0]["text"] == ANIMALS[0]
            assert _loaded(c) == {"animals": True, "animals2": False, "broken": False, "tools": False}
            assert _top(c, "animals2", "a pet dog") == ANIMALS[1]
            assert _loaded(c) == {"animals": False, "animals2": True, "broken": False, "tools": False}
            assert _top(c, "animals", "a mouse") == ANIMALS[4]  # loads again
            info = c.get("/info").json()["collections"]
            assert info["loaded"] == ["animals"] and info["unloads"] == 2 and info["max_loaded"] == 1
    finally:
        status = proc.stop()
    assert status == -signal.SIGTERM, proc.log[-3000:]  # uvicorn re-raises SIGTERM after a graceful stop


def test_fifty_collections_start_lazily_in_bounded_time_and_memory(
    data_dir: Path, tmp_path: Path, record_property: Callable[[str, Any], None]
) -> None:
    many = tmp_path / "many"
    many.mkdir()
    for i in range(50):
        shutil.copytree(data_dir / "animals", many / f"c{i:03d}", symlinks=True)
    started = time.perf_counter()
    proc = _launch(many, threads=1)
    took = time.perf_counter() - started
    try:
        rss = rss_mib(proc.proc.pid)
        print(f"50 collections: serving after {took:.1f} s, RSS {rss:.0f} MiB")
        assert took < 60 and rss < 500, (took, rss)
        with proc.client() as c:
            assert len(c.get("/collections").json()["collections"]) == 50
            assert _top(c, "c042", "a big cat") == ANIMALS[0]
            assert sum(_loaded(c).values()) == 1
    finally:
        assert proc.stop() == -signal.SIGTERM


def test_data_refuses_writable(data_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEMSEARCH_")}
    proc = ServerProcess(["--data", str(data_dir), "--writable", "--port", "0"], env)
    assert proc.proc.wait(60) == 2
    proc.stop()
    assert "--writable" in proc.log and "--index DIR --writable" in proc.log
