"""Recall@10 vs exact, single-query latency and memory per FAISS index type at 100K and 1M vectors.

Vectors: real all-MiniLM-L6-v2 embeddings of about 30K real texts (STS-B train/dev/test sentences,
the 12K WordNet glosses, the 5,183 SciFact titles), encoded once with ``--backend`` and cached under
``--cache``; 500 of them are held out as the queries. The corpus of size N is the rest plus
synthetic **perturbed copies** ``normalize(x_i + 0.3·x_j + ε)`` (random real i, j; ε Gaussian with norm
≈ 0.5), so its neighbourhoods look like a real embedding cloud, not like uniform noise. N = 100K
and 1M are therefore mostly synthetic; that is stated in every results file.

Each index goes through ``semsearch.index.ann.VectorIndex`` (the service's code path: FAISS +
rescoring with the exact memory-mapped vectors). Per setting (ef_search / nprobe / rescore):

* recall@10: share of the exact top-10 (brute force) found, over the 500 queries;
* latency: one query per call, p50/p99 over ``--latency-queries`` calls, with FAISS OpenMP at 1
  thread (``--omp`` to change; the service searches one small batch at a time);
* memory: bytes of the FAISS file (what has to be resident) and the RSS delta of loading it and
  answering the queries (touched pages of the memory-mapped exact vectors included).

    python bench/bench_search.py --sizes 100000               # ~3 min on 2 cores
    python bench/bench_search.py --sizes 1000000 --types flat hnsw-sq8 binary pq
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c
from _plot import pyplot, save_figure

DIM = 384
N_QUERIES = 500
# What each type sweeps at search time (no rebuild needed).
SWEEPS: dict[str, list[dict[str, int]]] = {
    "flat": [{}],
    "hnsw": [{"ef_search": e} for e in (16, 32, 64, 128)],
    "hnsw-sq8": [{"ef_search": e, "rescore": r} for e in (16, 32, 64, 128, 256) for r in (2, 4)],
    "ivf": [{"nprobe": p} for p in (8, 16, 32, 64)],
    "sq8": [{"rescore": r} for r in (2, 4)],
    "pq": [{"nprobe": p, "rescore": r} for p in (16, 32, 64) for r in (8, 16)],
    "binary": [{"rescore": r} for r in (10, 20, 40)],
}


def base_embeddings(cache: Path, backend: str) -> np.ndarray:
    path = cache / f"base_{backend}.npy"
    if path.is_file():
        return np.load(path)
    from semsearch.models import Encoder

    texts = list(dict.fromkeys(c.stsb_sentences() + c.wordnet_glosses()))
    import gzip
    import json

    with gzip.open(c.SCIFACT / "corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
        titles = [json.loads(line).get("title") or "" for line in fh]
    texts = list(dict.fromkeys(texts + [t for t in titles if t]))
    print(f"encoding {len(texts)} real texts with {backend} (cached in {path})...", flush=True)
    started = time.perf_counter()
    vecs = Encoder(backend=backend).encode(texts, batch_size=64, progress=True)  # type: ignore[arg-type]
    print(f"  {time.perf_counter() - started:.0f}s", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, vecs)
    return vecs


def make_corpus(base: np.ndarray, n: int, path: Path, seed: int = 0) -> np.memmap:
    """First rows: the real vectors; the rest: perturbed mixtures of two real vectors, unit length."""
    if path.is_file():
        mm = np.load(path, mmap_mode="r")
        if mm.shape == (n, DIM):
            return mm  # type: ignore[return-value]
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, DIM))
    nb = len(base)
    out[: min(n, nb)] = base[: min(n, nb)]
    block = 100_000
    for start in range(nb, n, block):
        m = min(block, n - start)
        i = rng.integers(nb, size=m)
        j = rng.integers(nb, size=m)
        x = base[i] + 0.3 * base[j] + rng.standard_normal((m, DIM), dtype=np.float32) * (0.5 / np.sqrt(DIM))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start : start + m] = x
    out.flush()
    del out
    tmp.rename(path)
    return np.load(path, mmap_mode="r")  # type: ignore[return-value]


def exact_top(
    corpus: np.ndarray, queries: np.ndarray, k: int = 100, block: int = 200_000
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` ids and scores per query, best first (brute force in blocks)."""
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), k), dtype=np.int64)
    for start in range(0, len(corpus), block):
        s = queries @ np.asarray(corpus[start : start + block]).T
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], axis=1)
        cand_i = np.concatenate([best_i, top + start], axis=1)
        order = np.argsort(-cand_s, axis=1)[:, :k]
        best_s = np.take_along_axis(cand_s, order, 1)
        best_i = np.take_along_axis(cand_i, order, 1)
    return best_i, best_s


def neighbourhood(scores: np.ndarray) -> dict[str, float]:
    """How flat the exact neighbourhood is: median cosine of the 1st, 10th and 100th neighbour, and the
    median gap between the 10th and the 100th (a small gap: many near-ties for the last places of the
    top 10, which approximate scoring cannot order)."""
    med = {f"s{r}": float(np.median(scores[:, r - 1])) for r in (1, 10, 100)}
    med["gap_10_100"] = float(np.median(scores[:, 9] - scores[:, 99]))
    return {k: round(v, 4) for k, v in med.items()}


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def run_type(
    index_type: str,
    corpus: np.ndarray,
    queries: np.ndarray,
    truth: np.ndarray,
    args: argparse.Namespace,
    work: Path,
) -> list[dict[str, Any]]:
    import faiss

    from semsearch.index import INDEX_FILE, VectorIndex, resolve_params

    n = len(corpus)
    ids = np.arange(n, dtype=np.int64)
    faiss.omp_set_num_threads(args.build_threads)
    started = time.perf_counter()
    vi = VectorIndex.build(corpus, ids, index_type)
    build_s = time.perf_counter() - started
    folder = work / f"{index_type}-{n}"
    folder.mkdir(parents=True, exist_ok=True)
    if index_type == "binary":
        faiss.write_index_binary(vi.index, str(folder / INDEX_FILE))
    else:
        faiss.write_index(vi.index, str(folder / INDEX_FILE))
    file_bytes = (folder / INDEX_FILE).stat().st_size
    params = dict(vi.params)
    del vi
    gc.collect()
    # Fresh load, as the service does: FAISS file (mmap where supported) + memory-mapped exact vectors.
    rss0 = c.rss_bytes()
    vectors = np.load(args.corpus_path, mmap_mode="r")
    reader = faiss.read_index_binary if index_type == "binary" else faiss.read_index
    index = reader(str(folder / INDEX_FILE))
    vi = VectorIndex(index, index_type, params, vectors, ids)
    rows = []
    defaults = resolve_params(index_type, n, DIM)
    for setting in SWEEPS[index_type]:
        vi.params = {**params, **setting}
        vi.apply_search_params()
        faiss.omp_set_num_threads(args.build_threads)
        _, found = vi.search(queries, 10)
        rec = recall(found, truth)
        faiss.omp_set_num_threads(args.omp)
        lat = []
        for q in queries[: args.latency_queries]:
            t0 = time.perf_counter()
            vi.search(q[None, :], 10)
            lat.append(time.perf_counter() - t0)
        ms = np.asarray(lat) * 1000
        is_default = all(defaults.get(k) == v for k, v in setting.items())
        row = {
            "n": n,
            "index_type": index_type,
            "setting": ", ".join(f"{k}={v}" for k, v in setting.items()) or "-",
            "default": is_default,
            "recall@10": round(rec, 4),
            "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "index_file_mb": round(file_bytes / 1e6, 1),
            "build_s": round(build_s, 1),
            "params": {**params, **setting},
        }
        rows.append(row)
        print(
            f"  {n:>8} {index_type:>9} {row['setting']:<22} recall {rec:.4f}  p50 {row['p50_ms']:7.3f} ms  "
            f"p99 {row['p99_ms']:7.3f} ms  file {row['index_file_mb']:8.1f} MB  build {build_s:6.1f}s"
            f"{'  (default)' if is_default else ''}  load {c.loadavg()[0]}",
            flush=True,
        )
    rss_mb = round((c.rss_bytes() - rss0) / 1e6, 1)
    for row in rows:
        row["rss_delta_mb"] = rss_mb
    del vi, index, vectors
    gc.collect()
    (folder / INDEX_FILE).unlink()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--types", nargs="+", default=list(SWEEPS), choices=list(SWEEPS))
    parser.add_argument("--backend", default="onnx-int8", help="backend that encodes the real base texts")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/semsearch-bench-search"))
    parser.add_argument("--latency-queries", type=int, default=200)
    parser.add_argument("--omp", type=int, default=1, help="FAISS OpenMP threads for the latency loop")
    parser.add_argument("--build-threads", type=int, default=2)
    parser.add_argument("--name", default="bench_search", help="results file name (without .json)")
    parser.add_argument("--out", type=Path, default=c.RESULTS)
    parser.add_argument(
        "--sweep",
        type=json.loads,
        default={},
        help='replace a type\'s search settings, e.g. \'{"pq": [{"nprobe": 16, "rescore": 64}]}\'',
    )
    args = parser.parse_args()
    for index_type, settings in args.sweep.items():
        SWEEPS[index_type] = settings

    info = c.machine()
    print(f"{info['cpu']}, {info['usable_cores']} cores, load {info['loadavg_at_start']}", flush=True)
    real = base_embeddings(args.cache, args.backend)
    rng = np.random.default_rng(42)
    perm = rng.permutation(len(real))
    queries = np.ascontiguousarray(real[perm[:N_QUERIES]])
    base = np.ascontiguousarray(real[perm[N_QUERIES:]])
    all_rows: list[dict[str, Any]] = []
    neighbourhoods: dict[int, dict[str, float]] = {}
    for n in args.sizes:
        args.corpus_path = args.cache / f"corpus_{n}.npy"
        corpus = make_corpus(base, n, args.corpus_path)
        started = time.perf_counter()
        top_ids, top_scores = exact_top(corpus, queries)
        truth = top_ids[:, :10]
        flat = neighbourhoods[n] = neighbourhood(top_scores)
        print(
            f"N={n}: {len(base)} real + {max(0, n - len(base))} perturbed copies; exact top-100 in "
            f"{time.perf_counter() - started:.1f}s; median cosine of neighbour 1/10/100: {flat['s1']}/"
            f"{flat['s10']}/{flat['s100']} (10th - 100th: {flat['gap_10_100']})",
            flush=True,
        )
        for index_type in args.types:
            all_rows += run_type(index_type, corpus, queries, truth, args, args.cache)
        del corpus
    headers = [
        "N",
        "index",
        "setting",
        "recall@10",
        "p50 ms",
        "p99 ms",
        "FAISS file MB",
        "RSS Δ MB",
        "build s",
    ]
    table = c.markdown_table(
        headers,
        [
            [
                f"{r['n']:,}",
                r["index_type"],
                r["setting"] + (" **(default)**" if r["default"] else ""),
                f"{r['recall@10']:.3f}",
                f"{r['p50_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                r["index_file_mb"],
                r["rss_delta_mb"],
                r["build_s"],
            ]
            for r in all_rows
        ],
    )
    print()
    print(table)
    result = {
        "machine": info,
        "data": {
            "real_vectors": len(real),
            "queries": f"{N_QUERIES} held-out real embeddings",
            "corpus": "real embeddings (STS-B sentences, WordNet glosses, SciFact titles; encoder backend "
            f"{args.backend}) + perturbed copies normalize(x_i + 0.3 x_j + eps), |eps|~0.5",
        },
        "settings": {
            "omp_latency_threads": args.omp,
            "build_threads": args.build_threads,
            "latency_queries": args.latency_queries,
        },
        "exact_neighbourhood": neighbourhoods,
        "rows": all_rows,
        "table": table,
    }
    path = c.save(args.name, result, args.out)
    plot(all_rows, args.out / f"{args.name}.png", f"{info['cpu']}, {info['usable_cores']} cores, 1 OMP thread")
    print(f"saved {path} and {args.out / (args.name + '.png')}")
    return 0


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    plt = pyplot()
    sizes = sorted({r["n"] for r in rows})
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4.2), squeeze=False)
    for ax, n in zip(axes[0], sizes, strict=True):
        for i, t in enumerate(dict.fromkeys(r["index_type"] for r in rows if r["n"] == n)):
            pts = [r for r in rows if r["n"] == n and r["index_type"] == t]
            ax.plot([r["p50_ms"] for r in pts], [r["recall@10"] for r in pts], marker="o", color=f"C{i}", label=t)
        ax.axhline(0.95, color="grey", linestyle=":", linewidth=1)
        ax.axvline(2.0, color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("p50 latency per query (ms, log)")
        ax.set_ylabel("recall@10 vs exact")
        ax.set_title(f"N = {n:,}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
