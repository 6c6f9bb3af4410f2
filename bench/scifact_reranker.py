"""Experiment: a reranker trained on SciFact train pairs with hard negatives mined by our bi-encoder.

SciFact is CC BY-NC (non-commercial), so this model is an experiment, not the shipped default
(``make reranker`` trains on STS-B only). Steps:

1. split SciFact's train claims by query id: every 10th claim (sorted numerically) is held out as a
   dev set (``dev_qids.txt``), the rest is training data; the test claims are never touched;
2. ``python -m indexer train-reranker --relevance train --dev-relevance dev --mine-index IDX``:
   hard negatives = top-ranked non-positive abstracts of the bi-encoder index; dev MRR (positives among
   the mined top-k) drives early stopping;
3. evaluate with ``bench/rerank_retrieval.py --tune-qids <out>/dev_qids.txt`` (the printed command).

    python bench/scifact_reranker.py --index IDX [--base-model models/reranker] [--epochs 1]
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c


def split_pairs(source: Path, out: Path, every: int) -> tuple[Path, Path, Path, int, int]:
    """Write train/dev pair files and the dev query ids; returns paths and query counts."""
    by_query: dict[str, list[str]] = defaultdict(list)
    with gzip.open(source, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                by_query[json.loads(line)["query_id"]].append(line)
    qids = sorted(by_query, key=int)
    dev = set(qids[::every])
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "train_pairs.jsonl.gz", out / "dev_pairs.jsonl.gz", out / "dev_qids.txt"
    with gzip.open(paths[0], "wt", encoding="utf-8") as tr, gzip.open(paths[1], "wt", encoding="utf-8") as dv:
        for q in qids:
            (dv if q in dev else tr).writelines(by_query[q])
    paths[2].write_text("".join(f"{q}\n" for q in qids if q in dev))
    return *paths, len(qids) - len(dev), len(dev)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, required=True, help="index of the SciFact corpus (mining)")
    parser.add_argument("--data", type=Path, default=c.SCIFACT)
    parser.add_argument("--work", type=Path, default=c.REPO / "artifacts" / "scifact", help="split files")
    parser.add_argument("--output", type=Path, default=c.REPO / "models" / "reranker-scifact")
    parser.add_argument("--base-model", default=None, help="initial weights (default: packaged MiniLM)")
    parser.add_argument("--every", type=int, default=10, help="hold out every n-th train claim as dev")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--num-negatives", type=int, default=4)
    parser.add_argument("--mine-top-k", type=int, default=20)
    args = parser.parse_args()

    train, dev, qids, n_train, n_dev = split_pairs(args.data / "train_pairs.jsonl.gz", args.work, args.every)
    print(f"train claims {n_train}, held-out dev claims {n_dev} ({qids})", flush=True)
    cmd = [
        sys.executable,
        "-m",
        "indexer",
        "train-reranker",
        "--relevance",
        str(train),
        "--dev-relevance",
        str(dev),
        "--mine-index",
        str(args.index),
        "--mine-top-k",
        str(args.mine_top_k),
        "--num-negatives",
        str(args.num_negatives),
        "--epochs",
        str(args.epochs),
        "--output",
        str(args.output),
        "--overwrite",
    ]
    if args.base_model:
        cmd += ["--base-model", args.base_model]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=c.REPO)
    print(
        "\nevaluate (weight tuned on the held-out dev claims only):\n"
        f"  python bench/rerank_retrieval.py --data {args.data} --index {args.index} "
        f"--reranker scifact={args.output} --tune-qids {qids}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
