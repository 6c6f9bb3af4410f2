"""Indexing throughput per encoder backend vs plain sentence-transformers, with a quality guard.

In one run, for each of

* ``sentence-transformers``: plain ``SentenceTransformer(model).encode(texts)`` (its defaults:
  batch 32, length-sorted), the reference every speed-up is measured against;
* ``torch``, ``onnx``, ``onnx-int8``: ``semsearch.models.encoder.Encoder(backend=...)`` (batch 64,
  length-sorted, the same packaged all-MiniLM-L6-v2);

it measures sentences/s on

* **short**: the unique sentences of STS-B dev (about 3K, ~12 tokens), ``--rounds`` interleaved
  rounds (backend order rotates each round, best round kept, so a load spike on a shared machine
  hits every backend alike);
* **long**: ``--scifact-docs`` SciFact documents (title + abstract, ~300 tokens, truncated at 256);

and the quality guard from the same embeddings: STS-B dev Spearman (cosine, ×100) and nDCG@10 of the
300 SciFact test queries over the SciFact subset (every relevant document + random distractors:
a subset, not the full 5,183-document corpus). A backend whose Spearman is more than
``--max-drop`` (0.3) points below torch is flagged as not allowed as the default.

    python bench/bench_encode.py                      # ~5 min on 2 cores
    python bench/bench_encode.py --rounds 1 --scifact-docs 300     # make bench (quick)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c
from _plot import pyplot, save_figure

from semsearch.eval import ndcg_at_k, spearman

BACKENDS = ("sentence-transformers", "torch", "onnx", "onnx-int8")


class Runner:
    """One backend: ``encode(texts) -> unit vectors``; construction time recorded."""

    def __init__(self, name: str, batch_size: int, cache_dir: str | None, threads: int | None) -> None:
        self.name = name
        started = time.perf_counter()
        if name == "sentence-transformers":
            from sentence_transformers import SentenceTransformer

            from semsearch.models import resolve_model

            self.st = SentenceTransformer(str(resolve_model(None).path), device="cpu")
            self.batch_size = 32  # its default
        else:
            from semsearch.models import Encoder

            self.encoder = Encoder(backend=name, cache_dir=cache_dir, num_threads=threads)  # type: ignore[arg-type]
            self.batch_size = batch_size
        self.load_s = time.perf_counter() - started

    def encode(self, texts: list[str]) -> np.ndarray:
        if self.name == "sentence-transformers":
            vecs = self.st.encode(texts, batch_size=self.batch_size, show_progress_bar=False)
            vecs = np.asarray(vecs, dtype=np.float32)
            return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
        return self.encoder.encode(texts, batch_size=self.batch_size)


def timed(runner: Runner, texts: list[str]) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    vecs = runner.encode(texts)
    return time.perf_counter() - started, vecs


def ndcg10(doc_vecs: np.ndarray, doc_ids: list[str], q_vecs: np.ndarray, q_ids: list[str], qrels: Any) -> float:
    top = np.argsort(-(q_vecs @ doc_vecs.T), axis=1)[:, :10]
    total = sum(ndcg_at_k([doc_ids[j] for j in top[qi]], qrels.get(q, {}), 10) for qi, q in enumerate(q_ids))
    return 100 * total / len(q_ids)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds on the short texts")
    parser.add_argument("--scifact-docs", type=int, default=600, help="SciFact subset size (0: skip long)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size of our Encoder")
    parser.add_argument("--cache-dir", default=None, help="ONNX cache (default: the semsearch default)")
    parser.add_argument("--max-drop", type=float, default=0.3, help="allowed STS-B Spearman drop vs torch")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (torch + ORT); default: all cores")
    parser.add_argument("--max-load", type=float, default=0.0, help="wait for load average below this first")
    parser.add_argument("--out", type=Path, default=c.RESULTS)
    args = parser.parse_args()

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # plain sentence-transformers too
    if args.max_load:
        c.wait_for_quiet(args.max_load, 600)
    info = c.machine()
    print(f"{info['cpu']} ({info['cpu_flags']}), {info['usable_cores']} cores, load {info['loadavg_at_start']}")

    pairs = c.stsb_pairs("dev")
    short = list(dict.fromkeys(s for a, b, _ in pairs for s in (a, b)))
    pos = {s: i for i, s in enumerate(short)}
    gold = np.array([g for _, _, g in pairs])
    docs: dict[str, str] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    if args.scifact_docs:
        docs, queries, qrels = c.scifact_subset(args.scifact_docs)
    doc_ids, doc_texts = list(docs), list(docs.values())
    q_ids, q_texts = list(queries), list(queries.values())

    runners = {}
    for name in args.backends:
        runners[name] = Runner(name, args.batch_size, args.cache_dir, args.threads)
        runners[name].encode(short[:64])  # warm-up (ORT/torch first-call allocations)
        print(f"  loaded {name} in {runners[name].load_s:.1f}s", flush=True)
    tok = next(iter(runners.values()))
    tokenizer = tok.st.tokenizer if tok.name == "sentence-transformers" else tok.encoder.tokenizer
    short_tokens = float(np.mean([len(x) for x in tokenizer(short)["input_ids"]]))
    long_tokens = (
        float(np.mean([min(256, len(x)) for x in tokenizer(doc_texts, verbose=False)["input_ids"]]))
        if doc_texts
        else 0.0
    )

    rows: dict[str, dict[str, Any]] = {name: {"backend": name, "short_s": []} for name in args.backends}
    short_vecs: dict[str, np.ndarray] = {}
    names = list(args.backends)
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            seconds, vecs = timed(runners[name], short)
            rows[name]["short_s"].append(seconds)
            short_vecs.setdefault(name, vecs)
            print(
                f"  round {r + 1} short {name:>21}: {len(short) / seconds:7.1f} sent/s  load {c.loadavg()[0]}",
                flush=True,
            )
    for name in names:
        row = rows[name]
        row["short_per_s"] = len(short) / min(row["short_s"])
        a = short_vecs[name][[pos[p[0]] for p in pairs]]
        b = short_vecs[name][[pos[p[1]] for p in pairs]]
        row["stsb_dev_spearman"] = 100 * spearman(np.einsum("nd,nd->n", a, b), gold)
        if doc_texts:
            seconds, dvecs = timed(runners[name], doc_texts)
            row["long_s"] = seconds
            row["long_per_s"] = len(doc_texts) / seconds
            qvecs = runners[name].encode(q_texts)
            row["scifact_ndcg10"] = ndcg10(dvecs, doc_ids, qvecs, q_ids, qrels)
            print(f"  long {name:>21}: {row['long_per_s']:7.1f} docs/s  load {c.loadavg()[0]}", flush=True)
            if name == "torch":
                row["_doc_vecs"] = dvecs
        row["load_s"] = runners[name].load_s
    ref = rows.get("torch")
    base = rows.get("sentence-transformers")
    for name in names:
        row = rows[name]
        if ref is not None:
            row["spearman_drop_vs_torch"] = ref["stsb_dev_spearman"] - row["stsb_dev_spearman"]
            row["guard_ok"] = row["spearman_drop_vs_torch"] <= args.max_drop
            row["mean_cosine_to_torch"] = float(np.einsum("nd,nd->n", short_vecs[name], short_vecs["torch"]).mean())
            row["min_cosine_to_torch"] = float(np.einsum("nd,nd->n", short_vecs[name], short_vecs["torch"]).min())
        if base is not None:
            row["short_speedup_vs_st"] = row["short_per_s"] / base["short_per_s"]
            if "long_per_s" in row:
                row["long_speedup_vs_st"] = row["long_per_s"] / base["long_per_s"]
    for row in rows.values():
        row.pop("_doc_vecs", None)

    headers = [
        "backend",
        "short sent/s",
        "× ST",
        "long docs/s",
        "× ST",
        "STS-B dev ρ",
        "Δ vs torch",
        "SciFact nDCG@10",
        "cos to torch (mean/min)",
        "guard",
    ]
    table_rows = []
    nan = float("nan")
    for name in names:
        r = rows[name]
        table_rows.append(
            [
                name,
                round(r["short_per_s"], 1),
                f"{r.get('short_speedup_vs_st', float('nan')):.2f}",
                round(r.get("long_per_s", float("nan")), 1),
                f"{r.get('long_speedup_vs_st', float('nan')):.2f}",
                f"{r['stsb_dev_spearman']:.2f}",
                f"{r.get('spearman_drop_vs_torch', float('nan')):+.2f}",
                f"{r.get('scifact_ndcg10', float('nan')):.2f}",
                f"{r.get('mean_cosine_to_torch', nan):.4f} / {r.get('min_cosine_to_torch', nan):.4f}",
                "ok" if r.get("guard_ok", True) else "FAIL",
            ]
        )
    table = c.markdown_table(headers, table_rows)
    print()
    print(table)
    allowed = [n for n in names if n != "sentence-transformers" and rows[n].get("guard_ok", True)]
    fastest = max(allowed, key=lambda n: rows[n]["short_per_s"]) if allowed else None
    print(f"\nfastest backend within the guard (Δρ ≤ {args.max_drop}): {fastest}")
    n_relevant = len({d for r in qrels.values() for d in r})
    result = {
        "machine": info,
        "threads": {
            "torch": __import__("torch").get_num_threads(),
            "onnxruntime_intra_op": args.threads or os.cpu_count(),
        },
        "data": {
            "short": f"STS-B dev unique sentences: {len(short)}, mean {short_tokens:.1f} tokens",
            "long": f"SciFact subset: {len(doc_texts)} docs (all {n_relevant} relevant test docs + "
            f"random distractors), mean {long_tokens:.1f} tokens after truncation at 256; "
            f"{len(q_texts)} test queries",
        },
        "settings": {
            "rounds": args.rounds,
            "batch_size": args.batch_size,
            "st_batch_size": 32,
            "max_drop": args.max_drop,
        },
        "rows": list(rows.values()),
        "fastest_within_guard": fastest,
        "table": table,
    }
    path = c.save("bench_encode", result, args.out)
    plot(rows, names, args.out / "bench_encode.png", f"{info['cpu']}, {info['usable_cores']} cores")
    print(f"saved {path} and {args.out / 'bench_encode.png'}")
    return 0


def plot(rows: dict[str, dict[str, Any]], names: list[str], path: Path, title: str) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, label in (
        (axes[0], "short_per_s", "STS-B sentences/s"),
        (axes[1], "long_per_s", "SciFact docs/s"),
    ):
        vals = [rows[n].get(key, 0.0) for n in names]
        bars = ax.bar(names, vals, color=[f"C{i}" for i in range(len(names))])
        for bar, v in zip(bars, vals, strict=True):
            ax.annotate(f"{v:.0f}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
        ax.set_ylabel(label)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"encoding throughput, all-MiniLM-L6-v2 — {title}", fontsize=9)
    save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
