"""Where a lone query's time goes, in-process, component by component (issue #14's c=1 target).

With the service's own objects (``app.services.encoder_for`` and ``load_index`` on ``--index``, the
service's thread and arena settings), for ``--queries`` real 26-34-token queries one at a time:

* tokenise (``Encoder``'s tokenizer, one text);
* the ONNX forward pass (``OnnxModel.run`` on that one row);
* pooling + normalisation;
* the dense search (FAISS over every segment, tombstones applied, top k);
* joining the documents (SQLite rows of the k hits);
* ``Encoder.encode`` + ``semsearch.search.modes.search`` end to end (what the micro-batch worker runs).

Medians and p90 in ms. Compare with ``bench/bench_http_wrk.py``'s c=1 p50 on the same index: the
difference is HTTP, the event loop and the hop to the worker thread.

    python bench/bench_query_breakdown.py --index IDX
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c
import http_bench as hb

from app.services import encoder_for, set_threads
from app.settings import Settings
from semsearch.models import pool_and_normalize
from semsearch.search import SegmentPool, load_index, search


def timed(fn: Any) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t) * 1000, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", type=Path, required=True)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--name", default="bench_query_breakdown")
    args = ap.parse_args()
    settings = Settings(index=args.index, reload_poll_s=0)
    set_threads(settings.threads)
    encoder = encoder_for(settings)
    index = load_index(settings.index, encoder, SegmentPool())
    queries = hb.load_queries(args.queries)
    for q in queries[:20]:  # warm-up
        search(index, [q], encoder.encode([q]), args.k)
    parts: dict[str, list[float]] = {
        k: [] for k in ("tokenise", "forward", "pool", "dense search", "join documents", "end to end")
    }
    for q in queries:
        ms, tokens = timed(lambda q=q: encoder._tokens.encode([q]))
        parts["tokenise"].append(ms)
        features = tokens.batch(np.arange(1), len(tokens.ids[0]))
        ms, hidden = timed(lambda features=features: encoder._runner(features))  # the backend runner alone
        parts["forward"].append(ms)
        mask = features["attention_mask"]
        ms, vec = timed(lambda hidden=hidden, mask=mask: pool_and_normalize(hidden, mask, encoder.pooling))
        parts["pool"].append(ms)
        ms, (scores, iids) = timed(lambda vec=vec: index.dense(vec, args.k))
        parts["dense search"].append(ms)
        ms, _ = timed(lambda scores=scores, iids=iids: index.hits(scores, iids))
        parts["join documents"].append(ms)
        ms, _ = timed(lambda q=q: search(index, [q], encoder.encode([q]), args.k))
        parts["end to end"].append(ms)
    rows = [[name, f"{statistics.median(v):.2f}", f"{np.percentile(v, 90):.2f}"] for name, v in parts.items()]
    info = c.machine()
    print(f"{len(queries)} queries, k={args.k}, {index.count} sentences in {len(index.segments)} segment(s), "
          f"backend {encoder.backend}, {settings.threads} threads; load {c.loadavg()}")  # fmt: skip
    print(c.markdown_table(["component", "p50 ms", "p90 ms"], rows))
    c.save(args.name, {"index": str(args.index), "machine": info, "rows": rows,
                       "samples_ms": {k: v for k, v in parts.items()}})  # fmt: skip
    index.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
