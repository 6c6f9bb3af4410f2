"""Anonymous memory of the ONNX encoder and reranker after large batches, with and without the
service's arena bound (``arena_keep_tokens``).

onnxruntime's CPU arena keeps the largest tensors it has ever allocated. The service frees the arena
chunks of runs above ``app.services.ARENA_KEEP_TOKENS`` (encoder) and ``RERANK_ARENA_KEEP_TOKENS``
(reranker) after the run. Each configuration runs in a fresh process (arenas do not mix): warm up
with small inputs, then ``--large`` calls with long texts (SciFact abstracts: the encoder gets
batches of 32, the reranker 100 candidates per call), then ``--small`` ordinary calls; anonymous RSS
(``RssAnon``) is read after each phase, and the median time of a large call shows what freeing the
arena costs.

    python bench/bench_arena.py                      # ~3 min on 2 cores
    python bench/bench_arena.py --reranker models/reranker --large 10 --small 50
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common as c


def anon_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(kind: str, keep: int | None, args: argparse.Namespace) -> dict[str, Any]:
    import random

    texts = sorted(c.scifact_docs().values(), key=len, reverse=True)[:400]
    short = [t[:60] for t in texts]
    rng = random.Random(0)
    if kind == "encoder":
        from semsearch.models import Encoder

        enc = Encoder(backend="onnx-int8", num_threads=2, arena_keep_tokens=keep)

        def large() -> None:
            enc.encode(rng.sample(texts, 32))

        def small() -> None:
            enc.encode(rng.sample(short, 4))
    else:
        from semsearch.models import Reranker

        rr = Reranker(args.reranker, backend="onnx-int8", backend_options={"num_threads": 2, "arena_keep_tokens": keep})

        def large() -> None:
            rr.score("what causes the immune response", rng.sample(texts, 100))

        def small() -> None:
            rr.score("immune response", rng.sample(short, 20))

    for _ in range(5):
        small()
    row: dict[str, Any] = {"kind": kind, "arena_keep_tokens": keep, "after_warm_up_mb": round(anon_mb(), 1)}
    took = []
    for _ in range(args.large):
        t0 = time.perf_counter()
        large()
        took.append(time.perf_counter() - t0)
    row["after_large_mb"] = round(anon_mb(), 1)
    row["large_call_p50_ms"] = round(statistics.median(took) * 1000, 1)
    for _ in range(args.small):
        small()
    row["after_small_mb"] = round(anon_mb(), 1)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reranker", default=str(c.REPO / "models" / "reranker"))
    parser.add_argument("--large", type=int, default=10, help="calls with long texts")
    parser.add_argument("--small", type=int, default=50, help="ordinary calls after them")
    parser.add_argument("--name", default="bench_arena")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "KEEP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, keep = args.child
        print(json.dumps(child(kind, None if keep == "none" else int(keep), args)))
        return 0

    from app.services import ARENA_KEEP_TOKENS, RERANK_ARENA_KEEP_TOKENS

    info = c.machine()
    print(f"{info['cpu']}, {info['usable_cores']} cores, load {info['loadavg_at_start']}", flush=True)
    rows = []
    for kind, keep in (("encoder", ARENA_KEEP_TOKENS), ("reranker", RERANK_ARENA_KEEP_TOKENS)):
        for setting in ("none", str(keep)):
            cmd = [sys.executable, __file__, "--child", kind, setting, "--reranker", args.reranker]
            cmd += ["--large", str(args.large), "--small", str(args.small)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  {rows[-1]}  load {c.loadavg()[0]}", flush=True)
    PHASES = ("after_warm_up_mb", "after_large_mb", "after_small_mb", "large_call_p50_ms")
    headers = ["model", "arena_keep_tokens", "after warm-up MB", "after large MB", "after small MB", "large p50 ms"]
    table = c.markdown_table(
        headers,
        [[r["kind"], r["arena_keep_tokens"] or "none (unbounded)", *(r[k] for k in PHASES)] for r in rows],
    )
    print(table)
    c.save(args.name, {"machine": info, "args": {k: v for k, v in vars(args).items() if k != "child"}, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
