"""Do unrelated queries wait while a new filter is evaluated for the first time? (issue 13, finding 4)

A 100,000-row index (random unit vectors, 32 metadata keys per row as in ``bench_filters.py``: every
filter field present, the worst case), the service's real micro-batcher (``app.batcher``) and the
real encoder. ``--clients`` clients send plain ``dense`` searches back to back; after a warm-up one
request arrives with the most expensive filter the bounds allow (8 fields, each an ``in`` list of
1,000 values), not cached yet. Printed: the plain queries' latency before the filter arrived and
while it was being evaluated, and the filtered request's own latency.

    python bench/bench_filter_wait.py --rows 100000               # the filter evaluated off the encoder thread
    python bench/bench_filter_wait.py --rows 100000 --on-worker   # as before: inside the micro-batch

``--on-worker`` skips the batcher's first evaluation on its filter thread, so the filter is matched
where it was before the fix: inside the job's micro-batch, on the encoder's worker thread. The index
is written once to ``--index-dir`` (reused when it exists).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import loadavg, machine, markdown_table, save

from app.batcher import MicroBatcher, SearchSpec
from app.metrics import Metrics
from app.services import IndexHolder
from indexer.pipeline import encoder_meta
from semsearch.index import IndexRoot, IndexWriter, Record
from semsearch.models import Encoder
from semsearch.search import SearchIndex, filters


def build(path: Path, rows: int, meta: dict) -> None:
    rng = np.random.default_rng(0)
    root = IndexRoot(path)
    with root.lock():
        writer = IndexWriter(root, "build", meta, {"type": "flat", "params": {}})
        for start in range(0, rows, 10_000):
            n = min(10_000, rows - start)
            recs = [
                Record(text=f"row {i}", ext_id=f"r{i}", metadata={f"f{j}": "a" for j in range(32)})
                for i in range(start, start + n)
            ]
            vecs = rng.standard_normal((n, meta["dimension"])).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            writer.add_chunk(recs, vecs, [], n, "error")
        writer.commit({"kind": "build"})


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)) * 1000, 1) if values else float("nan")


async def scenario(batcher: MicroBatcher, clients: int, warmup_s: float, after_s: float) -> dict:
    plain: list[tuple[float, float]] = []  # (start, seconds)
    stop = asyncio.Event()

    async def client(c: int) -> None:
        i = 0
        while not stop.is_set():
            t0 = time.perf_counter()
            await batcher.search([f"plain query {c} {i}"], SearchSpec(k=10))
            plain.append((t0, time.perf_counter() - t0))
            i += 1

    batcher.start()
    tasks = [asyncio.create_task(client(c)) for c in range(clients)]
    await asyncio.sleep(warmup_s)
    many = ["a", *(f"v{i}" for i in range(filters.MAX_IN_VALUES - 1))]
    expensive = {f"f{j}": {"in": many} for j in range(filters.MAX_FIELDS)}
    f0 = time.perf_counter()
    await batcher.search(["the filtered query"], SearchSpec(k=10, filter=expensive))
    f1 = time.perf_counter()
    await asyncio.sleep(after_s)
    stop.set()
    await asyncio.gather(*tasks)
    await batcher.stop()
    warm = [s for t, s in plain if t >= warmup_s / 2 + plain[0][0] and t + s < f0]
    during = [s for t, s in plain if t < f1 and t + s > f0]  # overlapped the filtered request
    return {"filter_s": f1 - f0, "before": warm, "during": during}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--index-dir", type=Path, default=Path(tempfile.gettempdir()) / "semsearch-filter-wait")
    ap.add_argument("--backend", default="onnx-int8")
    ap.add_argument("--warmup-s", type=float, default=4.0)
    ap.add_argument("--on-worker", action="store_true", help="evaluate the filter in the batch (the old way)")
    args = ap.parse_args()
    if args.on_worker:

        async def in_the_batch(self: MicroBatcher, compiled: object) -> None:
            return None

        MicroBatcher._match_filter = in_the_batch  # type: ignore[method-assign,assignment]
    encoder = Encoder(backend=args.backend)
    if not (args.index_dir / "current").exists():
        t0 = time.perf_counter()
        build(args.index_dir, args.rows, encoder_meta(encoder))
        print(f"built {args.rows} rows in {time.perf_counter() - t0:.1f} s at {args.index_dir}")
    index = SearchIndex.load(args.index_dir)
    load = loadavg()
    batcher = MicroBatcher(
        encoder, IndexHolder(index), Metrics(), window_s=0.002, max_batch=32, max_queue=256, retry_after_s=1
    )
    out = asyncio.run(scenario(batcher, args.clients, args.warmup_s, 1.0))
    index.close()
    rows = [
        ["plain, before the filter arrived", len(out["before"]), pct(out["before"], 50), pct(out["before"], 99),
         pct(out["before"], 100)],
        ["plain, while the filter was evaluated", len(out["during"]), pct(out["during"], 50), pct(out["during"], 99),
         pct(out["during"], 100)],
        ["the filtered request (8 fields x in 1,000)", 1, round(out["filter_s"] * 1000, 1), "", ""],
    ]  # fmt: skip
    off_thread = not args.on_worker
    print(
        f"{args.rows} rows, {args.clients} clients, backend {args.backend}, filter evaluated "
        f"{'off the encoder thread' if off_thread else 'on the encoder thread'}; load {load} -> {loadavg()}"
    )
    print(markdown_table(["requests", "n", "p50 ms", "p99 ms", "max ms"], rows))
    save(
        "filter_wait_" + ("after" if off_thread else "before"),
        {"rows": args.rows, "clients": args.clients, "table": rows, "machine": machine(), "load": load},
    )
    print(json.dumps({"filter_s": round(out["filter_s"], 3)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
