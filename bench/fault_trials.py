"""kill -9 at random points of build / add / delete / compact, then check the index (a documented run).

Each trial copies a prepared index, starts one ``python -m indexer`` operation on it, kills it with
SIGKILL after a random delay, and checks what a user would rely on:

* ``current`` still verifies (``verify``: manifests, segments, tombstones, counts, checksums) and
  loads, and is either the version before the operation or the one it published (nothing else);
* rerunning the operation (``--resume`` for build/add) publishes a version whose live rows, vectors
  (bit for bit) and corpus checksum equal those of the same operation run without interruption.

    python bench/fault_trials.py --trials 20          # ~15 min on 2 cores
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c

from semsearch.index import IndexRoot, Manifest
from semsearch.search import SearchIndex, verify

OPS = ("build", "add", "delete", "compact")


def indexer(*args: str) -> list[str]:
    return [sys.executable, "-m", "indexer", *args]


def command(op: str, root: Path, data: dict[str, Path], resume: bool) -> list[str]:
    if op == "build":
        cmd = indexer(
            "build", "--input", str(data["build"]), "--output", str(root), "--no-progress", "--chunk-size", "100"
        )
    elif op == "add":
        cmd = indexer("add", "--input", str(data["add"]), "--index", str(root), "--no-merge", "--no-progress")
    elif op == "delete":
        return indexer("delete", "--index", str(root), "--ids", ",".join(str(i) for i in range(0, 600, 3)))
    else:
        return indexer("compact", "--index", str(root))
    return [*cmd, "--resume"] if resume else cmd


def content(root: Path) -> tuple[str, list[tuple[str, str]], bytes]:
    """Corpus checksum, live (id, text) rows, and the live vectors' bytes in id order."""
    idx = SearchIndex.load(root)
    try:
        ext = {d.iid: (str(d.id), d.text) for d in idx.iter_docs()}
        iids, vectors = idx.live_vectors()
        order = np.argsort([ext[int(i)][0] for i in iids])
        return idx.manifest.corpus_checksum, sorted(ext.values()), vectors[order].tobytes()
    finally:
        idx.close()


def prepare(work: Path) -> tuple[Path, dict[str, Path]]:
    rows = [{"id": i, "text": t} for i, t in enumerate(c.wordnet_glosses()[:1500])]
    data = {"build": work / "build.jsonl", "add": work / "add.jsonl"}
    c_rows = [{"id": r["id"] + 2000, "text": r["text"] + " (again)"} for r in rows[:700]]
    import json

    data["build"].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    data["add"].write_text("".join(json.dumps(r) + "\n" for r in c_rows), encoding="utf-8")
    base = work / "base"
    subprocess.run(indexer("build", "--input", str(data["build"]), "--output", str(base), "--segment-rows", "500",
                           "--no-progress"), cwd=c.REPO, check=True, capture_output=True)  # fmt: skip
    return base, data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/semsearch-fault-trials"))
    parser.add_argument("--name", default="fault_trials")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    base, data = prepare(args.work)
    reference: dict[str, Any] = {}
    durations: dict[str, float] = {}
    for op in OPS:  # the uninterrupted outcome of each operation, and how long it takes
        ref = args.work / f"ref-{op}"
        shutil.copytree(base, ref, symlinks=True)
        started = time.perf_counter()
        subprocess.run(command(op, ref, data, False), cwd=c.REPO, check=True, capture_output=True)
        durations[op] = time.perf_counter() - started
        reference[op] = content(ref)
    rng = np.random.default_rng(args.seed)
    results = []
    for trial in range(args.trials):
        op = OPS[trial % len(OPS)]
        root = args.work / f"trial-{trial}"
        shutil.copytree(base, root, symlinks=True)
        before = IndexRoot(root).current_version()
        delay = float(rng.uniform(0.3, durations[op]))
        proc = subprocess.Popen(command(op, root, data, False), cwd=c.REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(delay)
        killed = proc.poll() is None
        if killed:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        problems = verify(root)
        current = IndexRoot(root).current_version()
        current_kind = Manifest.read(root / "current").build.get("kind")
        ok_current = not problems and (current == before or current_kind in (op, "upgrade"))
        if current == before:  # killed before it published: run it again (build/add resume)
            rerun = subprocess.run(command(op, root, data, True), cwd=c.REPO, capture_output=True, text=True)
            same = rerun.returncode == 0 and content(root) == reference[op]
        else:  # it published before the kill landed: that version must be the uninterrupted outcome
            same = content(root) == reference[op]
        row = {"trial": trial, "op": op, "kill_after_s": round(delay, 2), "killed": killed,
               "current_ok": ok_current, "rerun_equal": same, "problems": problems[:3]}  # fmt: skip
        results.append(row)
        print(row, flush=True)
        shutil.rmtree(root, ignore_errors=True)
    ok = all(r["current_ok"] and r["rerun_equal"] for r in results)
    counts = []
    for op in OPS:
        mine = [r for r in results if r["op"] == op]
        counts.append(
            [op, len(mine), *(sum(bool(r[key]) for r in mine) for key in ("killed", "current_ok", "rerun_equal"))]
        )
    table = c.markdown_table(["op", "trials", "killed mid-run", "current verified", "outcome identical"], counts)
    print("\n" + table)
    path = c.save(args.name, {"trials": results, "all_ok": ok, "durations_s": durations})
    print(f"\nresults: {path}; all ok: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
