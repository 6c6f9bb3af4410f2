"""Grouped retrieval quality on SciFact: documents as passages (``--chunk-tokens``) + ``group_by``,
against today's sentence-level ``--split-sentences`` index with client-side dedup (and the
whole-document index of docs/quality.md, truncated at 256 tokens, as the reference).

Each SciFact abstract (``title + " " + text``, the BEIR convention) is one document. For each of the 300
test queries: (a) ``search_groups(k=10, group_by="doc_id")`` on the passage index gives 10 documents;
(b) the sentence index's top ``--dedup-depth`` (100) sentences, deduplicated by ``doc_id`` in rank order
(a document's first sentence places it), give the top 10 documents. nDCG@10 and recall@10/@100 per
document (``semsearch.eval``), dense and hybrid.

    python bench/grouped_quality.py --work /tmp/grouped_quality --chunk-tokens 128
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c

from indexer.pipeline import BuildOptions, run_build
from semsearch.eval.evaluation import ndcg_at_k, recall_at_k
from semsearch.models import Encoder
from semsearch.search import Grouping, SearchIndex, search, search_groups


def build(docs: dict[str, str], out: Path, **opts: object) -> float:
    if (out / "current").exists():
        return 0.0
    src = out.parent / "scifact_docs.jsonl"
    if not src.exists():
        with src.open("w", encoding="utf-8") as fh:
            for doc_id, text in docs.items():
                fh.write(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n")
    started = time.perf_counter()
    run_build(BuildOptions(inputs=[src], output=out, backend="onnx-int8", progress=False, **opts))  # type: ignore[arg-type]
    return time.perf_counter() - started


def rankings(index: SearchIndex, encoder: Encoder, queries: dict[str, str], mode: str, grouped: bool, depth: int):
    ids = list(queries)
    texts = [queries[q] for q in ids]
    vecs = encoder.encode(texts, prompt=encoder.query_prompt)
    out: dict[str, list[str]] = {}
    started = time.perf_counter()
    if grouped:
        groups = search_groups(index, texts, vecs, 100, mode, grouping=Grouping("doc_id", 1))  # type: ignore[arg-type]
        for q, row in zip(ids, groups, strict=True):
            out[q] = [str(g.group) for g in row]
    else:
        hits = search(index, texts, vecs, depth, mode)  # type: ignore[arg-type]
        for q, row in zip(ids, hits, strict=True):
            out[q] = list(dict.fromkeys(str(h.doc_id) for h in row))  # client-side dedup, rank order
    return out, (time.perf_counter() - started) / len(ids) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/grouped_quality"))
    ap.add_argument("--chunk-tokens", type=int, nargs="+", default=[128])
    ap.add_argument("--dedup-depth", type=int, default=100)
    ap.add_argument(
        "--docs", type=int, default=0, help="Use every judged test document plus random others up to N (0: all 5,183)."
    )
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.docs:
        docs, queries, qrels = c.scifact_subset(args.docs)
    else:
        docs = c.scifact_docs()
        queries, qrels = c.scifact_test()
    setups: list[tuple[str, Path, dict, bool]] = [
        (f"passages --chunk-tokens {n} + group_by", args.work / f"chunk{n}", {"chunk_tokens": n}, True)
        for n in args.chunk_tokens
    ]
    setups.append(("sentences --split-sentences + dedup", args.work / "sentences", {"split_sentences": True}, False))
    rows, results = [], []
    for name, path, opts, grouped in setups:
        seconds = build(docs, path, **opts)
        index = SearchIndex.load(path)
        encoder = Encoder.from_manifest(index.manifest)
        for mode in ("dense", "hybrid"):
            ranked, ms = rankings(index, encoder, queries, mode, grouped, args.dedup_depth)
            ndcg = sum(ndcg_at_k(ranked[q], qrels[q], 10) for q in queries) / len(queries)
            r10 = sum(recall_at_k(ranked[q], qrels[q], 10) for q in queries) / len(queries)
            r100 = sum(recall_at_k(ranked[q], qrels[q], 100) for q in queries) / len(queries)
            short = sum(1 for q in queries if len(ranked[q]) < 10)
            res = {
                "setup": name,
                "mode": mode,
                "rows": index.count,
                "build_s": round(seconds, 1),
                "ndcg@10": ndcg,
                "recall@10": r10,
                "recall@100": r100,
                "ms_per_query": ms,
                "queries_under_10_docs": short,
            }
            results.append(res)
            rows.append([name, mode, index.count, f"{ndcg:.4f}", f"{r10:.4f}", f"{r100:.4f}", f"{ms:.1f}", short])
            print(rows[-1], flush=True)
        index.close()
    print(
        c.markdown_table(["setup", "mode", "rows", "nDCG@10", "recall@10", "recall@100", "ms/query", "< 10 docs"], rows)
    )
    c.save(
        "grouped_quality",
        {"results": results, "dedup_depth": args.dedup_depth, "documents": len(docs), "loadavg": c.loadavg()},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
