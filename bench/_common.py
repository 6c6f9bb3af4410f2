"""Shared helpers of the bench scripts: data loading, machine description, tables, saving results.

Imported as ``_common`` by the scripts in this folder (``python bench/x.py`` puts ``bench/`` first on
``sys.path``); they also add the repository root so ``semsearch`` imports from the working tree.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import platform
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DATA = Path(os.environ.get("SEMSEARCH_BENCH_DATA", REPO.parent / "shared" / "data"))
STSB = DATA / "stsb"
SCIFACT = DATA / "scifact"
WORDNET = REPO / "data" / "sample" / "wordnet_glosses.jsonl.gz"
RESULTS = REPO / "bench" / "results"


# ----------------------------------------------------------------------------------------- machine


def machine() -> dict[str, Any]:
    """CPU model, cores, load average, library versions: recorded in every results file."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    versions: dict[str, str] = {}
    for name in ("torch", "onnxruntime", "faiss", "sentence_transformers", "transformers", "numpy"):
        try:
            module = __import__(name)
            versions[name] = str(getattr(module, "__version__", "?"))
        except ImportError:
            continue
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = " ".join(sorted({f for f in text.split() if f in ("avx2", "avx512f", "avx512_vnni", "amx_int8")}))
    except OSError:
        pass
    mem_gb = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 1e6, 1)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_flags": flags,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "mem_total_gb": mem_gb,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def wait_for_quiet(max_load: float, max_wait_s: float) -> float:
    """Wait (up to ``max_wait_s``) until the 1-minute load average is below ``max_load``; returns it."""
    deadline = time.monotonic() + max_wait_s
    load = os.getloadavg()[0]
    while load >= max_load and time.monotonic() < deadline:
        print(f"  load average {load:.2f} >= {max_load}; waiting...", flush=True)
        time.sleep(15)
        load = os.getloadavg()[0]
    return load


def rss_bytes() -> int:
    """Resident set size of this process (Linux ``/proc/self/statm``)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


# ------------------------------------------------------------------------------------------- data


def stsb_pairs(split: str = "dev") -> list[tuple[str, str, float]]:
    """STS-B ``(sentence1, sentence2, score)`` from ``stsb_<split>.tsv`` (tab separated, QUOTE_NONE)."""
    path = STSB / f"stsb_{split}.tsv"
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        c1, c2, cs = (header.index(n) for n in ("sentence1", "sentence2", "score"))
        return [(row[c1], row[c2], float(row[cs])) for row in reader if len(row) == len(header)]


def stsb_sentences(splits: Iterable[str] = ("train", "dev", "test")) -> list[str]:
    """Unique STS-B sentences in file order."""
    seen: dict[str, None] = {}
    for split in splits:
        for a, b, _ in stsb_pairs(split):
            seen.setdefault(a, None)
            seen.setdefault(b, None)
    return list(seen)


def wordnet_glosses() -> list[str]:
    with gzip.open(WORDNET, "rt", encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in fh]


def scifact_docs() -> dict[str, str]:
    """SciFact corpus: id -> ``title + " " + text`` (long texts, the BEIR convention)."""
    out: dict[str, str] = {}
    with gzip.open(SCIFACT / "corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            obj = json.loads(line)
            out[str(obj["_id"])] = f"{obj.get('title') or ''} {obj.get('text') or ''}".strip()
    return out


def scifact_test() -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """SciFact test queries (only judged ones) and qrels."""
    qrels: dict[str, dict[str, int]] = {}
    with (SCIFACT / "qrels" / "test.tsv").open(encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            q, d, s = line.rstrip("\n").split("\t")[:3]
            qrels.setdefault(q, {})[d] = int(float(s))
    queries: dict[str, str] = {}
    with (SCIFACT / "queries.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            obj = json.loads(line)
            if str(obj["_id"]) in qrels:
                queries[str(obj["_id"])] = obj["text"]
    return queries, qrels


def scifact_subset(n_docs: int, seed: int = 0) -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, int]]]:
    """(docs, queries, qrels): every relevant test document plus random distractors up to ``n_docs``."""
    docs = scifact_docs()
    queries, qrels = scifact_test()
    relevant = sorted({d for rels in qrels.values() for d in rels if d in docs})
    others = sorted(set(docs) - set(relevant))
    random.Random(seed).shuffle(others)
    keep = relevant + others[: max(0, n_docs - len(relevant))]
    return {d: docs[d] for d in keep}, queries, qrels


# ---------------------------------------------------------------------------------------- output


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def save(name: str, result: dict[str, Any], out: Path = RESULTS) -> Path:
    """Write ``<out>/<name>.json`` with command, date and machine filled in; returns the path."""
    out.mkdir(parents=True, exist_ok=True)
    result.setdefault("command", "python " + " ".join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]))
    result.setdefault("date", datetime.now(UTC).isoformat(timespec="seconds"))
    result.setdefault("machine", machine())
    result["machine"]["loadavg_at_end"] = loadavg()
    path = out / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def serve(index: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """``python -m app --index INDEX`` on a free port with exactly ``env``; returns the process and its URL
    once it serves (its later output is drained so it never blocks on a full pipe)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "--index", str(index), "--port", "0"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.search(r"semsearch serving .* at (http://\S+?)/ ", line)
        if match:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
            return proc, match.group(1)
    raise SystemExit("the server did not start")
