"""``/search`` over HTTP with two load generators, server variants against a named baseline, one run.

Each server variant is the real ``python -m app`` (a subprocess) on the same index. Every concurrency
level is driven twice: by ``wrk`` (C, keep-alive, a Lua script POSTing a different ~30-token query
each request) and by the closed-loop asyncio httpx client of ``bench/http_bench.py`` (whose own CPU
competes with the server on the same cores, like any client on the box). The table gives queries/s,
p50/p99 and errors, and queries/s relative to the baseline variant for the same client and level.
``wrk`` comes from Debian (``apt-get install -y wrk``); without it only the Python client runs.

    python bench/bench_http_wrk.py --index /tmp/idx                       # ~2 min
    python bench/bench_http_wrk.py --index IDX --servers h11-asyncio default workers2 --baseline h11-asyncio
    python bench/bench_http_wrk.py --index IDX --servers txtai default --baseline txtai   # the peer, same clients

``txtai`` is txtai's API (``uvicorn txtai.api:app`` from ``--txtai-python``'s venv, see docs/benchmarks.md
§5) on the WordNet glosses, driven by the same two clients (``GET /search?query=..&limit=k``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c
import bench_http_peers as peers
import http_bench as hb

# name -> (extra python -m app flags, SEMSEARCH_* environment)
SERVERS: dict[str, tuple[list[str], dict[str, str]]] = {
    "h11-asyncio": (["--http", "h11", "--loop", "asyncio"], {}),  # uvicorn without its [standard] extras
    "default": ([], {}),  # httptools + uvloop (uvicorn[standard]), one process
    "workers2": (["--workers", "2"], {"SEMSEARCH_THREADS": "1"}),  # 2 processes x 1 thread
    "threads1": ([], {"SEMSEARCH_THREADS": "1"}),  # 1 process x 1 thread (workers2's per-process share)
}

# One body (POST /search) or path (txtai's GET /search?query=...) per line of the wrk script's argument.
LUA_TEMPLATE = """
local lines = {}
local i = 0
init = function(args)
  for line in io.lines(args[1]) do lines[#lines + 1] = line end
  i = math.random(#lines)
end
request = function()
  i = i % #lines + 1
  return REQUEST
end
"""
POST_JSON = 'wrk.format("POST", "/search", {["Content-Type"] = "application/json"}, lines[i])'
LUA = LUA_TEMPLATE.replace("REQUEST", POST_JSON)
LUA_GET = LUA_TEMPLATE.replace("REQUEST", 'wrk.format("GET", lines[i])')


class AppServer(hb.ServerProcess):
    def __init__(self, index: Path, flags: list[str], env: dict[str, str]) -> None:
        keep = ("SEMSEARCH_CACHE_DIR",)  # the ONNX cache: the same exported files for every variant
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SEMSEARCH_") or k in keep}
        full_env.update({"SEMSEARCH_ACCESS_LOG": "false", "SEMSEARCH_RELOAD_POLL_S": "0", **env})
        cmd = [sys.executable, "-m", "app", "--index", str(index), "--port", "0", *flags]
        super().__init__(cmd, full_env, hb.SERVING_RE, "server")


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]


def run_wrk(url: str, bodies: Path, script: Path, concurrency: int, duration: float) -> dict[str, Any]:
    threads = min(concurrency, 2)
    cmd = ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{max(1, round(duration))}s", "--latency",
           "--timeout", "30s", "-s", str(script), url, "--", str(bodies)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE)
    total = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(int(x) for x in sock.groups()) if sock else 0)
    if not (rps and p50 and p99 and total):
        raise SystemExit(f"could not parse wrk output:\n{out}")
    return {"requests": int(total.group(1)), "qps": float(rps.group(1)), "p50_ms": _ms(p50.group(1)),
            "p99_ms": _ms(p99.group(1)), "errors": errors}  # fmt: skip


def run_python(
    url: str, queries: list[str], concurrency: int, duration: float, k: int, request: hb.Request = hb.search_request
) -> dict[str, Any]:
    started = time.perf_counter()
    latencies, errors = asyncio.run(hb.drive(url, queries, concurrency, duration, k, request))
    seconds = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000
    return {"requests": len(latencies), "qps": len(latencies) / seconds, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "errors": errors}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, required=True, help="index root (e.g. built from data/sample)")
    names = [*SERVERS, "txtai"]
    parser.add_argument(
        "--servers",
        nargs="+",
        default=["h11-asyncio", "default", "workers2"],
        choices=names,
        help="server variants; txtai: txtai's API on --txtai-index (built there if missing)",
    )
    parser.add_argument("--baseline", default="h11-asyncio", choices=names)
    parser.add_argument("--txtai-python", default="/tmp/txtai-venv/bin/python")
    parser.add_argument("--txtai-index", type=Path, default=Path("/tmp/semsearch-bench-http/txtai-wordnet"))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per level and client")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--clients", nargs="+", default=["wrk", "python"], choices=["wrk", "python"])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--name", default="bench_http_wrk")
    args = parser.parse_args()
    if args.baseline not in args.servers:
        args.servers.insert(0, args.baseline)
    clients = [cl for cl in args.clients if cl != "wrk" or shutil.which("wrk")]
    if "wrk" in args.clients and "wrk" not in clients:
        print("wrk not found (apt-get install -y wrk): Python client only", flush=True)
    queries = hb.load_queries(500)
    info = c.machine()
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"{len(queries)} queries of 26-34 tokens; {info['cpu']}, {info['usable_cores']} cores; {uptime}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-wrk-"))
    bodies = work / "bodies.jsonl"
    bodies.write_text("".join(json.dumps({"query": q, "k": args.k}) + "\n" for q in queries), encoding="utf-8")
    script = work / "search.lua"
    script.write_text(LUA, encoding="utf-8")
    get_paths = work / "paths.txt"
    get_paths.write_text("".join(f"/search?{urlencode({'query': q, 'limit': args.k})}\n" for q in queries), "utf-8")
    get_script = work / "search_get.lua"
    get_script.write_text(LUA_GET, encoding="utf-8")
    rows: list[dict[str, Any]] = []
    for name in args.servers:
        server: hb.ServerProcess
        if name == "txtai":
            if not args.txtai_index.exists():
                peers.build_txtai(args.txtai_python, args.txtai_index)
            server = peers.TxtaiServer(args.txtai_python, args.txtai_index, work, info["usable_cores"] or 1)
            request, wrk_input, wrk_script = peers.txtai, get_paths, get_script
        else:
            flags, env = SERVERS[name]
            server = AppServer(args.index, flags, env)
            request, wrk_input, wrk_script = hb.search_request, bodies, script
        try:
            asyncio.run(hb.drive(server.url, queries, max(args.concurrency), args.warmup, args.k, request))
            for concurrency in args.concurrency:
                for client in clients:
                    if client == "wrk":
                        r = run_wrk(server.url, wrk_input, wrk_script, concurrency, args.duration)
                    else:
                        r = run_python(server.url, queries, concurrency, args.duration, args.k, request)
                    row = {"server": name, "client": client, "concurrency": concurrency, **r,
                           "load": round(os.getloadavg()[0], 2)}  # fmt: skip
                    rows.append(row)
                    print(f"  {name:>12} {client:>6} c={concurrency:<3} {r['qps']:7.1f} q/s  p50 {r['p50_ms']:7.2f} ms"
                          f"  p99 {r['p99_ms']:7.2f} ms  errors {r['errors']}", flush=True)  # fmt: skip
        except Exception:
            print(f"{name} failed; its log:\n" + "".join(server.lines[-30:]), file=sys.stderr)
            raise
        finally:
            server.stop()
    base = {(r["client"], r["concurrency"]): r["qps"] for r in rows if r["server"] == args.baseline}
    table = c.markdown_table(
        ["server", "client", "clients", "queries/s", f"× {args.baseline}", "p50 ms", "p99 ms", "errors", "load"],
        [
            [r["server"], r["client"], r["concurrency"], f"{r['qps']:.1f}",
             f"{r['qps'] / base[(r['client'], r['concurrency'])]:.2f}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.1f}",
             r["errors"], f"{r['load']:.1f}"]
            for r in rows
        ],
    )  # fmt: skip
    print()
    print(table)
    info["uptime_at_start"] = uptime
    c.save(
        args.name,
        {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": info,
            "index": str(args.index),
            "settings": {
                "duration_s": args.duration,
                "k": args.k,
                "servers": {n: SERVERS.get(n, "txtai") for n in args.servers},
            },
            "rows": rows,
            "table": table,
        },
    )
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
