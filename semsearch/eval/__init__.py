"""Retrieval (BEIR) and STS evaluation over :func:`semsearch.search.search`."""

from semsearch.eval.evaluation import (
    BeirDataset,
    RetrievalReport,
    correlations,
    doc_text,
    evaluate_retrieval,
    evaluate_run,
    evaluate_sts,
    iter_corpus,
    load_beir,
    ndcg_at_k,
    read_sts,
    spearman,
)

__all__ = [
    "BeirDataset",
    "RetrievalReport",
    "correlations",
    "doc_text",
    "evaluate_retrieval",
    "evaluate_run",
    "evaluate_sts",
    "iter_corpus",
    "load_beir",
    "ndcg_at_k",
    "read_sts",
    "spearman",
]
