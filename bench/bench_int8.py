"""int8 recipes for the bi-encoder, side by side: quality, determinism and speed in one run.

Recipes (all from the same float export of the packaged all-MiniLM-L6-v2):

* ``fp32``: the float ONNX export (the ``onnx`` backend), the speed reference.
* ``dynamic``: onnxruntime ``quantize_dynamic`` (per-channel 7-bit weights, MatMul only): the old
  ``onnx-int8``. One activation scale per batch tensor, so vectors depend on batchmates.
* ``dynamic-alone``: the same file, every text run alone (no padding, so the scale covers one text),
  two 1-thread sessions in parallel: deterministic, no batching.
* ``rowwise``: :func:`semsearch.models.onnx.quantize_rowwise`, the current ``onnx-int8``: per-row
  (per-token) activation scales, batched.

Columns: STS-B dev Spearman (×100) and its change vs torch (guard −0.3); cosine to the torch vector
(mean / min); determinism = min cosine between a text encoded alone and the same text in shuffled,
padded batches (200 texts; target ≥ 0.99999); sentences/s and CPU seconds over the 2,910 unique
dev sentences (length-sorted batches of 64, 2 threads, not spinning; ``dynamic-alone`` 2 × 1 thread);
p50 of one 26-token query (1 call). Prints a markdown table and saves ``bench/results/<name>.json``.

    python bench/bench_int8.py                      # ~3 min on 2 quiet cores
    python bench/bench_int8.py --recipes dynamic rowwise --rounds 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c

QUERY = "A man is playing a guitar on a stage in front of a crowd of people while his friends watch him"
RECIPES = ("fp32", "dynamic", "dynamic-alone", "rowwise")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    parser.add_argument("--rounds", type=int, default=1, help="timed passes per recipe (best kept)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="bench_int8")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from scipy.stats import spearmanr

    from semsearch import onnx_backend as ob
    from semsearch.models import Encoder, _read_layout, _Tokens, pool_and_normalize

    info = c.machine()
    print(f"{info['cpu']}, {info['usable_cores']} usable cores, load {info['loadavg_at_start']}", flush=True)
    pairs = c.stsb_pairs("dev")
    sents = sorted({s for a, b, _ in pairs for s in (a, b)})
    pos = {s: i for i, s in enumerate(sents)}
    gold = np.array([g for _, _, g in pairs])

    def spearman(emb: np.ndarray) -> float:
        a = emb[[pos[p[0]] for p in pairs]]
        b = emb[[pos[p[1]] for p in pairs]]
        return 100 * float(spearmanr(np.einsum("nd,nd->n", a, b), gold).statistic)

    torch_enc = Encoder(backend="torch", num_threads=args.threads)
    ref = torch_enc.encode(sents)
    torch_rho = spearman(ref)
    fp32_enc = Encoder(backend="onnx", num_threads=args.threads)  # exports into the default cache if needed
    folder = ob.default_cache_dir() / f"{fp32_enc.fingerprint}-encoder"
    files = {"fp32": folder / "model.onnx", "rowwise": folder / f"bench-rowwise-{ob.INT8_RECIPE}.onnx"}
    files["dynamic"] = files["dynamic-alone"] = folder / "bench-dynamic-pc1-rr1.onnx"
    if not files["rowwise"].is_file():
        ob.quantize_rowwise(files["fp32"], files["rowwise"])
    if not files["dynamic"].is_file():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with ob._quiet_export():
            quantize_dynamic(
                files["fp32"], files["dynamic"], op_types_to_quantize=["MatMul"], per_channel=True,
                reduce_range=True, weight_type=QuantType.QInt8,
            )  # fmt: skip
    layout = _read_layout(fp32_enc.resolved.path)
    tokens = _Tokens.build(None, fp32_enc.max_seq_length, layout)

    def session(path: Path, threads: int) -> Any:
        return ob._session(path, threads, spinning=False)

    def run(sess: Any, texts: list[str]) -> np.ndarray:
        tok = tokens.encode(texts)
        width = max(len(i) for i in tok.ids)
        feats = tok.batch(np.arange(len(texts)), width)
        names = [i.name for i in sess.get_inputs()]
        (hidden,) = sess.run(["last_hidden_state"], {n: feats[n] for n in names})
        return pool_and_normalize(hidden, feats["attention_mask"], "mean")

    def batched(sess: Any, texts: list[str], batch: int = 64) -> np.ndarray:
        lengths = np.array([len(i) for i in tokens.encode(texts).ids])
        order = np.argsort(-lengths, kind="stable")
        out = np.empty((len(texts), ref.shape[1]), dtype=np.float32)
        for s in range(0, len(texts), batch):
            idx = order[s : s + batch]
            out[idx] = run(sess, [texts[i] for i in idx])
        return out

    def alone(sessions: list[Any], texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), ref.shape[1]), dtype=np.float32)

        def work(w: int) -> None:
            for j in range(w, len(texts), len(sessions)):
                out[j] = run(sessions[w], [texts[j]])[0]

        with ThreadPoolExecutor(len(sessions)) as pool:
            list(pool.map(work, range(len(sessions))))
        return out

    rng = np.random.default_rng(0)
    probe = [sents[i] for i in rng.choice(len(sents), 200, replace=False)]
    rows = []
    for name in args.recipes:
        if name == "dynamic-alone":
            sessions = [session(files[name], 1) for _ in range(args.threads)]
            encode_all = lambda texts, s=sessions: alone(s, texts)  # noqa: E731
            one = sessions[0]
        else:
            one = session(files[name], args.threads)
            encode_all = lambda texts, s=one: batched(s, texts)  # noqa: E731
        encode_all(sents[:64])  # warm-up
        best_wall, best_cpu, emb = 1e9, 1e9, None
        for _ in range(args.rounds):
            c0, t0 = time.process_time(), time.perf_counter()
            emb = encode_all(sents)
            best_wall = min(best_wall, time.perf_counter() - t0)
            best_cpu = min(best_cpu, time.process_time() - c0)
        assert emb is not None
        single = np.vstack([run(one, [t]) for t in probe])
        worst = 1.0
        for batch in (7, 64):
            order = rng.permutation(len(probe))
            shuffled = [probe[i] for i in order]
            got = encode_all(shuffled) if name == "dynamic-alone" else batched(one, shuffled, batch)
            back = np.empty_like(got)
            back[order] = got
            worst = min(worst, float(np.einsum("nd,nd->n", back, single).min()))
        latencies = []
        for _ in range(50):
            t0 = time.perf_counter()
            run(one, [QUERY])
            latencies.append(time.perf_counter() - t0)
        cos = np.einsum("nd,nd->n", emb, ref)
        rho = spearman(emb)
        row = {
            "recipe": name,
            "file": files[name].name,
            "file_mb": round(files[name].stat().st_size / 1e6, 1),
            "stsb_dev": round(rho, 2),
            "delta_vs_torch": round(rho - torch_rho, 2),
            "cos_mean": round(float(cos.mean()), 5),
            "cos_min": round(float(cos.min()), 4),
            "determinism_min_cos": round(worst, 7),
            "sent_per_s": round(len(sents) / best_wall, 1),
            "cpu_s": round(best_cpu, 2),
            "query_p50_ms": round(1000 * float(np.median(latencies)), 2),
            "load": round(os.getloadavg()[0], 2),
        }
        rows.append(row)
        print(row, flush=True)
    headers = ["recipe", "STS-B dev", "Δ vs torch", "cos to torch mean / min", "determinism (min cos)",
               "sent/s", "CPU-s", "1-query p50 ms", "load"]  # fmt: skip
    table = c.markdown_table(
        headers,
        [
            [r["recipe"], f"{r['stsb_dev']:.2f}", f"{r['delta_vs_torch']:+.2f}",
             f"{r['cos_mean']:.5f} / {r['cos_min']:.4f}",
             f"{r['determinism_min_cos']:.7f}", f"{r['sent_per_s']:.0f}", f"{r['cpu_s']:.2f}",
             f"{r['query_p50_ms']:.2f}", f"{r['load']:.1f}"]
            for r in rows
        ],
    )  # fmt: skip
    print(f"\ntorch STS-B dev {torch_rho:.2f}; {len(sents)} sentences; {args.threads} threads\n")
    print(table)
    info["loadavg_at_end"] = list(os.getloadavg())
    c.save(
        args.name,
        {
            "command": "python bench/bench_int8.py " + " ".join(sys.argv[1:]),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": info,
            "torch_stsb_dev": round(torch_rho, 2),
            "rows": rows,
            "table": table,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
