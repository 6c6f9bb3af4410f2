"""What an update costs: segments + tombstones (this tree) against the full-rebuild path (a baseline commit).

For each corpus size and index type, both formats go through their own real pipelines
(``bench/_update_runner.py`` run with the tree's code or with a git worktree of ``--baseline``):

* **build** the index (vectors precomputed: ``bench_search.py``'s real-embedding corpus, looked up
  instead of encoded, so 1M rows take minutes, not hours);
* **delete** one id, **add** 1,000 new rows (real model: load + encode included) and, for the
  target "add <= model load + encode + 2 s", the floor measured on its own (load + encode only);
  bytes written per operation (growth of the index directory);
* **reload**: the real service (``python -m app``, reload poll 0.05 s) on the index; after a
  ``delete`` publishes, the time until ``/info`` serves the new version, and the server's RSS peak
  during the swap against its RSS before;
* **segments** (this tree only): recall@10 vs exact and single-query p50 with the index written as
  1, 4 and 16 segments, and after ``compact`` of the 16-segment one.

    python bench/bench_updates.py --sizes 100000 --types flat hnsw-sq8           # ~15 min on 2 cores
    python bench/bench_updates.py --sizes 1000000 --types flat hnsw-sq8 --skip-reload
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c
import bench_search as bs

RUNNER = Path(__file__).resolve().parent / "_update_runner.py"
ADD_ROWS = 1000


def baseline_tree(ref: str, where: Path) -> Path:
    """A detached worktree of ``ref`` (the full-rebuild code), created once."""
    if not (where / "indexer" / "pipeline.py").is_file():
        subprocess.run(["git", "worktree", "add", "--detach", "--force", str(where), ref], cwd=c.REPO, check=True)
    return where


def run(code: Path, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(RUNNER), *args, "--code", str(code)],
        cwd=code,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(code)},
    )
    if out.returncode:
        raise RuntimeError(f"{args[0]} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def write_inputs(n: int, cache: Path) -> tuple[Path, Path]:
    glosses = c.wordnet_glosses()
    corpus = cache / f"rows_{n}.jsonl"
    if not corpus.is_file():
        with corpus.open("w", encoding="utf-8") as fh:
            for i in range(n):
                fh.write(json.dumps({"id": i, "text": f"{glosses[i % len(glosses)]} #{i}"}) + "\n")
    extra = cache / f"add_{n}.jsonl"
    with extra.open("w", encoding="utf-8") as fh:
        for j in range(ADD_ROWS):
            fh.write(json.dumps({"id": n + j, "text": glosses[(7 * j + 3) % len(glosses)]}) + "\n")
    return corpus, extra


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def reload_probe(code: Path, index: Path, delete_id: str, port: int) -> dict[str, Any]:
    """Serve ``index`` with the code's service, publish a delete, time until the new version is served."""
    import httpx

    env = {**os.environ, "PYTHONPATH": str(code), "SEMSEARCH_RELOAD_POLL_S": "0.05"}
    cmd = [sys.executable, "-m", "app", "--index", str(index), "--port", str(port), "--threads", "1"]
    proc = subprocess.Popen(cmd, cwd=code, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        for _ in range(20):  # touch the index like traffic would
            httpx.post(url + "/search", json={"query": "a large wild cat", "k": 10}, timeout=30)
        before = httpx.get(url + "/info", timeout=10).json()["index_version"]
        rss_before = rss_kb(proc.pid)
        peak = [rss_before]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], rss_kb(proc.pid))
                time.sleep(0.005)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        run(code, "delete", "--index", str(index), "--ids", delete_id)
        published = time.perf_counter()
        while httpx.get(url + "/info", timeout=10).json()["index_version"] == before:
            time.sleep(0.01)
        served_after = time.perf_counter() - published
        time.sleep(0.5)
        stop.set()
        sampler.join()
        return {
            "reload_s": round(served_after, 3),
            "rss_before_mb": round(rss_before / 1024, 1),
            "rss_peak_mb": round(peak[0] / 1024, 1),
            "rss_growth_mb": round((peak[0] - rss_before) / 1024, 1),
        }
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def segment_latency(
    corpus: np.ndarray, queries: np.ndarray, truth: np.ndarray, index_type: str, work: Path, n_queries: int
) -> list[dict[str, Any]]:
    """Recall@10 and p50/p99 with the index written as 1, 4 and 16 segments, and after compaction."""
    import faiss

    from indexer.pipeline import run_compact
    from semsearch.index import IndexRoot, IndexWriter, Record
    from semsearch.search import SearchIndex

    faiss.omp_set_num_threads(1)
    meta = {"model": "bench", "fingerprint": "0", "pooling": "mean", "backend": "torch", "max_seq_length": 0}
    meta["dimension"] = corpus.shape[1]
    n = len(corpus)
    rows: list[dict[str, Any]] = []
    for segments in (1, 4, 16):
        root = work / f"seg{segments}-{index_type}"
        shutil.rmtree(root, ignore_errors=True)
        ir = IndexRoot(root)
        started = time.perf_counter()
        with ir.lock():
            writer = IndexWriter(
                ir, "build", meta, {"type": index_type, "params": {}}, segment_rows=math.ceil(n / segments)
            )
            step = min(65_536, math.ceil(n / segments))  # chunks no larger than a segment
            for start in range(0, n, step):
                stop = min(n, start + step)
                recs = [Record(text=f"row {i}", ext_id=i) for i in range(start, stop)]
                writer.add_chunk(recs, np.asarray(corpus[start:stop]), [], len(recs), "error")
            writer.commit({"kind": "bench"})
        build_s = time.perf_counter() - started
        for label in ("written", "compacted") if segments == 16 else ("written",):
            if label == "compacted":
                run_compact(root)
            idx = SearchIndex.load(root)
            try:
                _, iids = idx.dense(queries, 10)
                rec = bs.recall(iids, truth)  # ext id == row == iid here
                lat = []
                for q in queries[:n_queries]:
                    t0 = time.perf_counter()
                    idx.dense(q[None, :], 10)
                    lat.append(time.perf_counter() - t0)
                rows.append(
                    {
                        "type": index_type,
                        "segments": f"{segments} ({label})" if segments == 16 else str(segments),
                        "actual_segments": len(idx.segments),
                        "build_s": round(build_s, 1),
                        "recall@10": round(rec, 4),
                        "p50_ms": round(float(np.percentile(lat, 50)) * 1000, 3),
                        "p99_ms": round(float(np.percentile(lat, 99)) * 1000, 3),
                    }
                )
                print("  ", rows[-1], flush=True)
            finally:
                idx.close()
        shutil.rmtree(root, ignore_errors=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--types", nargs="+", default=["flat", "hnsw-sq8"])
    parser.add_argument("--baseline", default="3ffe48c", help="git ref of the full-rebuild format (format 1)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/semsearch-bench-search"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/semsearch-bench-updates"))
    parser.add_argument("--skip-reload", action="store_true")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--latency-queries", type=int, default=200)
    parser.add_argument("--name", default="bench_updates")
    args = parser.parse_args()
    info = c.machine()
    print(f"{info['cpu']}, {info['usable_cores']} cores, load {info['loadavg_at_start']}", flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    codes = {"segments": c.REPO}
    if not args.skip_baseline:
        codes[f"full rebuild ({args.baseline})"] = baseline_tree(args.baseline, args.work / "baseline-code")
    real = bs.base_embeddings(args.cache, "onnx-int8")
    perm = np.random.default_rng(42).permutation(len(real))
    queries = np.ascontiguousarray(real[perm[: bs.N_QUERIES]])
    base = np.ascontiguousarray(real[perm[bs.N_QUERIES :]])
    ops: list[dict[str, Any]] = []
    seg_rows: list[dict[str, Any]] = []
    port = 18_500
    for n in args.sizes:
        vec_path = args.cache / f"corpus_{n}.npy"
        corpus = bs.make_corpus(base, n, vec_path)
        rows_file, add_file = write_inputs(n, args.cache)
        floor = run(c.REPO, "encode", "--index", str(args.work), "--input", str(add_file))
        print(f"N={n}: add floor (model load + encode {ADD_ROWS} rows): {floor}", flush=True)
        for index_type in args.types:
            for label, code in codes.items():
                index = args.work / f"{label.split()[0]}-{n}-{index_type}"
                shutil.rmtree(index, ignore_errors=True)
                row: dict[str, Any] = {"N": n, "type": index_type, "format": label}
                build = run(code, "build", "--index", str(index), "--input", str(rows_file), "--index-type", index_type,
                            "--stub-vectors", str(vec_path))  # fmt: skip
                row["build_s"] = round(build["seconds"], 1)
                size = du(index)
                row["index_mb"] = round(size / 1e6, 1)
                t = run(code, "delete", "--index", str(index), "--ids", "5")
                row["delete_1_s"] = round(t["seconds"], 3)
                row["delete_written_mb"] = round((du(index) - size) / 1e6, 3)
                size = du(index)
                t = run(code, "add", "--index", str(index), "--input", str(add_file))
                row["add_1000_s"] = round(t["seconds"], 2)
                row["add_encode_s"] = round(t.get("encode_seconds", float("nan")), 2)
                row["add_floor_s"] = round(floor["model_load_s"] + floor["encode_s"], 2)
                row["add_written_mb"] = round((du(index) - size) / 1e6, 1)
                if not args.skip_reload:
                    port += 1
                    row.update(reload_probe(code, index, "6", port))
                ops.append(row)
                print("  ", row, flush=True)
                shutil.rmtree(index, ignore_errors=True)
        truth = bs.exact_top(corpus, queries)
        for index_type in args.types:
            seg_rows += [
                {"N": n, **r}
                for r in segment_latency(corpus, queries, truth, index_type, args.work, args.latency_queries)
            ]
    print()
    print(c.markdown_table(list(ops[0]), [list(r.values()) for r in ops]))
    print()
    print(c.markdown_table(list(seg_rows[0]), [list(r.values()) for r in seg_rows]))
    path = c.save(args.name, {"operations": ops, "segments": seg_rows, "add_floor": floor})
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
