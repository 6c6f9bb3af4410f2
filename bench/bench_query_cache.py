"""The query-embedding cache under a Zipf query log: hit rate, latency and queries/s, cache on vs off.

A log of ``--log`` queries (default 20,000) drawn with Zipf-distributed repeats (s = 1.0) over
``--distinct`` (5,000) distinct WordNet glosses is replayed, in log order, by closed-loop clients at
c=1 and c=8 against a real server (``python -m app``) with the cache on (the default,
``SEMSEARCH_QUERY_CACHE=10000``) and off (``0``); each (setting, concurrency) gets a fresh server, so
each starts cold, and runs ``--duration`` seconds (queries beyond the log wrap around). The hit rate is
read from /metrics; the whole log's hit rate (every repeat a hit: the cache holds all distinct
queries) is computed exactly. Prints a table and saves JSON under ``bench/results/``.

    python bench/bench_query_cache.py --index /tmp/idx --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c
from http_bench import Server, drive


def zipf_log(n_distinct: int, n: int, s: float = 1.0, seed: int = 0) -> tuple[list[str], list[int]]:
    glosses = list(dict.fromkeys(c.wordnet_glosses()))
    rng = np.random.default_rng(seed)
    distinct = [glosses[i] for i in rng.permutation(len(glosses))[:n_distinct]]
    p = 1.0 / np.arange(1, n_distinct + 1) ** s
    ranks = rng.choice(n_distinct, size=n, p=p / p.sum())
    return [distinct[r] for r in ranks], ranks.tolist()


def cache_counts(url: str) -> tuple[float, float]:
    text = httpx.get(url + "/metrics").text

    def get(name: str) -> float:
        m = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        return float(m.group(1)) if m else 0.0

    return get("semsearch_query_cache_hits_total"), get("semsearch_query_cache_misses_total")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, required=True)
    ap.add_argument("--log", type=int, default=20_000)
    ap.add_argument("--distinct", type=int, default=5_000)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    args = ap.parse_args()
    log, ranks = zipf_log(args.distinct, args.log)
    whole_log_hit_rate = 1.0 - len(set(ranks)) / len(ranks)
    rows, levels = [], []
    load_before = c.loadavg()
    for setting, env in (("cache on", {}), ("cache off", {"SEMSEARCH_QUERY_CACHE": "0"})):
        for conc in args.concurrency:
            server = Server(args.index, env)
            try:
                httpx.post(server.url + "/search", json={"query": "warm-up query", "k": 10}, timeout=60)
                h0, m0 = cache_counts(server.url)
                lat, errors = asyncio.run(drive(server.url, log, conc, args.duration, 10))
                h1, m1 = cache_counts(server.url)
            finally:
                server.stop()
            lat_ms = np.array(lat) * 1000
            hit = (h1 - h0) / max(1.0, (h1 - h0) + (m1 - m0)) if setting == "cache on" else None
            level = {
                "setting": setting,
                "concurrency": conc,
                "requests": len(lat),
                "errors": errors,
                "qps": len(lat) / args.duration,
                "p50_ms": float(np.percentile(lat_ms, 50)),
                "p99_ms": float(np.percentile(lat_ms, 99)),
                "mean_ms": float(lat_ms.mean()),
                "hit_rate": hit,
            }
            levels.append(level)
            rows.append(
                [
                    setting,
                    conc,
                    len(lat),
                    f"{level['qps']:.0f}",
                    f"{level['p50_ms']:.2f}",
                    f"{level['p99_ms']:.2f}",
                    "-" if hit is None else f"{hit:.1%}",
                ]
            )
            print(rows[-1], flush=True)
    table = c.markdown_table(["setting", "c", "requests", "q/s", "p50 ms", "p99 ms", "hit rate (this run)"], rows)
    print(table)
    print(
        f"whole log: {len(ranks)} queries over {args.distinct} distinct, {len(set(ranks))} seen; "
        f"hit rate with every distinct query cached: {whole_log_hit_rate:.1%}"
    )
    c.save(
        "query_cache",
        {
            "levels": levels,
            "whole_log_hit_rate": whole_log_hit_rate,
            "log": args.log,
            "distinct": args.distinct,
            "duration_s": args.duration,
            "loadavg_before": load_before,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
