"""GPU check of the torch encoder: the same sentences encoded on CUDA and on the CPU agree.

What ``indexer build --engine ray --gpus-per-encoder N --backend torch`` does in each encoder actor
(``Encoder(backend="torch", device="cuda")``), without Ray. Exit 0 when every sentence's cosine between
the two is >= ``--min-cosine`` (default 0.9999), 1 otherwise, 2 when no CUDA device is visible.

    PYTHONPATH=. .venv/bin/python bench/gpu_check.py [--device cuda:0] [--pooling mean|cls]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

SENTENCES = [
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "cats",
    "Stock markets fell sharply on Monday after the announcement.",
    "¿Dónde está la biblioteca? 图书馆在哪里?",
    "Semantic search finds documents by meaning rather than by exact keyword overlap. " * 8,
    "A woman is slicing an onion.",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--pooling", default="mean", choices=["mean", "cls"])
    parser.add_argument("--min-cosine", type=float, default=0.9999)
    parser.add_argument("--batch-size", type=int, default=3)  # several batches, each padded differently
    args = parser.parse_args()

    import torch

    from semsearch.models import Encoder

    if not torch.cuda.is_available():
        print(f"error: torch sees no CUDA device (torch {torch.__version__})", file=sys.stderr)
        return 2
    texts = SENTENCES
    cpu = Encoder(backend="torch", pooling=args.pooling).encode(texts, batch_size=args.batch_size)
    started = time.perf_counter()
    gpu_encoder = Encoder(backend="torch", pooling=args.pooling, device=args.device)
    gpu = gpu_encoder.encode(texts, batch_size=args.batch_size)
    seconds = time.perf_counter() - started
    weights = next(gpu_encoder._runner.module.parameters()).device  # type: ignore[attr-defined]
    cos = np.einsum("nd,nd->n", cpu, gpu)
    print(f"device {weights} ({torch.cuda.get_device_name(weights)}), torch {torch.__version__}, {seconds:.1f}s")
    for text, c in zip(texts, cos, strict=True):
        print(f"  cosine {c:.6f}  {text[:60]!r}")
    ok = weights.type == "cuda" and bool(np.isfinite(gpu).all()) and float(cos.min()) >= args.min_cosine
    print(f"{'OK' if ok else 'FAIL'}: min cosine {cos.min():.6f} (bound {args.min_cosine})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
