"""Retrieve-then-rerank quality on a BEIR dataset: nDCG@10 before and after cross-encoder reranking.

For each retrieval mode (dense, hybrid) the top ``--candidates`` hits of every judged query are scored
once by each reranker (raw logits, cached per query/doc pair); then, with the same candidates:

* ``retrieval``  the retriever's own order (the baseline),
* ``ce only``    the cross-encoder logit alone (fusion weight 0),
* ``fused@w``    ``(1 - w) * z(logit) + w * z(retrieval score)`` per query (the mode's own score: cosine
  for dense, the fused score for hybrid): what ``/search`` with ``rerank: true`` returns, at the
  reranker's configured weight and at ``--weight`` values given on the command line.

With ``--tune-qids`` (a file of query ids from ``--tune-split``, disjoint from the reported split) the
weight is also tuned on those queries only and reported as ``tuned``. Nothing is tuned on the
reported split.

    python bench/rerank_retrieval.py --data ../shared/data/scifact --index IDX \\
        --reranker sts=models/reranker --candidates 50 --tune-qids bench/results/scifact_dev_qids.txt

``IDX`` is an index of the dataset's corpus (``python -m indexer eval beir --data DIR --index IDX --build``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c

GRID = [round(0.1 * i, 1) for i in range(11)]


def retrieve(index: Any, encoder: Any, queries: dict[str, str], mode: str, n: int) -> dict[str, list[Any]]:
    """qid -> top-n hits (one per document) of ``mode``."""
    from semsearch.search import search

    qids = list(queries)
    texts = [queries[q] for q in qids]
    vectors = encoder.encode(texts, batch_size=64)
    results = search(index, texts, vectors, n, mode)
    return dict(zip(qids, results, strict=True))


def ndcg10(order: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> float:
    from semsearch.eval import evaluate_run

    return evaluate_run(order, {q: qrels[q] for q in order}, ["ndcg@10"]).metrics["ndcg@10"]


def ranked(hits: list[Any], scores: np.ndarray) -> list[str]:
    return [hits[int(i)].doc_id or str(hits[int(i)].id) for i in np.argsort(-scores, kind="stable")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="BEIR folder")
    parser.add_argument("--index", type=Path, required=True, help="index of the dataset's corpus")
    parser.add_argument("--split", default="test", help="reported split")
    parser.add_argument("--tune-split", default="train", help="split the --tune-qids come from")
    parser.add_argument("--tune-qids", type=Path, default=None, help="query ids (one per line) to tune w on")
    parser.add_argument("--reranker", action="append", required=True, help="LABEL=PATH, repeatable")
    parser.add_argument("--backend", default="torch", help="reranker backend")
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--modes", nargs="+", default=["dense", "hybrid"])
    parser.add_argument("--weight", type=float, action="append", default=[], help="extra fixed weights to report")
    parser.add_argument(
        "--logits-cache", type=Path, default=None, help="JSON file of cross-encoder logits reused across runs"
    )
    parser.add_argument("--name", default=None, help="result file name (default: rerank_<dataset>)")
    parser.add_argument("--out", type=Path, default=c.RESULTS)
    args = parser.parse_args()

    from semsearch.eval import load_beir
    from semsearch.models import Encoder, Reranker, fuse_logits
    from semsearch.search import SearchIndex

    info = c.machine()
    dataset = load_beir(args.data, args.split)
    splits = {"report": (dataset.queries, dataset.qrels)}
    if args.tune_qids:
        wanted = set(args.tune_qids.read_text().split())
        tune = load_beir(args.data, args.tune_split)
        splits["tune"] = (
            {q: t for q, t in tune.queries.items() if q in wanted},
            {q: r for q, r in tune.qrels.items() if q in wanted},
        )
        overlap = set(splits["tune"][0]) & set(dataset.queries)
        if overlap:
            raise SystemExit(f"{len(overlap)} tuning queries are also in the reported split")
    index = SearchIndex.load(args.index)
    encoder = Encoder.from_manifest(index.manifest)
    rerankers = {}
    for spec in args.reranker:
        label, _, path = spec.partition("=")
        rerankers[label] = Reranker(path, backend=args.backend)

    rows: list[dict[str, Any]] = []
    # (reranker label, qid) -> record id -> logit; kept in --logits-cache between runs
    cache: dict[tuple[str, str], dict[int, float]] = {}
    if args.logits_cache and args.logits_cache.is_file():
        for key, values in json.loads(args.logits_cache.read_text()).items():
            label, _, qid = key.partition("|")
            cache[(label, qid)] = {int(i): float(v) for i, v in values.items()}
    speed: dict[str, float] = {}  # reranker -> pairs/s
    for mode in args.modes:
        hits = {part: retrieve(index, encoder, qs, mode, args.candidates) for part, (qs, _) in splits.items()}
        for part, (_, qrels) in splits.items():
            base = ndcg10({q: ranked(h, -np.arange(len(h))) for q, h in hits[part].items()}, qrels)
            rows.append({"mode": mode, "split": part, "reranker": "-", "scoring": "retrieval", "ndcg@10": base})
        for label, rr in rerankers.items():
            logits: dict[str, dict[str, np.ndarray]] = {}
            t0 = time.perf_counter()
            pairs = 0
            for part, (queries, _) in splits.items():
                logits[part] = {}
                for q, h in hits[part].items():
                    known = cache.setdefault((label, q), {})
                    todo = [x for x in h if x.id not in known]
                    if todo:
                        new = rr.logits([(queries[q], x.text) for x in todo])
                        known.update(zip([x.id for x in todo], new.tolist(), strict=True))
                        pairs += len(todo)
                    logits[part][q] = np.array([known[x.id] for x in h], dtype=np.float32)
            seconds = time.perf_counter() - t0
            print(f"{mode}/{label}: {pairs} new pairs in {seconds:.0f} s", flush=True)
            if pairs:
                speed[label] = round(pairs / seconds, 1)

            def score_at(
                part: str,
                w: float,
                lg: dict[str, dict[str, np.ndarray]] = logits,
                hs: dict[str, dict[str, list[Any]]] = hits,
            ) -> float:
                order = {}
                for q, h in hs[part].items():
                    retrieval = [x.score for x in h]  # the mode's own score, as semsearch.search.modes.rerank fuses
                    order[q] = ranked(h, fuse_logits(lg[part][q], retrieval, w) if w > 0 else lg[part][q])
                return ndcg10(order, splits[part][1])

            weights: dict[str, float] = {"ce only": 0.0}
            if rr.fusion is not None:
                weights["model weight"] = rr.fusion.retrieval_weight
            for w in args.weight:
                weights[f"w={w}"] = w
            curve = None
            if "tune" in splits:
                curve = {w: score_at("tune", w) for w in GRID}
                weights["tuned"] = max(curve, key=lambda w: (curve[w], -abs(w - 0.5)))
            for part in splits:
                for name, w in weights.items():
                    rows.append(
                        {
                            "mode": mode,
                            "split": part,
                            "reranker": label,
                            "scoring": f"{name} (w={w:.1f})",
                            "weight": w,
                            "ndcg@10": score_at(part, w),
                            "tune_curve": curve,
                        }
                    )
    if args.logits_cache:
        blob = {f"{label}|{qid}": {str(i): v for i, v in d.items()} for (label, qid), d in cache.items()}
        args.logits_cache.write_text(json.dumps(blob))
    for r in rows:
        r["ndcg@10"] = round(r["ndcg@10"], 4)
    split_label = {"report": args.split, "tune": f"tune ({args.tune_split})"}
    table = c.markdown_table(
        ["mode", "queries", "reranker", "scoring", "nDCG@10"],
        [[r["mode"], split_label[r["split"]], r["reranker"], r["scoring"], f"{r['ndcg@10']:.4f}"] for r in rows],
    )
    print()
    print(table)
    name = args.name or f"rerank_{args.data.name}"
    result = {
        "machine": info,
        "dataset": str(args.data),
        "split": args.split,
        "tune": {"split": args.tune_split, "qids": str(args.tune_qids), "queries": len(splits["tune"][0])}
        if "tune" in splits
        else None,
        "candidates": args.candidates,
        "backend": args.backend,
        "rerankers": {k: str(v.path or v.name) for k, v in rerankers.items()},
        "pairs_per_s": speed,
        "rows": rows,
        "table": table,
    }
    print(f"saved {c.save(name, result, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
