"""Retrieval-quality experiments behind docs/quality.md (run from the repo root).

    python bench/quality.py sts            # mean vs CLS pooling on STS-B dev/test (Spearman/Pearson ×100)
    python bench/quality.py build          # the SciFact / DL19 indexes (mean, and SciFact CLS) into --cache
    python bench/quality.py index-types    # flat/hnsw/ivf/sq8/pq/hnsw-sq8/binary on SciFact test
    python bench/quality.py tune-fusion    # hybrid fusion grid on SciFact TRAIN queries
    python bench/quality.py modes          # dense / lexical / hybrid on SciFact test and DL19 + latency
    python bench/quality.py plot           # docs/quality.png from the saved results

Every subcommand prints a markdown table and writes JSON under ``--out``. Data come from
``--data`` (default ../shared/data, read-only; nothing is copied into the repo). Indexes and query
embeddings are cached under ``--cache`` (default /tmp/semsearch_quality), so encoding the corpora
(minutes on 2 cores) happens once.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from indexer.eval_cmd import build_beir_index  # noqa: E402
from semsearch.eval import (  # noqa: E402
    BeirDataset,
    evaluate_retrieval,
    evaluate_run,
    evaluate_sts,
    load_beir,
    read_sts,
)
from semsearch.index import (  # noqa: E402
    VectorIndex,
    top_k,
)
from semsearch.models import Encoder  # noqa: E402
from semsearch.search import (  # noqa: E402
    DEFAULT_HYBRID,
    Candidate,
    HybridParams,
    SearchIndex,
    fuse_candidates,
    search,
)

log = logging.getLogger("bench.quality")

DATASETS = {"scifact": "scifact", "dl19": "msmarco_trecdl19_subset"}
INDEX_TYPES = ("flat", "hnsw", "ivf", "sq8", "pq", "hnsw-sq8", "binary")


# ------------------------------------------------------------------------------------------- helpers


def _save(out: Path, name: str, data: Any) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    print(f"\n(saved {out / name}.json)")


def _index(args: argparse.Namespace, dataset: str, pooling: str = "mean", build: bool = True) -> Path:
    """The cached index of a dataset (built from its BEIR corpus on first use)."""
    root = Path(args.cache) / f"idx_{dataset}_{pooling}"
    if not (root / "current").exists():
        if not build:
            raise SystemExit(f"{root} is missing: run `python bench/quality.py build` first")
        ds = load_beir(Path(args.data) / DATASETS[dataset], "test")
        build_beir_index(ds, root, pooling=pooling, progress=True)
    return root


def _encoder(idx: SearchIndex) -> Encoder:
    return Encoder.from_manifest(idx.manifest)


def _query_vectors(args: argparse.Namespace, idx: SearchIndex, ds: BeirDataset) -> np.ndarray:
    """Encoded queries of ``ds`` (cached per index fingerprint, pooling, dataset and split)."""
    m = idx.manifest
    path = Path(args.cache) / f"q_{Path(ds.directory).name}_{ds.split}_{m.model_fingerprint}_{m.pooling}.npy"
    if path.is_file():
        vecs = np.load(path)
        if len(vecs) == len(ds.queries):
            return vecs
    vecs = _encoder(idx).encode(list(ds.queries.values()))
    np.save(path, vecs)
    return vecs


def _ext_ids(idx: SearchIndex) -> dict[int, str]:
    return {d.iid: str(d.id) for d in idx.iter_docs()}


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    def fmt(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for r in rows:
        print("| " + " | ".join(fmt(v) for v in r) + " |")


def _latency(fn: Callable[[int], Any], n: int, repeat: int = 1) -> dict[str, float]:
    """Per-call wall time (ms) of fn(i) for i in range(n), after a short warm-up."""
    for i in range(min(n, 10)):
        fn(i)
    times = []
    for _ in range(repeat):
        for i in range(n):
            t0 = time.perf_counter()
            fn(i)
            times.append(1000 * (time.perf_counter() - t0))
    return _stats(times)


# ------------------------------------------------------------------------------------------- sts


def cmd_sts(args: argparse.Namespace) -> None:
    rows, data = [], {}
    for pooling in ("mean", "cls"):
        enc = Encoder(pooling=pooling)  # type: ignore[arg-type]
        for split in ("dev", "test"):
            rep = evaluate_sts(read_sts(Path(args.data) / "stsb" / f"stsb_{split}.tsv"), enc)
            data[f"{pooling}/{split}"] = rep
            rows.append(
                [
                    pooling,
                    split,
                    rep["pairs"],
                    round(rep["cosine"]["spearman"], 2),
                    round(rep["cosine"]["pearson"], 2),
                ]
            )
    _table(["pooling", "split", "pairs", "Spearman×100", "Pearson×100"], rows)
    _save(Path(args.out), "sts", data)


# ------------------------------------------------------------------------------------------- build


def cmd_build(args: argparse.Namespace) -> None:
    for dataset, pooling in (("scifact", "mean"), ("dl19", "mean"), ("scifact", "cls")):
        t0 = time.perf_counter()
        root = _index(args, dataset, pooling)
        print(f"{dataset} {pooling}: {root} ({time.perf_counter() - t0:.0f}s)")


# ------------------------------------------------------------------------------------------- index types


def cmd_index_types(args: argparse.Namespace) -> None:
    import faiss

    root = _index(args, "scifact", build=False)
    idx = SearchIndex.load(root)
    ds = load_beir(Path(args.data) / "scifact", "test")
    q = _query_vectors(args, idx, ds)
    ext = _ext_ids(idx)
    ids, vectors = idx.live_vectors()
    k = 10
    exact = VectorIndex.build(vectors, ids, "flat")
    _, truth = exact.search(q, k)
    rows, data = [], {}
    for itype in INDEX_TYPES:
        t0 = time.perf_counter()
        vi = VectorIndex.build(vectors, ids, itype)
        build_s = time.perf_counter() - t0
        _, got = vi.search(q, 100)
        recall = float(np.mean([len(set(got[i, :k]) & set(truth[i])) / k for i in range(len(q))]))
        run = {qid: [ext[int(i)] for i in got[n] if i >= 0] for n, qid in enumerate(ds.queries)}
        res = evaluate_run(run, ds.qrels, ["ndcg@10", "recall@100"]).metrics
        c0 = time.process_time()
        lat = _latency(lambda i, vi=vi: vi.search(q[i : i + 1], k), len(q), repeat=args.repeat)
        lat["cpu_mean_ms"] = 1000 * (time.process_time() - c0) / (len(q) * args.repeat + min(len(q), 10))
        if itype == "binary":
            size = faiss.serialize_index_binary(vi.index).nbytes
        else:
            size = faiss.serialize_index(vi.index).nbytes
        data[itype] = {
            "params": vi.params,
            "recall@10_vs_exact": recall,
            **res,
            "build_s": build_s,
            "index_bytes": int(size),
            **lat,
        }
        rows.append(
            [
                itype,
                json.dumps(vi.params),
                round(recall, 4),
                round(res["ndcg@10"], 4),
                round(res["recall@100"], 4),
                f"{lat['mean_ms']:.3f}",
                f"{lat['cpu_mean_ms']:.3f}",
                f"{size / 2**20:.2f}",
            ]
        )
        print(f"{itype}: done", file=sys.stderr)
    idx.close()
    _table(
        [
            "index",
            "params",
            "recall@10 vs exact",
            "nDCG@10",
            "recall@100",
            "ms/query (k=10)",
            "CPU ms/query",
            "MiB",
        ],
        rows,
    )
    _save(Path(args.out), "index_types", data)


# ------------------------------------------------------------------------------------------- fusion tuning


def _candidates(idx: SearchIndex, ds: BeirDataset, q: np.ndarray, depth: int) -> list[list[Candidate]]:
    """Per query: the union of the dense and lexical top-``depth`` lists, each with both scores."""
    d_scores, d_iids = idx.dense(q, depth)
    out = []
    for n, text in enumerate(ds.queries.values()):
        cands: dict[int, Candidate] = {}
        for r, (s, i) in enumerate(zip(d_scores[n], d_iids[n], strict=True), 1):
            cands[int(i)] = Candidate(int(i), dense=float(s), dense_rank=r)
        all_iids, all_scores = idx.lexical(text)
        ls, li = top_k(all_iids, all_scores, depth)
        for r, (s, i) in enumerate(zip(ls, li, strict=True), 1):
            c = cands.setdefault(int(i), Candidate(int(i)))
            c.lexical, c.lexical_rank = float(s), r
        missing = [c for c in cands.values() if c.dense is None]
        if missing:
            cos = idx.exact_scores(q[n : n + 1], np.array([[c.iid for c in missing]]))[0]
            for c, s in zip(missing, cos, strict=True):
                c.dense = float(s)
        found = dict(zip(all_iids.tolist(), all_scores.tolist(), strict=True))
        for c in cands.values():
            if c.lexical is None:
                c.lexical = found.get(c.iid, 0.0)
        out.append(list(cands.values()))
    return out


def _at_depth(cands: list[Candidate], depth: int) -> list[Candidate]:
    out = []
    for c in cands:
        dr = c.dense_rank if c.dense_rank is not None and c.dense_rank <= depth else None
        lr = c.lexical_rank if c.lexical_rank is not None and c.lexical_rank <= depth else None
        if dr or lr:
            out.append(Candidate(c.iid, c.dense, c.lexical, dr, lr))
    return out


def _score(ds: BeirDataset, qids: list[str], ranked: list[list[int]], ext: dict[int, str]) -> dict[str, float]:
    run = {qid: [ext[i] for i in r] for qid, r in zip(qids, ranked, strict=True)}
    return evaluate_run(run, ds.qrels, ["ndcg@10", "recall@100", "mrr@10"]).metrics


def cmd_tune_fusion(args: argparse.Namespace) -> None:
    root = _index(args, "scifact", build=False)
    idx = SearchIndex.load(root)
    ds = load_beir(Path(args.data) / "scifact", args.split)
    q = _query_vectors(args, idx, ds)
    ext = _ext_ids(idx)
    qids = list(ds.queries)
    depths = [20, 50, 100, 200]
    t0 = time.perf_counter()
    cands = _candidates(idx, ds, q, max(depths))
    print(f"candidates for {len(qids)} {args.split} queries in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    results: list[dict[str, Any]] = []
    dense_only = [[c.iid for c in sorted(cs, key=lambda c: c.dense_rank or 10**9)][:100] for cs in cands]
    lex_only = [
        [c.iid for c in sorted(cs, key=lambda c: c.lexical_rank or 10**9) if c.lexical_rank][:100] for cs in cands
    ]
    baselines = {"dense": _score(ds, qids, dense_only, ext), "lexical": _score(ds, qids, lex_only, ext)}
    grid: list[HybridParams] = []
    for depth in depths:
        for rrf_k, w in itertools.product((1, 5, 10, 20, 40, 60, 100), (0.3, 0.4, 0.5, 0.6, 0.7)):
            grid.append(HybridParams("rrf", rrf_k=rrf_k, depth=depth, weight=w))
        for method, w in itertools.product(("minmax", "zscore"), np.round(np.arange(0.1, 0.95, 0.1), 2)):
            grid.append(HybridParams(method, depth=depth, weight=float(w)))  # type: ignore[arg-type]
    for p in grid:
        ranked = [[c.iid for c in fuse_candidates(_at_depth(cs, p.depth), p)[:100]] for cs in cands]
        results.append({"params": asdict(p), **_score(ds, qids, ranked, ext)})
    results.sort(key=lambda r: -r["ndcg@10"])
    best = results[0]
    by_method = {m: next(r for r in results if r["params"]["method"] == m) for m in ("rrf", "minmax", "zscore")}
    rrf_default = next(r for r in results if r["params"] == asdict(HybridParams("rrf", 60, 100, 0.5)))
    print(
        f"\nSciFact {args.split} ({len(qids)} queries): dense nDCG@10 {baselines['dense']['ndcg@10']:.4f}, "
        f"lexical {baselines['lexical']['ndcg@10']:.4f}\n"
    )
    _table(
        ["config", "method", "depth", "rrf_k", "w (dense)", "nDCG@10", "recall@100", "MRR@10"],
        [
            [
                name,
                r["params"]["method"],
                r["params"]["depth"],
                r["params"]["rrf_k"],
                r["params"]["weight"],
                r["ndcg@10"],
                r["recall@100"],
                r["mrr@10"],
            ]
            for name, r in [
                ("best overall", best),
                *[(f"best {m}", r) for m, r in by_method.items()],
                ("classic RRF (k=60, depth 100, w=0.5)", rrf_default),
            ]
        ],
    )
    # check: search() itself, with the best parameters, reproduces the simulated figure
    check = evaluate_retrieval(idx, ds, _FixedEncoder(q), "hybrid", 100, HybridParams(**best["params"]))  # type: ignore[arg-type]
    print(
        f"\ncheck: search(mode='hybrid', {best['params']}) on {args.split}: "
        f"nDCG@10 {check.result.metrics['ndcg@10']:.4f} (grid: {best['ndcg@10']:.4f})"
    )
    idx.close()
    _save(Path(args.out), f"fusion_{args.split}", {"baselines": baselines, "grid": results})


# ------------------------------------------------------------------------------------------- modes


class _FixedEncoder:
    """Hands precomputed query vectors to evaluate_retrieval (the cached ones)."""

    def __init__(self, vecs: np.ndarray) -> None:
        self.vecs = vecs

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        assert len(texts) == len(self.vecs)
        return self.vecs


def cmd_modes(args: argparse.Namespace) -> None:
    hybrid = DEFAULT_HYBRID
    rows, data = [], {}
    for dataset in ("scifact", "dl19"):
        root = _index(args, dataset, build=False)
        idx = SearchIndex.load(root)
        ds = load_beir(Path(args.data) / DATASETS[dataset], "test")
        q = _query_vectors(args, idx, ds)
        enc = _FixedEncoder(q)
        for mode in ("dense", "lexical", "hybrid"):
            rep = evaluate_retrieval(idx, ds, enc, mode, 100, hybrid)  # type: ignore[arg-type]
            m = rep.result.metrics
            data[f"{dataset}/{mode}"] = rep.to_dict()
            rows.append(
                [
                    dataset,
                    mode,
                    rep.result.queries,
                    m["ndcg@10"],
                    m["recall@10"],
                    m["recall@100"],
                    m["mrr@10"],
                ]
            )
        if dataset == "scifact":
            data["scifact/latency"] = _mode_latencies(idx, list(ds.queries.values()), q, args.repeat)
        idx.close()
    _table(["dataset", "mode", "queries", "nDCG@10", "recall@10", "recall@100", "MRR@10"], rows)
    lat = data["scifact/latency"]
    print()
    _table(
        ["SciFact test, k=10, one query per call", "mean ms", "p50 ms", "p95 ms", "CPU ms (process)"],
        [
            [
                name,
                f"{v['mean_ms']:.2f}",
                f"{v['p50_ms']:.2f}",
                f"{v['p95_ms']:.2f}",
                f"{v['cpu_mean_ms']:.2f}",
            ]
            for name, v in lat.items()
        ],
    )
    data["hybrid_params"] = asdict(hybrid)
    _save(Path(args.out), "modes", data)


def _mode_latencies(idx: SearchIndex, texts: list[str], q: np.ndarray, repeat: int) -> dict[str, dict[str, float]]:
    """Per-call latency of search() (k=10, one query per call), modes interleaved query by query so
    that background load hits all modes alike; plus encoding one query (the same for every mode)."""
    modes = ("dense", "lexical", "hybrid")
    times: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    for i in range(min(10, len(texts))):  # warm-up
        for mode in modes:
            search(idx, [texts[i]], q[i : i + 1], 10, mode)  # type: ignore[arg-type]
    for _ in range(repeat):
        for i in range(len(texts)):
            for mode in modes:
                t0, c0 = time.perf_counter(), time.process_time()
                search(idx, [texts[i]], q[i : i + 1], 10, mode)  # type: ignore[arg-type]
                times[mode].append(1000 * (time.perf_counter() - t0))
                cpu[mode].append(1000 * (time.process_time() - c0))
    out = {m: {**_stats(t), "cpu_mean_ms": float(np.mean(cpu[m]))} for m, t in times.items()}
    enc = _encoder(idx)
    enc.encode(texts[:10])
    enc_times, enc_cpu = [], []
    for text in texts[:100]:
        t0, c0 = time.perf_counter(), time.process_time()
        enc.encode([text])
        enc_times.append(1000 * (time.perf_counter() - t0))
        enc_cpu.append(1000 * (time.process_time() - c0))
    out["encode one query"] = {**_stats(enc_times), "cpu_mean_ms": float(np.mean(enc_cpu))}
    return out


def _stats(times: list[float]) -> dict[str, float]:
    arr = np.array(times)
    return {
        "mean_ms": float(arr.mean()),
        "p50_ms": float(np.percentile(arr, 50)),
        "p95_ms": float(np.percentile(arr, 95)),
    }


# ------------------------------------------------------------------------------------------- plot


def cmd_plot(args: argparse.Namespace) -> None:
    from _plot import pyplot, save_figure

    plt = pyplot()
    out = Path(args.out)
    fusion = json.loads((out / "fusion_train.json").read_text())
    types = json.loads((out / "index_types.json").read_text())
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for method, style in (("rrf", "o-"), ("minmax", "s-"), ("zscore", "^-")):
        pts = sorted(
            (r["params"]["weight"], r["ndcg@10"])
            for r in fusion["grid"]
            if r["params"]["method"] == method
            and r["params"]["depth"] == 100
            and (method != "rrf" or r["params"]["rrf_k"] == 60)
        )
        a.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            style,
            label=f"{method}" + (" (k=60)" if method == "rrf" else ""),
        )
    a.axhline(fusion["baselines"]["dense"]["ndcg@10"], color="gray", ls="--", label="dense only")
    a.axhline(fusion["baselines"]["lexical"]["ndcg@10"], color="gray", ls=":", label="lexical (BM25) only")
    a.set_xlabel("dense weight w (depth 100)")
    a.set_ylabel("nDCG@10, SciFact train (809 queries)")
    a.set_title("Hybrid fusion tuning (train split)")
    a.legend(fontsize=8)
    offsets = {"hnsw": (4, -12), "hnsw-sq8": (4, 6), "flat": (4, -12), "binary": (4, 6)}
    for name, r in types.items():
        b.scatter(r["cpu_mean_ms"], r["recall@10_vs_exact"])
        b.annotate(
            name,
            (r["cpu_mean_ms"], r["recall@10_vs_exact"]),
            textcoords="offset points",
            xytext=offsets.get(name, (4, 4)),
        )
    b.set_xlabel("CPU ms per query (k=10, one query per call, 1 thread)")
    b.set_ylabel("recall@10 vs exact search")
    b.set_title("Index types on SciFact (5,183 docs)")
    target = save_figure(fig, Path(args.png), dpi=110)
    print(f"wrote {target}")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="shared data folder")
    parser.add_argument("--cache", default="/tmp/semsearch_quality", help="indexes and query vectors")
    parser.add_argument("--out", default="/tmp/semsearch_quality/results", help="JSON results")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="FAISS/torch threads (default 1: a query per core, as a busy service runs; 0: library default)",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("sts").set_defaults(fn=cmd_sts)
    sub.add_parser("build").set_defaults(fn=cmd_build)
    types = sub.add_parser("index-types")
    types.add_argument("--repeat", type=int, default=1, help="latency passes over the 300 queries")
    types.set_defaults(fn=cmd_index_types)
    tune = sub.add_parser("tune-fusion")
    tune.add_argument("--split", default="train", choices=["train"], help="tuning uses the train queries only")
    tune.set_defaults(fn=cmd_tune_fusion)
    modes = sub.add_parser("modes")
    modes.add_argument("--repeat", type=int, default=3, help="latency passes over the 300 queries")
    modes.set_defaults(fn=cmd_modes)
    plot = sub.add_parser("plot")
    plot.add_argument("--png", default=str(REPO / "docs" / "quality.png"))
    plot.set_defaults(fn=cmd_plot)
    args = parser.parse_args()
    if args.threads:
        import faiss
        import torch

        faiss.omp_set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    args.fn(args)


if __name__ == "__main__":
    main()
