"""Online writes (issue 22): HTTP write throughput, acknowledgement latency, visibility lag, searches under writes.

A real ``python -m app --writable`` over a copy of a 3,000-gloss sample index (built once into
``--index-dir``), with ``--threads`` intra-op threads, and the same encoder in this process for the
offline rate. Texts: WordNet glosses not in the index (data/sample), each written once.

* ``throughput``: ``POST /documents`` in batches of 100 (``wait: false``), one client and two concurrent
  clients, against the offline indexer's encode rate for the same texts (``Encoder.encode`` with the
  indexer's batch size 64, same backend and threads, measured before, between and after the HTTP runs;
  each ratio uses the two offline runs around it, as the load of a shared machine drifts);
* ``ack``: 1-document writes, ``wait: false`` (durable: WAL fsync) and ``wait: true`` (durable + searchable);
* ``visibility``: ``wait: false`` write, then the exact text searched back to back until it comes first:
  acknowledgement -> first search that returns it (``refresh_interval_s`` as configured, default 1 s);
* ``search``: a lone client's ``POST /search`` (k=10, 20 ms think time) idle and under a steady write load
  (``--write-rate`` documents/s as 5-document ``wait: false`` requests).

Results go to ``bench/results/writes.json``. ``python bench/bench_writes.py [--n 2000] [--threads 2]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _common import REPO, loadavg, machine, markdown_table, save, serve, wordnet_glosses


def ensure_index(path: Path, texts: list[str]) -> Path:
    if (path / "current").exists():
        return path
    src = path.parent / "writes_corpus.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    import json

    src.write_text("".join(json.dumps({"id": f"base-{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    subprocess.run(
        [sys.executable, "-m", "indexer", "build", "--input", str(src), "--output", str(path), "--no-progress"],
        check=True,
        cwd=REPO,
    )
    return path


def start_server(index: Path, threads: int, refresh_s: float) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEMSEARCH_")}
    env.update(
        SEMSEARCH_ACCESS_LOG="false",
        SEMSEARCH_RELOAD_POLL_S="0",
        SEMSEARCH_WRITABLE="true",
        SEMSEARCH_THREADS=str(threads),
        SEMSEARCH_REFRESH_INTERVAL_S=str(refresh_s),
        PYTHONPATH=str(REPO),
    )
    return serve(index, env)


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.array(values) * 1000, q)), 1)


class Texts:
    """Unique glosses, handed out once each (never in the base index)."""

    def __init__(self, pool: list[str]) -> None:
        self.pool = pool
        self.i = 0
        self.lock = threading.Lock()

    def take(self, n: int) -> list[tuple[str, str]]:
        with self.lock:
            start, self.i = self.i, self.i + n
        return [
            (f"w-{j}", self.pool[j % len(self.pool)] + ("" if j < len(self.pool) else f" ({j})"))
            for j in range(start, start + n)
        ]


def offline_rate(index: Path, texts: list[str], threads: int) -> float:
    from app.services import encoder_for
    from app.settings import Settings

    encoder = encoder_for(Settings(index=index, threads=threads))
    encoder.encode(texts[:64], batch_size=64)  # warm-up
    t0 = time.perf_counter()
    encoder.encode(texts, batch_size=64)
    return len(texts) / (time.perf_counter() - t0)


def write_throughput(url: str, texts: Texts, n: int, clients: int) -> float:
    per_client = n // clients
    errors: list[str] = []

    def run() -> None:
        with httpx.Client(base_url=url, timeout=600) as c:
            for _ in range(per_client // 100):
                docs = [{"id": i, "text": t} for i, t in texts.take(100)]
                r = c.post("/documents", json={"documents": docs, "wait": False})
                if r.status_code != 200:
                    errors.append(r.text)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"write errors: {errors[:3]}")
    return (per_client // 100) * 100 * clients / took


def ack_latency(url: str, texts: Texts, n: int, wait: bool) -> list[float]:
    out = []
    with httpx.Client(base_url=url, timeout=600) as c:
        for i, t in texts.take(n):
            t0 = time.perf_counter()
            r = c.post("/documents", json={"documents": [{"id": i, "text": t}], "wait": wait})
            out.append(time.perf_counter() - t0)
            r.raise_for_status()
    return out


def visibility_lag(url: str, texts: Texts, n: int) -> list[float]:
    out = []
    with httpx.Client(base_url=url, timeout=600) as c:
        for i, t in texts.take(n):
            r = c.post("/documents", json={"documents": [{"id": i, "text": t}], "wait": False})
            r.raise_for_status()
            acked = time.perf_counter()
            while True:
                hits = c.post("/search", json={"query": t, "k": 1}).json()["results"]
                if hits and hits[0]["id"] == i:
                    out.append(time.perf_counter() - acked)
                    break
                if time.perf_counter() - acked > 30:
                    raise SystemExit(f"{i} not visible after 30 s")
            time.sleep(0.05)
    return out


def search_latency(url: str, queries: list[str], duration: float) -> list[float]:
    out = []
    with httpx.Client(base_url=url, timeout=600) as c:
        deadline = time.monotonic() + duration
        k = 0
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            r = c.post("/search", json={"query": queries[k % len(queries)], "k": 10})
            out.append(time.perf_counter() - t0)
            r.raise_for_status()
            k += 1
            time.sleep(0.02)
    return out


def steady_writes(url: str, texts: Texts, rate: float, stop: threading.Event, sent: list[int]) -> None:
    every = 5 / rate
    with httpx.Client(base_url=url, timeout=600) as c:
        next_at = time.monotonic()
        while not stop.is_set():
            docs = [{"id": i, "text": t} for i, t in texts.take(5)]
            c.post("/documents", json={"documents": docs, "wait": False}).raise_for_status()
            sent.append(5)
            next_at += every
            time.sleep(max(0.0, next_at - time.monotonic()))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index-dir", type=Path, default=Path("/tmp/semsearch_bench_writes/base"))
    p.add_argument("--n", type=int, default=2000, help="documents per throughput run (batches of 100)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--refresh-s", type=float, default=1.0)
    p.add_argument("--acks", type=int, default=200, help="1-document writes per ack-latency run")
    p.add_argument("--lags", type=int, default=40, help="visibility-lag samples")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per search-latency scenario")
    p.add_argument("--write-rate", type=float, default=50.0, help="documents/s of the steady write load")
    args = p.parse_args()

    glosses = wordnet_glosses()
    base = ensure_index(args.index_dir, glosses[:3000])
    pool = list(dict.fromkeys(glosses[3000:]))
    texts = Texts(pool)
    queries = [" ".join(g.split()[:4]) for g in glosses[:3000:7]]
    info: dict[str, Any] = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}}
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    cpu_flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").is_file() else set()
    info["machine"]["cpu_flags"] = " ".join(f for f in wanted if f in cpu_flags)

    sample = pool[: args.n]
    before = offline_rate(base, sample, args.threads)
    root = args.index_dir.parent / "live"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(base, root, symlinks=True)
    proc, url = start_server(root, args.threads, args.refresh_s)
    try:
        texts.i = 0  # the throughput runs write the same texts the offline rate encoded
        one = write_throughput(url, texts, args.n, 1)
        between = offline_rate(base, sample, args.threads)  # the load of a shared machine drifts: bracket
        texts.i = 0
        two = write_throughput(url, texts, args.n, 2)  # the same ids again: upserts that replace
        texts.i = args.n
        after = offline_rate(base, sample, args.threads)
        offline = (before + between + after) / 3
        ratio_one, ratio_two = one / ((before + between) / 2), two / ((between + after) / 2)
        ack_false = ack_latency(url, texts, args.acks, wait=False)
        ack_true = ack_latency(url, texts, args.acks // 2, wait=True)
        lag = visibility_lag(url, texts, args.lags)
        idle = search_latency(url, queries, args.duration)
        stop, sent = threading.Event(), []
        load_thread = threading.Thread(target=steady_writes, args=(url, texts, args.write_rate, stop, sent))
        t0 = time.perf_counter()
        load_thread.start()
        busy = search_latency(url, queries, args.duration)
        stop.set()
        load_thread.join()
        achieved = sum(sent) / (time.perf_counter() - t0)
        writes = httpx.get(url + "/info").json()["writes"]
    finally:
        proc.terminate()
        proc.wait(120)
    info["loadavg_at_end"] = loadavg()
    result = {
        **info,
        "throughput": {
            "offline_encode_docs_s": {
                "before": round(before, 1),
                "between": round(between, 1),
                "after": round(after, 1),
                "mean": round(offline, 1),
            },
            "http_docs_s_1_client": round(one, 1),
            "http_docs_s_2_clients": round(two, 1),
            # each HTTP run against the mean of the offline runs just before and after it
            "ratio_1_client": round(ratio_one, 3),
            "ratio_2_clients": round(ratio_two, 3),
        },
        "ack_ms": {
            "wait_false": {"p50": pct(ack_false, 50), "p99": pct(ack_false, 99), "n": len(ack_false)},
            "wait_true": {"p50": pct(ack_true, 50), "p99": pct(ack_true, 99), "n": len(ack_true)},
        },
        "visibility_lag_ms": {"p50": pct(lag, 50), "p99": pct(lag, 99), "max": pct(lag, 100), "n": len(lag)},
        "search_ms": {
            "idle": {"p50": pct(idle, 50), "p99": pct(idle, 99), "n": len(idle)},
            "under_writes": {"p50": pct(busy, 50), "p99": pct(busy, 99), "n": len(busy), "docs_s": round(achieved, 1)},
        },
        "server_writes_info": writes,
    }
    t = result["throughput"]
    rows = [
        [
            "offline encode (batch 64)",
            f"{t['offline_encode_docs_s']['mean']} docs/s",
            "before/between/after",
            f"{before:.1f} / {between:.1f} / {after:.1f}",
        ],
        ["HTTP writes, 100/request, 1 client", f"{one:.1f} docs/s", "ratio", f"{ratio_one:.0%}"],
        ["HTTP writes, 100/request, 2 clients", f"{two:.1f} docs/s", "ratio", f"{ratio_two:.0%}"],
        ["ack, 1 doc, wait false", f"p50 {pct(ack_false, 50)} ms", "p99", f"{pct(ack_false, 99)} ms"],
        ["ack, 1 doc, wait true", f"p50 {pct(ack_true, 50)} ms", "p99", f"{pct(ack_true, 99)} ms"],
        [f"visibility lag (refresh {args.refresh_s:.1f} s)", f"p50 {pct(lag, 50)} ms", "p99", f"{pct(lag, 99)} ms"],
        ["search, idle", f"p50 {pct(idle, 50)} ms", "p99", f"{pct(idle, 99)} ms"],
        [f"search, {achieved:.0f} docs/s writes", f"p50 {pct(busy, 50)} ms", "p99", f"{pct(busy, 99)} ms"],
    ]
    print(markdown_table(["measure", "value", "", ""], rows))
    m = info["machine"]
    print(f"machine: {m['cpu']} [{m['cpu_flags']}], load {m['loadavg_at_start']} -> {info['loadavg_at_end']}")
    print(f"\nresults: {save('writes', result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
