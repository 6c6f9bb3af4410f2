"""One indexer operation, timed in-process, on the code at ``--code`` (this tree or a git worktree of
an older commit): what ``bench_updates.py`` runs for both the segmented format and the baseline.

``--stub-vectors FILE.npy`` replaces ``Encoder.encode`` by a lookup of precomputed vectors: a text
ending in `` #<row>`` gets row ``<row>`` of the file. It is how a 1M-row index is built without
encoding 1M sentences; ``add`` runs with the real model so its encode time is real. Prints one JSON
line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("op", choices=["build", "add", "delete", "compact", "encode"])
    parser.add_argument("--code", type=Path, required=True)
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--input", type=Path)
    parser.add_argument("--ids", nargs="*", default=[])
    parser.add_argument("--index-type", default="flat")
    parser.add_argument("--stub-vectors", type=Path)
    parser.add_argument("--no-merge", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(args.code))
    import numpy as np

    from indexer import pipeline

    if args.stub_vectors is not None:
        from semsearch.models import Encoder

        table = np.load(args.stub_vectors, mmap_mode="r")

        def lookup(self, texts, *a, **kw):  # type: ignore[no-untyped-def]
            return np.asarray(table[[int(t.rsplit("#", 1)[1]) for t in texts]], dtype=np.float32)

        Encoder.encode = lookup  # type: ignore[method-assign]
    out: dict = {"op": args.op}
    started = time.perf_counter()
    if args.op == "encode":  # the floor of an add: model load + encoding its rows, nothing else
        from semsearch.models import Encoder

        texts = [json.loads(line)["text"] for line in args.input.open(encoding="utf-8")]
        encoder = Encoder(backend="onnx-int8")
        out["model_load_s"] = time.perf_counter() - started
        t0 = time.perf_counter()
        encoder.encode(texts)
        out["encode_s"] = time.perf_counter() - t0
    elif args.op == "build":
        opts = pipeline.BuildOptions(
            inputs=[args.input], output=args.index, index_type=args.index_type, backend="onnx-int8", progress=False
        )
        out["count"] = pipeline.run_build(opts).count
    elif args.op == "add":
        opts = pipeline.BuildOptions(inputs=[args.input], output=args.index, progress=False)
        if args.no_merge and hasattr(opts, "merge"):
            opts.merge = False
        out["count"] = pipeline.run_build(opts, incremental=True).count
        from semsearch.index import Manifest

        versions = sorted((args.index / "versions").iterdir())
        adds = [Manifest.read(v).build for v in versions if Manifest.read(v).build.get("kind") == "add"]
        out["encode_seconds"] = adds[-1].get("encode_seconds") if adds else None
    elif args.op == "delete":
        extra = {"merge": False} if args.no_merge and "merge" in pipeline.run_delete.__code__.co_varnames else {}
        out["count"] = pipeline.run_delete(args.index, args.ids, **extra).count
    else:
        out["count"] = pipeline.run_compact(args.index).count
    out["seconds"] = time.perf_counter() - started
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
