"""Bytes written per added row by ``indexer add`` (the real CLI, in a child process).

Builds a small base index, then runs ``python -m indexer add`` of ``--rows`` new rows in a child process
that reads its own ``/proc/self/io`` before and after the command: ``write_bytes`` counts what the
process sent (or dirtied, memory-mapped writes included) towards the storage layer. Needs a
disk-backed file system (tmpfs counts nothing). Prints one JSON line.

    python bench/bench_write_bytes.py --rows 1000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import sys
def io():
    return {k: int(v) for k, v in (line.split(": ") for line in open("/proc/self/io").read().splitlines())}
before = io()
from indexer.cli import app
try:
    app(sys.argv[1:], standalone_mode=False)
finally:
    after = io()
    keys = ("write_bytes", "wchar", "read_bytes")
    print("IO " + " ".join(f"{k}={after[k] - before[k]}" for k in keys), file=sys.stderr)
"""


def _corpus(path: Path, rows: int, offset: int) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for i in range(rows):
            n = offset + i
            fh.write(json.dumps({"id": f"r{n}", "text": f"sentence number {n} about topic {n % 97} and {n % 13}"}))
            fh.write("\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--base-rows", type=int, default=1000)
    ap.add_argument("--dir", type=Path, default=None, help="work directory (disk-backed; default: a temp dir)")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), *sys.path])}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        _corpus(work / "base.jsonl", args.base_rows, 0)
        _corpus(work / "add.jsonl", args.rows, args.base_rows)
        index = work / "index"
        subprocess.run(
            [sys.executable, "-m", "indexer", "build", "--input", str(work / "base.jsonl"), "--output", str(index)],
            check=True,
            env=env,
            capture_output=True,
        )
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, "add", "--input", str(work / "add.jsonl"), "--index", str(index)],
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            sys.exit(proc.stderr)
        line = next(x for x in proc.stderr.splitlines() if x.startswith("IO "))
        io = {k: int(v) for k, v in (kv.split("=") for kv in line[3:].split())}
        print(
            json.dumps(
                {
                    "rows": args.rows,
                    **io,
                    "write_bytes_per_row": round(io["write_bytes"] / args.rows),
                    "vector_bytes_per_row": 384 * 4,
                }
            )
        )


if __name__ == "__main__":
    main()
