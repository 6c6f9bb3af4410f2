"""Evaluation: IR metrics over BEIR-format data, and STS correlations.

Metrics follow trec_eval (as pytrec_eval, which BEIR uses), computed on the ranking as returned:

* ``ndcg@k``: DCG = sum over ranks i <= k of ``rel_i / log2(i + 1)`` (linear gain = the graded
  relevance, not 2^rel - 1), divided by the DCG of the ideal ordering of all judged documents;
* ``recall@k``: relevant documents in the top k / all relevant documents of the query;
* ``mrr@k``: 1 / rank of the first relevant document within the top k, else 0.

A document is relevant when its qrels score is > 0. Queries without any relevant document are
left out of the means (as BEIR does with queries absent from the qrels). A run given as scores is
ordered like trec_eval: score descending, ties by document id descending (:func:`ranking_from_scores`).
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from semsearch.errors import InvalidInputError
from semsearch.ingest.readers import ScoredPair, read_json_lines, read_scored_pairs

if TYPE_CHECKING:
    from semsearch.models.encoder import Encoder
    from semsearch.models.reranker import Reranker
    from semsearch.search.modes import HybridParams, Mode
    from semsearch.search.reader import Hit, SearchIndex

log = logging.getLogger(__name__)

Qrels = dict[str, dict[str, int]]  # query id -> doc id -> graded relevance
DEFAULT_METRICS: tuple[str, ...] = ("ndcg@10", "recall@10", "recall@100", "mrr@10")
METRIC_KINDS = ("ndcg", "recall", "mrr")


# ------------------------------------------------------------------------------------------- metrics


def ndcg_at_k(ranked: Sequence[str], rels: Mapping[str, int], k: int) -> float:
    """nDCG@k with linear gain (trec_eval ``ndcg_cut``); 0 when the query has no relevant document."""
    ideal = sorted((r for r in rels.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    if idcg <= 0:
        return 0.0
    dcg = sum(max(rels.get(d, 0), 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    return dcg / idcg


def recall_at_k(ranked: Sequence[str], rels: Mapping[str, int], k: int) -> float:
    """Share of the relevant documents found in the top k (0 when none is relevant)."""
    relevant = {d for d, r in rels.items() if r > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranked[:k])) / len(relevant)


def mrr_at_k(ranked: Sequence[str], rels: Mapping[str, int], k: int) -> float:
    """Reciprocal rank of the first relevant document in the top k, else 0."""
    for i, d in enumerate(ranked[:k]):
        if rels.get(d, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


_METRIC_FUNCS = {"ndcg": ndcg_at_k, "recall": recall_at_k, "mrr": mrr_at_k}


def parse_metric(name: str) -> tuple[str, int]:
    """``"ndcg@10"`` -> ``("ndcg", 10)``; unknown names list the valid forms."""
    kind, sep, cut = name.lower().partition("@")
    if kind not in METRIC_KINDS or not sep or not cut.isdigit() or int(cut) < 1:
        raise InvalidInputError(f"unknown metric {name!r}; use one of {', '.join(METRIC_KINDS)} with @k, e.g. ndcg@10")
    return kind, int(cut)


def ranking_from_scores(scores: Mapping[str, float]) -> list[str]:
    """Doc ids ordered as trec_eval orders a run: score descending, then doc id descending."""
    return [d for d, _ in sorted(scores.items(), key=lambda item: (item[1], item[0]), reverse=True)]


@dataclass
class EvalResult:
    """Mean metrics over the evaluated queries, and each query's own."""

    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    queries: int
    skipped: int = 0  # queries of the qrels without any relevant document

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "queries": self.queries, "skipped_queries": self.skipped}


def evaluate_run(
    run: Mapping[str, Sequence[str]],
    qrels: Mapping[str, Mapping[str, int]],
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> EvalResult:
    """Score ranked doc ids per query against the qrels (a query missing from ``run`` scores 0)."""
    parsed = [(m, *parse_metric(m)) for m in metrics]
    per_query: dict[str, dict[str, float]] = {}
    skipped = 0
    for qid, rels in qrels.items():
        if not any(r > 0 for r in rels.values()):
            skipped += 1
            continue
        ranked = list(run.get(qid, ()))
        per_query[qid] = {name: _METRIC_FUNCS[kind](ranked, rels, cut) for name, kind, cut in parsed}
    n = len(per_query)
    means = {name: (sum(q[name] for q in per_query.values()) / n if n else 0.0) for name, _, _ in parsed}
    return EvalResult(means, per_query, n, skipped)


# ------------------------------------------------------------------------------------------- BEIR data


@dataclass
class BeirDataset:
    """A BEIR folder's queries and qrels for one split (the corpus is streamed, see :func:`iter_corpus`)."""

    directory: Path
    split: str
    corpus_path: Path
    queries: dict[str, str]  # only the queries judged in this split, in file order
    qrels: Qrels


def find_corpus(directory: Path) -> Path:
    for name in ("corpus.jsonl", "corpus.jsonl.gz"):
        if (directory / name).is_file():
            return directory / name
    raise InvalidInputError(f"{directory} has no corpus.jsonl or corpus.jsonl.gz (BEIR layout expected)")


def doc_text(title: str | None, text: str | None) -> str:
    """The indexed text of a BEIR document: ``title + " " + text`` (stripped), as BEIR's dense models do."""
    return f"{title or ''} {text or ''}".strip()


def iter_corpus(path: Path) -> Iterator[dict[str, Any]]:
    """BEIR corpus rows as ``{"id", "text", "title"}`` (text = title + " " + text)."""

    def row(obj: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": str(obj["_id"]),
            "text": doc_text(obj.get("title"), obj.get("text")),
            "title": obj.get("title") or "",
        }

    return read_json_lines(path, row, "a BEIR corpus row")


def read_qrels(path: Path) -> Qrels:
    """``query-id <tab> corpus-id <tab> score`` with a header line (BEIR)."""
    if not path.is_file():
        raise InvalidInputError(f"qrels file {path} does not exist")
    qrels: Qrels = {}
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            return qrels
        if [h.strip() for h in header[:3]] != ["query-id", "corpus-id", "score"]:
            raise InvalidInputError(f"{path}: expected the header 'query-id, corpus-id, score', got {header}")
        for lineno, row in enumerate(reader, 2):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 3:
                raise InvalidInputError(f"{path}:{lineno}: expected 3 tab-separated fields, got {row}")
            try:
                score = int(float(row[2]))
            except ValueError as e:
                raise InvalidInputError(f"{path}:{lineno}: score {row[2]!r} is not a number") from e
            qrels.setdefault(row[0].strip(), {})[row[1].strip()] = score
    return qrels


def read_queries(path: Path) -> dict[str, str]:
    return dict(read_json_lines(path, lambda obj: (str(obj["_id"]), str(obj["text"])), "a BEIR query row"))


def load_beir(directory: str | Path, split: str = "test") -> BeirDataset:
    """Queries and qrels of ``split`` from a BEIR folder (corpus located, not read)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InvalidInputError(f"BEIR data folder {directory} does not exist")
    corpus = find_corpus(directory)
    qrels = read_qrels(directory / "qrels" / f"{split}.tsv")
    queries_path = next(
        (directory / n for n in ("queries.jsonl", "queries.jsonl.gz") if (directory / n).is_file()), None
    )
    if queries_path is None:
        raise InvalidInputError(f"{directory} has no queries.jsonl")
    all_queries = read_queries(queries_path)
    missing = [q for q in qrels if q not in all_queries]
    if missing:
        raise InvalidInputError(f"{len(missing)} query ids of the qrels are not in {queries_path}: {missing[:5]}")
    queries = {q: t for q, t in all_queries.items() if q in qrels}
    return BeirDataset(directory, split, corpus, queries, qrels)


# ------------------------------------------------------------------------------------------- retrieval


@dataclass
class RetrievalReport:
    """What :func:`evaluate_retrieval` measured."""

    result: EvalResult
    run: dict[str, list[tuple[str, float]]]
    settings: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**self.settings, **self.result.to_dict(), "timings": self.timings}


def hits_to_ranking(hits: Sequence[Hit]) -> list[tuple[str, float]]:
    """(doc id, score) best first; sentence hits count for their document (its best sentence)."""
    seen: set[str] = set()
    out: list[tuple[str, float]] = []
    for h in hits:
        doc = h.doc_id if h.doc_id is not None else str(h.id)
        if doc not in seen:
            seen.add(doc)
            out.append((doc, h.score))
    return out


def evaluate_retrieval(
    index: SearchIndex,
    dataset: BeirDataset,
    encoder: Encoder | None,
    mode: Mode = "dense",
    k: int = 100,
    hybrid: HybridParams | None = None,
    reranker: Reranker | None = None,
    candidates: int = 100,
    metrics: Sequence[str] = DEFAULT_METRICS,
    filter: dict[str, Any] | None = None,
    batch_size: int = 64,
) -> RetrievalReport:
    """Run every judged query of ``dataset`` through :func:`semsearch.search.modes.search` and score it.

    ``k`` hits are kept per query (at least the largest metric cut-off). With ``reranker``, the top
    ``candidates`` of the mode are reranked by the cross-encoder and the reranked list is scored.
    ``encoder`` may be None only for lexical search without reranker.
    """
    from semsearch import search as search_mod

    k = max(k, *(parse_metric(m)[1] for m in metrics))
    qids = list(dataset.queries)
    texts = [dataset.queries[q] for q in qids]
    timings: dict[str, float] = {}
    vectors: np.ndarray | None = None
    if mode != "lexical" or reranker is not None:
        if encoder is None:
            raise InvalidInputError(f"{mode} evaluation needs an encoder")
        t0 = time.perf_counter()
        vectors = encoder.encode(texts, batch_size=batch_size)
        timings["encode_ms_per_query"] = 1000 * (time.perf_counter() - t0) / max(1, len(texts))
    depth = candidates if reranker is not None else k
    t0 = time.perf_counter()
    results = search_mod.search(index, texts, vectors, depth, mode, filter, hybrid=hybrid)
    timings["search_ms_per_query"] = 1000 * (time.perf_counter() - t0) / max(1, len(texts))
    if reranker is not None:
        t0 = time.perf_counter()
        results = search_mod.rerank(reranker, texts, results, max(k, candidates))
        timings["rerank_ms_per_query"] = 1000 * (time.perf_counter() - t0) / max(1, len(texts))
    run = {q: hits_to_ranking(hits) for q, hits in zip(qids, results, strict=True)}
    result = evaluate_run({q: [d for d, _ in r] for q, r in run.items()}, dataset.qrels, metrics)
    settings: dict[str, Any] = {
        "dataset": str(dataset.directory),
        "split": dataset.split,
        "mode": mode,
        "k": k,
        "index": str(index.directory),
        "index_type": index.manifest.index_type,
        "model": index.manifest.model,
        "pooling": index.manifest.pooling,
        "documents": index.count,
    }
    if mode == "hybrid":
        from dataclasses import asdict

        settings["hybrid"] = asdict(hybrid or search_mod.DEFAULT_HYBRID)
    if reranker is not None:
        settings["reranker"] = reranker.name
        settings["reranker_backend"] = reranker.backend
        settings["retrieval_weight"] = reranker.fusion.retrieval_weight if reranker.fusion else None
        settings["candidates"] = candidates
    if filter:
        settings["filter"] = filter
    return RetrievalReport(result, run, settings, {k_: round(v, 3) for k_, v in timings.items()})


# ------------------------------------------------------------------------------------------- STS


StsPair = ScoredPair  # an STS pair: sentence1, sentence2, gold score


def read_sts(path: str | Path) -> list[StsPair]:
    """STS-B style TSV (header with ``sentence1``, ``sentence2``, ``score``), read with QUOTE_NONE."""
    return read_scored_pairs(path)


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation of two equally long score lists; 0 when undefined (under two values,
    constant input)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    value = float(spearmanr(a, b).statistic)
    return 0.0 if math.isnan(value) else value


def pearson(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Pearson correlation of two equally long score lists; 0 when undefined (as :func:`spearman`)."""
    from scipy.stats import pearsonr

    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    value = float(pearsonr(a, b).statistic)
    return 0.0 if math.isnan(value) else value


def correlations(predicted: Sequence[float] | np.ndarray, gold: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Spearman and Pearson correlation ×100."""
    if len(predicted) != len(gold) or len(predicted) < 2:
        raise InvalidInputError(
            f"need two equally long lists of at least 2 scores, got {len(predicted)} and {len(gold)}"
        )
    return {"spearman": 100 * spearman(predicted, gold), "pearson": 100 * pearson(predicted, gold)}


def evaluate_sts(
    pairs: Sequence[StsPair], encoder: Encoder, reranker: Reranker | None = None, batch_size: int = 64
) -> dict[str, Any]:
    """Correlations of the cosine (and of the reranker, fused with the cosine when it stores statistics)."""
    if not pairs:
        raise InvalidInputError("no STS pairs to evaluate")
    gold = [p.score for p in pairs]
    a = encoder.encode([p.sentence1 for p in pairs], batch_size=batch_size)
    b = encoder.encode([p.sentence2 for p in pairs], batch_size=batch_size)
    cosine = np.einsum("nd,nd->n", a, b)
    out: dict[str, Any] = {"pairs": len(pairs), "cosine": correlations(cosine, gold)}
    if reranker is not None:
        texts = [(p.sentence1, p.sentence2) for p in pairs]
        out["reranker"] = correlations(reranker.score_pairs(texts, batch_size=batch_size), gold)
        if reranker.fusion is not None and reranker.fusion.pairwise_stats is not None:
            fused = reranker.score_pairs(texts, cosine_scores=cosine.tolist(), batch_size=batch_size)
            out["reranker_fused"] = correlations(fused, gold)
    return out
