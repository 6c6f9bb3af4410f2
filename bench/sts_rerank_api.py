"""STS-B correlation of the reranker *through the service's* ``POST /rerank`` (what a client gets).

Each STS pair is one request ``{"query": sentence1, "texts": [sentence2]}``: the default score (the
reranker card's, fused with the bi-encoder cosine when the card stores pairwise statistics; ``scoring``
says which) and, with ``--raw``, the same pairs with ``"raw_scores": true`` (the cross-encoder alone).
The figure to compare is ``python -m indexer eval sts --reranker ...``'s ``reranker_fused``.

    # start a server itself (any index: /rerank does not read it; the encoder is the index's)
    python bench/sts_rerank_api.py --index data/index/sample --reranker models/reranker --raw
    # or measure a running one
    python bench/sts_rerank_api.py --url http://127.0.0.1:8000 [--api-key KEY]

Prints a table and writes ``bench/results/sts_rerank_api.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import _common
import httpx

from semsearch.eval import correlations, read_sts

DEFAULT_DATA = _common.STSB / "stsb_test.tsv"


async def score_all(
    url: str, pairs: list[Any], raw: bool, concurrency: int, api_key: str | None
) -> tuple[list[float], set[str]]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    scores: list[float] = [0.0] * len(pairs)
    kinds: set[str] = set()
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, headers=headers) as client:

        async def one(i: int) -> None:
            body = {"query": pairs[i].sentence1, "texts": [pairs[i].sentence2], "raw_scores": raw}
            async with semaphore:
                for _ in range(20):  # 429: wait what the server says
                    response = await client.post("/rerank", json=body)
                    if response.status_code != 429:
                        break
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))
            if response.status_code != 200:
                raise SystemExit(f"/rerank answered {response.status_code}: {response.text}")
            data = response.json()
            scores[i] = float(data["results"][0]["score"])
            kinds.add(str(data.get("scoring", "?")))

        await asyncio.gather(*(one(i) for i in range(len(pairs))))
    return scores, kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="STS TSV (default: ../shared STS-B test)")
    parser.add_argument("--url", help="a running service (else one is started with --index/--reranker)")
    parser.add_argument("--api-key", default=os.environ.get("SEMSEARCH_API_KEY"))
    parser.add_argument("--index", type=Path, help="index for the started server")
    parser.add_argument("--reranker", default="models/reranker", help="reranker for the started server")
    parser.add_argument("--reranker-backend", help="SEMSEARCH_RERANKER_BACKEND of the started server")
    parser.add_argument("--raw", action="store_true", help="also measure raw_scores=true")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--limit", type=int, default=None, help="first N pairs only (a smoke run)")
    parser.add_argument("--name", default="sts_rerank_api", help="results file name")
    args = parser.parse_args()

    pairs = read_sts(args.data)[: args.limit]
    gold = [p.score for p in pairs]
    server = None
    if args.url is None:
        if args.index is None:
            parser.error("give --url, or --index (and --reranker) to start a server")
        from http_bench import Server

        env = {"SEMSEARCH_RERANKER": str(args.reranker)}
        if args.api_key:
            env["SEMSEARCH_API_KEY"] = args.api_key
        if args.reranker_backend:
            env["SEMSEARCH_RERANKER_BACKEND"] = args.reranker_backend
        server = Server(args.index, env)
        url = server.url
    else:
        url = args.url.rstrip("/")
    rows: list[list[Any]] = []
    result: dict[str, Any] = {"data": str(args.data), "pairs": len(pairs), "url": url, "runs": {}}
    try:
        with httpx.Client(
            base_url=url, timeout=60, headers={"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        ) as c:
            info = c.get("/info").json()
        result["reranker"] = info["reranker"]
        result["encoder"] = info["encoder"]
        for raw in [False, True] if args.raw else [False]:
            started = time.perf_counter()
            scores, kinds = asyncio.run(score_all(url, pairs, raw, args.concurrency, args.api_key))
            took = time.perf_counter() - started
            corr = correlations(scores, gold)
            name = "raw_scores=true" if raw else "default"
            result["runs"][name] = {**corr, "scoring": sorted(kinds), "seconds": round(took, 1)}
            rows.append([name, ", ".join(sorted(kinds)), corr["spearman"], corr["pearson"], len(pairs) / took])
    finally:
        if server is not None:
            server.stop()
    print(
        f"STS through POST /rerank: {args.data} ({len(pairs)} pairs), reranker {result['reranker'].get('name')}, "
        f"encoder backend {result['encoder']['backend']}; load {_common.loadavg()}"
    )
    print(_common.markdown_table(["request", "scoring", "Spearman x100", "Pearson x100", "pairs/s"], rows))
    path = _common.save(args.name, result)
    print(f"saved {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
