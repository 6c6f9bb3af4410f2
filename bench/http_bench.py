"""HTTP benchmark of the search service: micro-batched server vs an unbatched baseline, same run.

Starts the real server (``python -m app``, a subprocess) twice on the sample index: once with the
default micro-batching and once with ``SEMSEARCH_MAX_BATCH=1`` (every request encoded alone). Each is
driven by closed-loop asyncio httpx clients at several concurrency levels with real ~30-token
queries (WordNet glosses of 26-34 tokens), for a fixed duration per level after a warm-up. Prints a
table (queries/s, p50, p99, mean encode batch size from /metrics), and saves JSON + a PNG plot with
the machine description under ``bench/results/``.

    python bench/http_bench.py --index data/index/sample          # make sample-index builds it
    python bench/http_bench.py --index /tmp/idx --duration 5 --concurrency 1 8 32
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c
from _plot import plot_by_concurrency

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample" / "wordnet_glosses.jsonl.gz"
RESULTS = REPO / "bench" / "results"
SERVING_RE = re.compile(r"semsearch serving .* at (http://\S+?)/ ")
SERVERS: dict[str, dict[str, str]] = {
    "micro-batched": {},  # the defaults: no batch window, up to 32 texts per encode, ONNX threads sleep
    "unbatched": {"SEMSEARCH_MAX_BATCH": "1"},  # baseline: each request encoded alone
    "window2ms": {"SEMSEARCH_BATCH_WINDOW_MS": "2"},  # wait up to 2 ms for company
    "spinning": {"SEMSEARCH_ONNX_SPINNING": "true"},  # ONNX intra-op threads spin-wait
    "threads1": {"SEMSEARCH_THREADS": "1"},  # one intra-op thread
    "omp-spin": {"OMP_WAIT_POLICY": "ACTIVE"},  # before #25: FAISS's OpenMP threads spin-wait after each search
}


@dataclass
class Level:
    server: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    qps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    mean_batch: float
    server_cpu_ms_per_query: float = 0.0  # user + system CPU of the server's process tree / requests served


def load_queries(n: int, lo: int = 26, hi: int = 34, seed: int = 0) -> list[str]:
    """Real sentences of lo..hi tokens (the model's own tokenizer, special tokens included)."""
    from transformers import AutoTokenizer

    from semsearch.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model(None).path))
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line in fh]
    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    picked = [t for t, n_tok in zip(texts, lengths, strict=True) if lo <= n_tok <= hi]
    random.Random(seed).shuffle(picked)
    return picked[:n]


class ServerProcess:
    """A server subprocess whose log line matching ``url_re`` gives its URL; stopped with SIGTERM."""

    def __init__(
        self, cmd: list[str], env: dict[str, str], url_re: re.Pattern[str], name: str, cwd: Path = REPO
    ) -> None:
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.url = ""
        self.lines: list[str] = []
        self._url_re = url_re
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(300) or not self.url:
            self.stop()
            raise SystemExit(f"{name} did not start:\n" + "".join(self.lines))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if m := self._url_re.search(line):
                self.url = m.group(1)
                self._ready.set()
        self._ready.set()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Server(ServerProcess):
    """``python -m app`` on a free port, SEMSEARCH_* settings from ``env`` only."""

    def __init__(self, index: Path, env: dict[str, str]) -> None:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SEMSEARCH_")}
        full_env.update({"SEMSEARCH_ACCESS_LOG": "false", "SEMSEARCH_RELOAD_POLL_S": "0", **env})
        cmd = [sys.executable, "-m", "app", "--index", str(index), "--port", "0"]
        super().__init__(cmd, full_env, SERVING_RE, "server")


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (from /proc; Linux only)."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        todo += children.get(p, [])
    return total


def batch_totals(client: httpx.Client) -> tuple[float, float]:
    """(encode calls, texts encoded) so far, from /metrics."""
    text = client.get("/metrics").text
    count = re.search(r"^semsearch_encode_batch_size_count (\S+)$", text, re.MULTILINE)
    total = re.search(r"^semsearch_encode_batch_size_sum (\S+)$", text, re.MULTILINE)
    return (float(count.group(1)) if count else 0.0, float(total.group(1)) if total else 0.0)


Request = Callable[[httpx.AsyncClient, str, int], Awaitable[httpx.Response]]


async def search_request(client: httpx.AsyncClient, query: str, k: int) -> httpx.Response:
    """One semsearch ``POST /search``."""
    return await client.post("/search", json={"query": query, "k": k})


async def drive(
    url: str, queries: list[str], concurrency: int, duration: float, k: int, request: Request = search_request
) -> tuple[list[float], int]:
    """Closed loop: each of ``concurrency`` clients sends its next query when the last one returns.

    A request counts as served when it answers 200 with a non-empty JSON body."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def user(i: int) -> None:
            nonlocal errors
            j = i
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                response = await request(client, queries[j % len(queries)], k)
                if response.status_code == 200 and response.json():
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1
                j += concurrency

        await asyncio.gather(*(user(i) for i in range(concurrency)))
    return latencies, errors


def run_server(name: str, index: Path, queries: list[str], args: argparse.Namespace) -> list[Level]:
    server = Server(index, SERVERS[name])
    levels = []
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            asyncio.run(drive(server.url, queries, max(args.concurrency), args.warmup, args.k))  # warm-up
            for concurrency in args.concurrency:
                calls0, texts0 = batch_totals(client)
                cpu0 = tree_cpu_seconds(server.proc.pid)
                started = time.perf_counter()
                latencies, errors = asyncio.run(drive(server.url, queries, concurrency, args.duration, args.k))
                seconds = time.perf_counter() - started
                cpu1 = tree_cpu_seconds(server.proc.pid)
                calls1, texts1 = batch_totals(client)
                ms = np.asarray(latencies) * 1000
                level = Level(
                    server=name,
                    concurrency=concurrency,
                    requests=len(latencies),
                    errors=errors,
                    seconds=round(seconds, 2),
                    qps=round(len(latencies) / seconds, 1),
                    p50_ms=round(float(np.percentile(ms, 50)), 1),
                    p99_ms=round(float(np.percentile(ms, 99)), 1),
                    mean_ms=round(float(ms.mean()), 1),
                    mean_batch=round((texts1 - texts0) / max(1.0, calls1 - calls0), 2),
                    server_cpu_ms_per_query=round((cpu1 - cpu0) * 1000 / max(1, len(latencies)), 2),
                )
                levels.append(level)
                print(
                    f"  {name:>13}  c={concurrency:<3} {level.qps:7.1f} q/s  p50 {level.p50_ms:7.1f} ms  "
                    f"p99 {level.p99_ms:7.1f} ms  batch {level.mean_batch:5.2f}  "
                    f"server CPU {level.server_cpu_ms_per_query:6.2f} ms/query  errors {errors}",
                    flush=True,
                )
    finally:
        server.stop()
    return levels


def table(levels: list[Level]) -> str:
    lines = [
        "| server | concurrency | requests | queries/s | p50 ms | p99 ms | server CPU ms/query | mean encode batch "
        "| errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for lv in levels:
        lines.append(
            f"| {lv.server} | {lv.concurrency} | {lv.requests} | {lv.qps:.1f} | {lv.p50_ms:.1f} | "
            f"{lv.p99_ms:.1f} | {lv.server_cpu_ms_per_query:.2f} | {lv.mean_batch:.2f} | {lv.errors} |"
        )
    return "\n".join(lines)


def plot(levels: list[Level], path: Path, title: str) -> None:
    series: dict[str, list[tuple[int, float, float, float]]] = {}
    for lv in levels:
        series.setdefault(lv.server, []).append((lv.concurrency, lv.qps, lv.p50_ms, lv.p99_ms))
    plot_by_concurrency(series, path, title)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=REPO / "data" / "index" / "sample", help="index root")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per concurrency level")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up per server")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--servers", nargs="+", default=["micro-batched", "unbatched"], choices=list(SERVERS))
    parser.add_argument("--name", default="http_bench", help="results file name (without .json/.png)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not (args.index / "current").exists() and not (args.index / "manifest.json").exists():
        parser.error(f"{args.index} is not an index; build the sample one with `make sample-index`")
    queries = load_queries(args.queries)
    info = c.machine()
    print(
        f"{len(queries)} queries of 26-34 tokens; {info['cpu']}, {info['usable_cores']} usable cores, "
        f"load average {info['loadavg_at_start']}",
        flush=True,
    )
    levels: list[Level] = []
    for name in args.servers:
        levels += run_server(name, args.index, queries, args)
    info["loadavg_at_end"] = list(os.getloadavg())
    command = "python bench/http_bench.py " + " ".join(sys.argv[1:])
    print()
    print(table(levels))
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "command": command,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": info,
        "index": str(args.index),
        "queries": {"count": len(queries), "tokens": "26-34", "source": "WordNet glosses (data/sample)"},
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "k": args.k,
            "servers": {n: SERVERS[n] for n in args.servers},
        },
        "levels": [asdict(lv) for lv in levels],
        "table": table(levels),
    }
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    title = f"semsearch /search, k={args.k}, {info['cpu']} ({info['usable_cores']} cores)"
    plot(levels, args.out / f"{args.name}.png", title)
    print(f"\nsaved {args.out / (args.name + '.json')} and {args.out / (args.name + '.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
