"""Cross-encoder reranking latency for 10 / 50 / 100 candidates per backend.

Uses ``semsearch.models.reranker.Reranker`` (what ``/rerank`` and ``rerank: true`` run) on ``models/reranker``
when it has been trained (``make reranker``), else on an untrained ``CrossEncoder(all-MiniLM-L6-v2,
num_labels=1)`` saved to a temporary folder: the same architecture, so the same cost (stated in the
results). Backends: every name :func:`semsearch.models.reranker.available_backends` offers (``torch``, ``onnx``,
``onnx-int8``; the ONNX files are exported once into the semsearch cache). Queries are STS-B
sentences, candidates WordNet glosses (~20 tokens) — the lengths of a search result list. Latency = one
``Reranker.score`` call (tokenise + forward + activation), p50/p99 over ``--repeats`` calls.

    python bench/bench_rerank.py                # ~1-2 min on 2 cores
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c
from _plot import pyplot, save_figure


def model_folder(tmp: Path) -> tuple[Path, str]:
    trained = c.REPO / "models" / "reranker"
    if (trained / "config.json").is_file():
        return trained, "models/reranker (trained)"
    from sentence_transformers import CrossEncoder

    from semsearch.models import resolve_model

    ce = CrossEncoder(str(resolve_model(None).path), num_labels=1, device="cpu")
    ce.save(str(tmp / "ce"))
    return tmp / "ce", "untrained CrossEncoder(all-MiniLM-L6-v2, num_labels=1): same architecture and cost"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--model", type=Path, default=None, help="CrossEncoder folder (default: models/reranker)")
    parser.add_argument("--name", default="bench_rerank", help="results file name (without .json/.png)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32, help="Reranker.score batch size (its default)")
    parser.add_argument("--backends", nargs="*", default=None, help="default: all available")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    parser.add_argument("--cache-dir", default=None, help="ONNX cache (default: the semsearch default)")
    parser.add_argument(
        "--spinning",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="ONNX threads spin-wait (default off, as in the service; interleaved spinning pools fight)",
    )
    parser.add_argument("--out", type=Path, default=c.RESULTS)
    args = parser.parse_args()

    from semsearch.models import Reranker, available_backends

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    info = c.machine()
    print(f"{info['cpu']}, {info['usable_cores']} cores, load {info['loadavg_at_start']}", flush=True)
    backends = args.backends or available_backends()
    rng = random.Random(0)
    queries = [a for a, _, _ in c.stsb_pairs("dev")]
    glosses = c.wordnet_glosses()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-rerank-") as tmp:
        if args.model is not None:
            folder, model_note = args.model, str(args.model)
        else:
            folder, model_note = model_folder(Path(tmp))
        print(f"model: {model_note}", flush=True)
        rerankers: dict[str, Reranker] = {}
        for backend in backends:
            try:
                options = {"cache_dir": args.cache_dir, "num_threads": args.threads, "spinning": args.spinning}
                rerankers[backend] = Reranker(folder, backend=backend, backend_options=options)
            except Exception as e:  # report a backend that cannot load instead of hiding it
                print(f"  {backend}: cannot load ({type(e).__name__}: {e})", flush=True)
                rows.append({"backend": backend, "error": f"{type(e).__name__}: {e}"})
                continue
            rerankers[backend].score(queries[0], glosses[:8])  # warm-up
        for n in args.candidates:
            # interleaved: every repeat times each backend on the same query and candidates, so a load
            # spike on a shared machine hits all backends alike
            lat: dict[str, list[float]] = {b: [] for b in rerankers}
            for _ in range(args.repeats):
                q = rng.choice(queries)
                cands = rng.sample(glosses, n)
                for backend, reranker in rerankers.items():
                    t0 = time.perf_counter()
                    reranker.score(q, cands, batch_size=args.batch_size)
                    lat[backend].append(time.perf_counter() - t0)
            for backend in rerankers:
                ms = np.asarray(lat[backend]) * 1000
                row = {
                    "backend": backend,
                    "candidates": n,
                    "p50_ms": round(float(np.percentile(ms, 50)), 1),
                    "p99_ms": round(float(np.percentile(ms, 99)), 1),
                    "per_pair_ms": round(float(np.percentile(ms, 50)) / n, 2),
                    "load1": c.loadavg()[0],
                }
                rows.append(row)
                print(
                    f"  {backend:>9} n={n:<4} p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  "
                    f"load {row['load1']}",
                    flush=True,
                )
    ok = [r for r in rows if "error" not in r]
    table = c.markdown_table(
        ["backend", "candidates", "p50 ms", "p99 ms", "ms / pair", "load (1 min)"],
        [[r["backend"], r["candidates"], r["p50_ms"], r["p99_ms"], r["per_pair_ms"], r["load1"]] for r in ok],
    )
    print()
    print(table)
    result = {
        "machine": info,
        "model": model_note,
        "backends": backends,
        "rows": rows,
        "table": table,
        "settings": {
            "repeats": args.repeats,
            "batch_size": args.batch_size,
            "onnx_spinning": args.spinning,
            "queries": "STS-B dev sentence1",
            "candidates": "random WordNet glosses",
        },
    }
    path = c.save(args.name, result, args.out)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, b in enumerate(dict.fromkeys(r["backend"] for r in ok)):
        pts = [r for r in ok if r["backend"] == b]
        for q, style in (("p50", {"marker": "o"}), ("p99", {"linestyle": "--"})):
            xs, ys = [r["candidates"] for r in pts], [r[f"{q}_ms"] for r in pts]
            ax.plot(xs, ys, color=f"C{i}", label=f"{b} {q}", **style)
    ax.axhline(100, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("candidates reranked")
    ax.set_ylabel("latency (ms)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"cross-encoder rerank latency — {info['cpu']}, {info['usable_cores']} cores", fontsize=9)
    save_figure(fig, args.out / f"{args.name}.png")
    print(f"saved {path} and {args.out / (args.name + '.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
