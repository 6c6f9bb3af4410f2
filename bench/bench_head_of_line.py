"""How long does a lone short query wait behind big requests? (issue 20, item 7)

A real ``python -m app`` over an index (``--index``, or a 3,000-gloss sample index built once into
``--index-dir``). One client sends a 3-word ``POST /search`` back to back; in each scenario a second
client sends, continuously, the biggest request the documented limits allow:

* ``idle``: nothing else;
* ``embed``: ``/embed`` with 64 texts of 4,000 characters (``max_embed_texts`` x ``max_text_chars``);
* ``batch``: ``/search/batch`` with 64 queries of 1,000 characters (``max_batch_queries`` x ``max_query_chars``);
* ``rerank``: ``/rerank`` with 200 texts of 4,000 characters (``max_rerank_texts``; needs ``--reranker``).

Printed: the short query's p50/p99/max per scenario, and how many big requests completed. Run it twice
to compare: as shipped (``--max-batch-tokens 256``) and without chunking (``--max-batch-tokens
1000000``: a job is one batch, as before the fix). Results go to ``bench/results/head_of_line*.json``.

    python bench/bench_head_of_line.py --duration 20 [--reranker models/reranker] [--max-batch-tokens N]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from _common import REPO, loadavg, machine, markdown_table, save, serve

SAMPLE = REPO / "data" / "sample" / "wordnet_glosses.jsonl.gz"


def glosses() -> list[str]:
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in fh]


def long_texts(n: int, chars: int) -> list[str]:
    rows = glosses()
    out, i = [], 0
    for _ in range(n):
        text = ""
        while len(text) < chars:
            text += rows[i % len(rows)] + " "
            i += 1
        out.append(text[:chars])
    return out


def ensure_index(path: Path) -> Path:
    if (path / "current").exists():
        return path
    rows = [{"id": i, "text": t} for i, t in enumerate(glosses()[:3000])]
    src = path.parent / "head_of_line_corpus.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    src.write_text("".join(json.dumps({"id": r["id"], "text": r["text"]}) + "\n" for r in rows))
    subprocess.run(
        [sys.executable, "-m", "indexer", "build", "--input", str(src), "--output", str(path), "--no-progress"],
        check=True,
        cwd=REPO,
    )
    return path


def start_server(args: argparse.Namespace, index: Path) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEMSEARCH_")}
    env.update(
        {
            "SEMSEARCH_ACCESS_LOG": "false",
            "SEMSEARCH_RELOAD_POLL_S": "0",
            "SEMSEARCH_MAX_BATCH_TOKENS": str(args.max_batch_tokens),
            "PYTHONPATH": str(REPO),
        }
    )
    if args.reranker:
        env["SEMSEARCH_RERANKER"] = args.reranker
        env["SEMSEARCH_RERANKER_BACKEND"] = args.reranker_backend
    return serve(index, env)


def run_scenario(url: str, name: str, big: tuple[str, dict] | None, duration: float) -> dict:
    stop = threading.Event()
    big_done: list[float] = []

    def bulk() -> None:
        assert big is not None
        with httpx.Client(base_url=url, timeout=600) as client:
            while not stop.is_set():
                t0 = time.perf_counter()
                r = client.post(big[0], json=big[1])
                r.raise_for_status()
                big_done.append(time.perf_counter() - t0)

    thread = threading.Thread(target=bulk, daemon=True) if big else None
    if thread:
        thread.start()
        time.sleep(1.0)  # the first big request is being served
    latencies: list[float] = []
    with httpx.Client(base_url=url, timeout=600) as client:
        deadline = time.monotonic() + duration
        i = 0
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            r = client.post("/search", json={"query": f"a large wild cat {i % 7}", "k": 5})
            r.raise_for_status()
            latencies.append(time.perf_counter() - t0)
            i += 1
            time.sleep(0.02)  # a lone client with a little think time: it arrives at random points of a chunk
    stop.set()
    if thread:
        thread.join(600)
    ms = np.array(latencies) * 1000
    return {
        "scenario": name,
        "queries": len(latencies),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "max_ms": round(float(ms.max()), 1),
        "big_requests": len(big_done),
        "big_mean_s": round(float(np.mean(big_done)), 2) if big_done else None,
        "loadavg": loadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index", type=Path, help="an existing index (default: a 3,000-gloss sample index)")
    parser.add_argument("--index-dir", type=Path, default=Path("/tmp/semsearch-bench/head_of_line_index"))
    parser.add_argument("--reranker", help="a reranker folder: adds the rerank scenario")
    parser.add_argument("--reranker-backend", default="auto")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per scenario")
    parser.add_argument("--max-batch-tokens", type=int, default=256)
    parser.add_argument("--scenarios", default="idle,embed,batch,rerank")
    args = parser.parse_args()
    index = args.index or ensure_index(args.index_dir)
    wanted = args.scenarios.split(",")
    bigs: dict[str, tuple[str, dict] | None] = {
        "idle": None,
        "embed": ("/embed", {"texts": long_texts(64, 4000)}),
        "batch": ("/search/batch", {"queries": long_texts(64, 1000), "k": 10}),
    }
    if args.reranker:
        bigs["rerank"] = ("/rerank", {"query": "a large wild cat", "texts": long_texts(200, 4000)})
    proc, url = start_server(args, index)
    rows = []
    try:
        for name, big in bigs.items():
            if name in wanted:
                print(f"scenario {name} ...", flush=True)
                rows.append(run_scenario(url, name, big, args.duration))
                print("  ", rows[-1], flush=True)
    finally:
        proc.terminate()
        proc.wait(60)
    columns = ["scenario", "queries", "p50_ms", "p99_ms", "max_ms", "big_requests", "big_mean_s", "loadavg"]
    print(markdown_table(columns, [[r[c] for c in columns] for r in rows]))
    suffix = "" if args.max_batch_tokens == 256 else f"_tokens{args.max_batch_tokens}"
    path = save(
        f"head_of_line{suffix}",
        {"max_batch_tokens": args.max_batch_tokens, "duration_s": args.duration, "rows": rows, "env": machine()},
    )
    print(f"saved {path}")


if __name__ == "__main__":
    main()
