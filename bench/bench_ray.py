"""Ray's cost and benefit here: build throughput local vs Ray, Serve ingress overhead, fan-out per shard.

On a local 2-node Ray cluster on the loopback interface (``ray.cluster_utils.Cluster``: head +
one node, 1 logical CPU each, on this machine's 2 cores), everything through the CLIs:

1. **build**: ``indexer build`` of the first ``--rows`` WordNet glosses, ``--engine local`` vs
   ``--engine ray`` with 1 and 2 encoder actors: wall time (start-up included) and the encoders'
   own rate (rows / summed encode seconds, from the manifest);
2. **ingress overhead**: sequential ``POST /search`` (dense, k=10) against the plain service and
   against the Ray Serve service over a 1-shard index: p50/p99 per query;
3. **fan-out**: the Ray Serve service over 1, 2 and 4 shards of the same rows.

On 2 cores Ray cannot be faster than one process; the point is what the distribution costs.

    python bench/bench_ray.py --rows 2000 --queries 60      # ~8 min on 2 cores
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # keep 127.0.0.1 (read when Ray is imported)
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
ENV = {**os.environ, "PYTHONPATH": str(c.REPO)}
QUERIES = [
    "a large wild cat",
    "a musical instrument with strings",
    "feeling of sadness",
    "body of water",
    "the act of running fast",
    "a tool for cutting wood",
]


def _cli(*args: str) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "indexer", *args], env=ENV, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"indexer {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    return time.perf_counter() - started, r


def _manifest(root: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((root / "current" / "manifest.json").read_text())
    return data


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _service(args: list[str]):
    import httpx

    port = _free_port()
    cmd = [sys.executable, "-m", "app", *args, "--port", str(port), "--threads", "1", "--no-access-log"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"service {' '.join(args)} exited with {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/ready", timeout=5).status_code == 200:
                    break
            if time.perf_counter() - started > 300:
                raise SystemExit("service did not become ready")
            time.sleep(0.5)
        yield url, time.perf_counter() - started
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


def _latency(url: str, n: int, mode: str = "dense") -> dict[str, float]:
    import httpx

    with httpx.Client(timeout=60) as client:
        for q in QUERIES:  # warm-up
            client.post(url + "/search", json={"query": q, "k": 10, "mode": mode}).raise_for_status()
        times = []
        for i in range(n):
            t = time.perf_counter()
            client.post(url + "/search", json={"query": QUERIES[i % len(QUERIES)], "k": 10, "mode": mode})
            times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return {
        "p50_ms": round(statistics.median(times), 2),
        "p99_ms": round(times[min(len(times) - 1, int(0.99 * len(times)))], 2),
        "qps_sequential": round(1000 / statistics.mean(times), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--queries", type=int, default=60, help="sequential queries per service")
    ap.add_argument("--backend", default="onnx-int8")
    ap.add_argument("--name", default="bench_ray")
    args = ap.parse_args()

    from ray.cluster_utils import Cluster

    load_before = c.loadavg()
    tmp = Path(tempfile.mkdtemp(prefix="bench_ray-"))
    rows = []
    import gzip

    with gzip.open(c.WORDNET, "rt", encoding="utf-8") as fh:
        for line in fh:
            rows.append(line)
            if len(rows) == args.rows:
                break
    corpus = tmp / "rows.jsonl"
    corpus.write_text("".join(rows), encoding="utf-8")
    common = ["--input", str(corpus), "--backend", args.backend, "--no-progress", "--chunk-size", "500"]

    t = time.perf_counter()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": 200 << 20, "include_dashboard": False},
    )
    builds: list[dict[str, Any]] = []
    serving: list[dict[str, Any]] = []
    try:
        cluster.add_node(num_cpus=1, object_store_memory=200 << 20)
        cluster.wait_for_nodes()
        cluster_s = time.perf_counter() - t
        print(f"cluster up in {cluster_s:.1f}s at {cluster.address}", flush=True)

        variants = [
            ("local", []),
            ("ray, 1 encoder", ["--engine", "ray", "--encoders", "1", "--cpus-per-encoder", "0.75"]),
            ("ray, 2 encoders", ["--engine", "ray", "--encoders", "2", "--cpus-per-encoder", "0.75"]),
        ]
        for name, extra in variants:
            out = tmp / name.replace(" ", "").replace(",", "-")
            address = ["--ray-address", cluster.address] if extra else []
            wall, _ = _cli("build", *common, "--output", str(out), *extra, *address)
            m = _manifest(out)["build"]
            builds.append(
                {
                    "variant": name,
                    "rows": args.rows,
                    "wall_s": round(wall, 1),
                    "rows_per_s_wall": round(args.rows / wall, 1),
                    "encode_rows_per_s": m["encode_per_second"],
                    "encoder_nodes": m.get("encoder_nodes", 1),
                }
            )
            print(builds[-1], flush=True)

        indexes = {}
        for shards in (1, 2, 4):
            out = tmp / f"shards{shards}"
            _cli("build", *common, "--output", str(out), "--shards", str(shards))
            indexes[shards] = out
        plain = tmp / "local"
        with _service(["--index", str(plain)]) as (url, ready_s):
            serving.append({"service": "plain (one process)", "shards": "-", "ready_s": round(ready_s, 1)})
            serving[-1] |= _latency(url, args.queries)
            print(serving[-1], flush=True)
        for shards, root in indexes.items():
            ray_args = ["--index", str(root), "--engine", "ray", "--ray-address", cluster.address]
            with _service([*ray_args, "--replica-cpus", "0.2"]) as (url, ready_s):
                serving.append({"service": "Ray Serve", "shards": shards, "ready_s": round(ready_s, 1)})
                serving[-1] |= _latency(url, args.queries)
                lex = _latency(url, max(10, args.queries // 3), mode="lexical")
                serving[-1]["lexical_p50_ms"] = lex["p50_ms"]
                print(serving[-1], flush=True)
    finally:
        cluster.shutdown()
    load_after = c.loadavg()

    print(f"\nbuild of {args.rows} WordNet glosses ({args.backend}), load {load_before} -> {load_after}")
    for table in (builds, serving):
        keys = list(dict.fromkeys(k for row in table for k in row))
        print(c.markdown_table(keys, [[row.get(k, "") for k in keys] for row in table]) + "\n")
    c.save(
        args.name,
        {
            "load_before": load_before,
            "load_after": load_after,
            "cluster": "ray.cluster_utils.Cluster: head + 1 node, 1 logical CPU each, 127.0.0.1",
            "rows": args.rows,
            "backend": args.backend,
            "builds": builds,
            "serving": serving,
        },
    )


if __name__ == "__main__":
    main()
