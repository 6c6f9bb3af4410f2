"""Soak: closed-loop clients against a real server while the indexer publishes a new version every
minute. Zero failed requests, bounded RSS growth, p99 latency over time (issue 13).

    python bench/soak.py --rows 100000 --duration 600 --concurrency 32 --publish-every 60   # the documented run
    python bench/soak.py --rows 2000 --duration 120 --concurrency 8 --publish-every 30      # a smoke run

The index is built from the bundled WordNet glosses (repeated with a suffix beyond 11,999 rows) with the
real indexer; every ``--publish-every`` seconds ``python -m indexer add`` (the real CLI, a separate
process) upserts a batch of rows as a new version, which the server hot-reloads (``--reload-poll-s 1``).
Each client sends ``POST /search`` with real glosses as queries (``--corpus``: rows of your own, e.g. the
corpus an ``--index`` was built from). Per 10-second window the table shows requests, failures (any
non-200 or transport error), p50/p99 and the server's RSS split (``/proc/PID/status``) into anonymous
memory (heap: the leak criterion) and file-backed pages (the memory-mapped index files touched so far:
bounded by their size, shared with the page cache, reclaimable). Results: ``bench/results/<name>.json``
and ``.png`` (p99 and RSS over time, publications marked).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _common import REPO, markdown_table, save, wordnet_glosses
from _plot import pyplot, save_figure
from http_bench import Server

WINDOW_S = 10.0


def corpus_rows(n: int) -> list[dict[str, Any]]:
    glosses = wordnet_glosses()
    rows = []
    for i in range(n):
        text = glosses[i % len(glosses)]
        if i >= len(glosses):
            text = f"{text} (variant {i // len(glosses)})"
        rows.append({"id": f"r{i}", "text": text, "batch": 0})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def indexer(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "indexer", *args], cwd=REPO, capture_output=True, text=True)


class Publisher(threading.Thread):
    """Every ``every`` seconds: upsert ``batch`` rows (new text for existing ids) with ``indexer add``."""

    def __init__(self, root: Path, work: Path, rows: list[dict[str, Any]], every: float, batch: int) -> None:
        super().__init__(daemon=True)
        self.root, self.work, self.rows, self.every, self.batch = root, work, rows, every, batch
        self.stop_event = threading.Event()
        self.events: list[dict[str, Any]] = []  # {"t", "seconds", "ok", "message"}
        self.t0 = time.monotonic()

    def run(self) -> None:
        n = 0
        # on a fixed schedule (t = every, 2 * every, ...), however long a publication takes
        while not self.stop_event.wait(max(0.0, (n + 1) * self.every - (time.monotonic() - self.t0))):
            n += 1
            rnd = random.Random(n)
            picked = rnd.sample(self.rows, min(self.batch, len(self.rows)))
            upserts = [{**r, "text": f"{r['text']} [revision {n}]", "batch": n} for r in picked]
            path = write_jsonl(self.work / f"add{n}.jsonl", upserts)
            started = time.monotonic()
            res = indexer("add", "--input", str(path), "--index", str(self.root), "--keep", "3", "--no-progress")
            self.events.append(
                {
                    "t": round(started - self.t0, 1),
                    "seconds": round(time.monotonic() - started, 1),
                    "ok": res.returncode == 0,
                    "message": (res.stdout or res.stderr).strip().splitlines()[-1:],
                }
            )
            print(
                f"  publish {n}: {'ok' if res.returncode == 0 else 'FAILED'} {self.events[-1]['message']}", flush=True
            )


async def load(url: str, queries: list[str], concurrency: int, duration: float, t0: float) -> list[tuple]:
    """(t, latency_s, status, version) per request; status 0 = transport error."""
    records: list[tuple] = []
    deadline = t0 + duration
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def user(i: int) -> None:
            rnd = random.Random(i)
            while time.monotonic() < deadline:
                q = rnd.choice(queries)
                started = time.monotonic()
                try:
                    r = await client.post("/search", json={"query": q, "k": 10})
                    version = r.json().get("index_version") if r.status_code == 200 else None
                    records.append((started - t0, time.monotonic() - started, r.status_code, version))
                except httpx.HTTPError as e:
                    records.append((started - t0, time.monotonic() - started, 0, type(e).__name__))

        await asyncio.gather(*(user(i) for i in range(concurrency)))
    return records


def sample_rss(pid: int, stop: threading.Event, out: list[tuple[float, int, int, int]], t0: float) -> None:
    """(t, RSS, anonymous, file-backed) bytes every 2 s. File-backed pages are the memory-mapped index
    files touched so far (bounded by their size, shared and reclaimable); a leak shows as anonymous growth."""
    status = Path(f"/proc/{pid}/status")
    while not stop.is_set():
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:
            return
        kb = {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "RssAnon", "RssFile")}
        out.append((time.monotonic() - t0, kb["VmRSS"], kb["RssAnon"], kb["RssFile"]))
        stop.wait(2.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--duration", type=float, default=600)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--publish-every", type=float, default=60)
    ap.add_argument("--publish-rows", type=int, default=500, help="Rows upserted per publication.")
    ap.add_argument("--backend", default="onnx-int8")
    ap.add_argument("--index-type", default="auto")
    ap.add_argument("--warmup", type=float, default=30, help="RSS growth is measured from this second on.")
    ap.add_argument("--index", type=Path, help="Use (and publish into) this index root instead of building one.")
    ap.add_argument(
        "--corpus",
        type=Path,
        help="JSON lines with id and text to build from and upsert (default: WordNet glosses repeated to --rows); "
        "pass the corpus an --index was built from so publications upsert existing ids",
    )
    ap.add_argument("--name", default="soak")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="semsearch-soak-"))
    if args.corpus:
        with args.corpus.open(encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh][: args.rows]
    else:
        rows = corpus_rows(args.rows)
    corpus = write_jsonl(work / "corpus.jsonl", rows)
    root = args.index or work / "index"
    started = time.monotonic()
    if args.index is None:
        print(f"building {args.rows} rows ({args.backend}, {args.index_type}) in {root} ...", flush=True)
        res = indexer("build", "--input", str(corpus), "--output", str(root), "--backend", args.backend,
                      "--index-type", args.index_type, "--no-progress")  # fmt: skip
        if res.returncode != 0:
            raise SystemExit(res.stderr)
        print(f"  {res.stdout.strip()}", flush=True)
    build_s = time.monotonic() - started

    server = Server(root, {"SEMSEARCH_RELOAD_POLL_S": "1"})
    try:
        queries = [r["text"] for r in random.Random(0).sample(rows, min(2000, len(rows)))]
        with httpx.Client(base_url=server.url, timeout=60) as c:  # warm-up
            for q in queries[:20]:
                c.post("/search", json={"query": q, "k": 10}).raise_for_status()
        t0 = time.monotonic()
        rss: list[tuple[float, int, int, int]] = []
        stop = threading.Event()
        sampler = threading.Thread(target=sample_rss, args=(server.proc.pid, stop, rss, t0), daemon=True)
        sampler.start()
        publisher = Publisher(root, work, rows, args.publish_every, args.publish_rows)
        publisher.t0 = t0
        publisher.start()
        records = asyncio.run(load(server.url, queries, args.concurrency, args.duration, t0))
        publisher.stop_event.set()
        publisher.join(timeout=600)
        stop.set()
        sampler.join()
    finally:
        server.stop()

    windows = []
    for w in range(int(np.ceil(args.duration / WINDOW_S))):
        lo, hi = w * WINDOW_S, (w + 1) * WINDOW_S
        lat = np.array([r[1] for r in records if lo <= r[0] < hi and r[2] == 200]) * 1000
        failed = sum(1 for r in records if lo <= r[0] < hi and r[2] != 200)
        in_window = [r for r in rss if lo <= r[0] < hi]
        windows.append(
            {
                "t": hi,
                "requests": int(len(lat) + failed),
                "failed": failed,
                "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
                "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
                "rss_mb": round(max(r[1] for r in in_window) / 2**20, 1) if in_window else None,
                "anon_mb": round(max(r[2] for r in in_window) / 2**20, 1) if in_window else None,
                "file_mb": round(max(r[3] for r in in_window) / 2**20, 1) if in_window else None,
                "versions": sorted({r[3] for r in records if lo <= r[0] < hi and r[2] == 200}),
            }
        )
    total = len(records)
    failed = sum(1 for r in records if r[2] != 200)
    after_warmup = [r for r in rss if r[0] >= args.warmup] or rss
    start, end = (after_warmup[0], rss[-1]) if rss else ((0.0, 0, 0, 0),) * 2

    def growth(i: int) -> float:
        return round((end[i] - start[i]) / start[i] * 100, 1) if start[i] else 0.0

    versions = sorted({r[3] for r in records if r[2] == 200})
    print()
    print(markdown_table(
        ["t (s)", "requests", "failed", "p50 ms", "p99 ms", "RSS MB", "anon MB", "file MB", "versions"],
        [[w["t"], w["requests"], w["failed"], w["p50_ms"] or 0.0, w["p99_ms"] or 0.0, w["rss_mb"] or 0.0,
          w["anon_mb"] or 0.0, w["file_mb"] or 0.0, " ".join(w["versions"])] for w in windows],
    ))  # fmt: skip
    ok_publications = sum(1 for e in publisher.events if e["ok"])
    summary = {
        "requests": total,
        "failed": failed,
        "statuses": sorted({str(r[2]) for r in records}),
        "queries_per_s": round(total / args.duration, 1),
        "rss_first_mb": round(rss[0][1] / 2**20, 1) if rss else 0.0,
        "rss_start_mb": round(start[1] / 2**20, 1),  # after the warm-up
        "rss_end_mb": round(end[1] / 2**20, 1),
        "rss_peak_mb": round(max((r[1] for r in rss), default=0) / 2**20, 1),
        "rss_growth_pct": growth(1),
        "anon_start_mb": round(start[2] / 2**20, 1),
        "anon_end_mb": round(end[2] / 2**20, 1),
        "anon_growth_pct": growth(2),  # the leak criterion (< 10 %)
        "file_start_mb": round(start[3] / 2**20, 1),
        "file_end_mb": round(end[3] / 2**20, 1),
        "index_files_mb": round(sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) / 2**20, 1),
        "publications": len(publisher.events),
        "publications_ok": ok_publications,
        "versions_served": versions,
        "build_s": round(build_s, 1),
    }
    print()
    print(json.dumps(summary, indent=2))
    result = {"args": vars(args), "summary": summary, "windows": windows, "publications": publisher.events}
    path = save(args.name, result)
    plot(windows, publisher.events, rss, path.with_suffix(".png"), args)
    print(f"\nsaved {path} and {path.with_suffix('.png')}")
    return 0 if failed == 0 and ok_publications == len(publisher.events) else 1


Samples = list[tuple[float, int, int, int]]


def plot(windows: list[dict[str, Any]], events: list[dict[str, Any]], rss: Samples, path: Path,
         args: argparse.Namespace) -> None:  # fmt: skip
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ts = [w["t"] for w in windows if w["p99_ms"] is not None]
    ax.plot(
        ts, [w["p99_ms"] for w in windows if w["p99_ms"] is not None], marker="o", label="p99 latency (10 s window)"
    )
    ax.plot(ts, [w["p50_ms"] for w in windows if w["p50_ms"] is not None], marker=".", label="p50")
    for e in events:
        ax.axvline(e["t"], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("seconds (dotted: a new version published)")
    ax.set_ylabel("ms")
    ax2 = ax.twinx()
    ax2.plot([r[0] for r in rss], [r[1] / 2**20 for r in rss], color="tab:red", alpha=0.6, label="server RSS")
    ax2.plot([r[0] for r in rss], [r[2] / 2**20 for r in rss], color="tab:purple", alpha=0.6, label="anonymous")
    ax2.set_ylabel("RSS MB")
    ax.set_title(f"soak: {args.rows} rows, concurrency {args.concurrency}, publish every {args.publish_every:.0f} s")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper left", fontsize=8)
    save_figure(fig, path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
