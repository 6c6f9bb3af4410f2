"""The SBERT paper's headline, re-measured on this machine's CPU.

Reimers & Gurevych (2019), section 1: finding the most similar pair in a collection of 10,000
sentences takes about 65 hours with BERT as a cross-encoder (n(n-1)/2 = 49,995,000 inferences, V100
GPU); with SBERT, embedding the 10,000 sentences takes about 5 seconds and computing the cosines
about 0.01 seconds.

Here, on CPU only: 10,000 real sentences (5,000 STS-B + 5,000 WordNet glosses), encoded with
``semsearch.models.encoder.Encoder`` per ``--backends``; the most similar pair found by an exact all-pairs
search (blocked matrix product, the upper triangle, diagonal excluded); and the cross-encoder time
estimated as (time per pair measured on ``--ce-sample`` random pairs) × 49,995,000, for the
cross-encoder backends ``--ce-backends`` (same MiniLM-L6 architecture: ``models/reranker`` if
trained, else an untrained CrossEncoder with one label).

    python bench/bench_seed_headline.py                   # ~2-4 min on 2 cores
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
from bench_rerank import model_folder

PAPER = {"cross_encoder_s": 65 * 3600.0, "embed_s": 5.0, "compare_s": 0.01, "hardware": "V100 GPU"}


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    sts = c.stsb_sentences()
    wn = list(dict.fromkeys(c.wordnet_glosses()))
    rng.shuffle(sts)
    rng.shuffle(wn)
    half = n // 2
    picked = list(dict.fromkeys(sts[:half] + wn[: n - half]))
    extra = iter(sts[half:])
    while len(picked) < n:
        s = next(extra)
        if s not in picked:
            picked.append(s)
    return picked


def most_similar_pair(emb: np.ndarray, block: int = 2048) -> tuple[float, int, int]:
    best = (-2.0, -1, -1)
    for start in range(0, len(emb), block):
        s = emb[start : start + block] @ emb.T  # (b, n)
        rows = np.arange(start, min(start + block, len(emb)))
        s[np.arange(len(emb))[None, :] <= rows[:, None]] = -2.0  # keep j > i only (upper triangle)
        flat = int(np.argmax(s))
        i, j = divmod(flat, len(emb))
        if s[i, j] > best[0]:
            best = (float(s[i, j]), int(rows[i]), j)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--backends", nargs="+", default=["onnx-int8"], help="bi-encoder backends to time")
    parser.add_argument("--ce-backends", nargs="+", default=["torch", "onnx-int8"])
    parser.add_argument("--ce-sample", type=int, default=256, help="pairs timed for the cross-encoder estimate")
    parser.add_argument("--out", type=Path, default=c.RESULTS)
    args = parser.parse_args()

    from semsearch.models import Encoder, Reranker

    info = c.machine()
    print(f"{info['cpu']}, {info['usable_cores']} cores, load {info['loadavg_at_start']}", flush=True)
    texts = sentences(args.n)
    pairs_total = args.n * (args.n - 1) // 2
    rows: list[dict[str, Any]] = []
    for backend in args.backends:
        enc = Encoder(backend=backend)  # type: ignore[arg-type]
        enc.encode(texts[:64])
        t0 = time.perf_counter()
        emb = enc.encode(texts, batch_size=64)
        embed_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        score, i, j = most_similar_pair(emb)
        compare_s = time.perf_counter() - t0
        print(
            f"  {backend}: embed {embed_s:.1f}s, all-pairs {compare_s:.2f}s -> {score:.4f}\n"
            f"     {texts[i]!r}\n     {texts[j]!r}  load {c.loadavg()[0]}",
            flush=True,
        )
        rows.append({"what": f"SBERT embed ({backend})", "seconds": embed_s})
        rows.append(
            {
                "what": f"SBERT all-pairs cosine + argmax ({backend} vectors)",
                "seconds": compare_s,
                "pair": [texts[i], texts[j]],
                "cosine": score,
            }
        )
    rng = random.Random(1)
    sample = [tuple(rng.sample(texts, 2)) for _ in range(args.ce_sample)]
    with tempfile.TemporaryDirectory(prefix="bench-seed-") as tmp:
        folder, note = model_folder(Path(tmp))
        for backend in args.ce_backends:
            ce = Reranker(folder, backend=backend)
            ce.logits(sample[:32])
            t0 = time.perf_counter()
            ce.logits(sample, batch_size=32)
            per_pair = (time.perf_counter() - t0) / len(sample)
            est = per_pair * pairs_total
            print(
                f"  cross-encoder {backend}: {per_pair * 1000:.2f} ms/pair -> {est / 3600:.1f} h for "
                f"{pairs_total:,} pairs  load {c.loadavg()[0]}",
                flush=True,
            )
            rows.append(
                {
                    "what": f"cross-encoder, all {pairs_total:,} pairs ({backend}, estimated)",
                    "seconds": est,
                    "per_pair_ms": per_pair * 1000,
                }
            )
    paper_rows = {
        "SBERT embed": PAPER["embed_s"],
        "SBERT all-pairs": PAPER["compare_s"],
        "cross-encoder": PAPER["cross_encoder_s"],
    }

    def paper_for(what: str) -> str:
        for key, v in paper_rows.items():
            if what.startswith(key):
                return f"{v / 3600:.0f} h" if v > 3600 else f"{v:g} s"
        return ""

    def human(s: float) -> str:
        return f"{s / 3600:.1f} h" if s > 3600 else f"{s:.2f} s"

    table = c.markdown_table(
        ["step (10K sentences)", "this machine (CPU)", "paper (V100 GPU)"],
        [[r["what"], human(r["seconds"]), paper_for(r["what"])] for r in rows],
    )
    print()
    print(table)
    result = {
        "machine": info,
        "n": args.n,
        "pairs": pairs_total,
        "paper": PAPER,
        "cross_encoder_model": note,
        "data": "5,000 STS-B sentences + 5,000 WordNet glosses (unique, shuffled, seed 0)",
        "rows": rows,
        "table": table,
    }
    path = c.save("bench_seed_headline", result, args.out)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = [
        r["what"].split(" (")[0] + "\n(" + r["what"].split(" (", 1)[1] if " (" in r["what"] else r["what"] for r in rows
    ]
    ax.barh(labels, [r["seconds"] for r in rows], color="C0")
    ax.set_xscale("log")
    ax.set_xlabel("seconds (log)")
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title(
        f"most similar pair among {args.n:,} sentences — {info['cpu']}, {info['usable_cores']} cores",
        fontsize=9,
    )
    save_figure(fig, args.out / "bench_seed_headline.png")
    print(f"saved {path} and {args.out / 'bench_seed_headline.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
