"""Evaluation during and after training: the dev metric, the final dev/test metrics, fusion tuning.

Fusion: the shipped score may combine the cross-encoder logit with the bi-encoder cosine, each
z-normalised, ``(1 - w) * z(ce) + w * z(cos)``; ``w`` is grid-searched on the dev set only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from semsearch.eval.evaluation import pearson, spearman
from semsearch.ingest.readers import ScoredPair
from semsearch.models.reranker import fuse_logits
from semsearch.training.config import DEFAULT_FUSION_GRID, RelevanceExample, TrainConfig
from semsearch.training.data import TrainingData
from semsearch.training.model import default_base_model, load_bi_encoder, predict_logits

FUSION_FORMULA = "(1 - weight) * z(cross_encoder_logit) + weight * z(bi_encoder_cosine)"
RETRIEVAL_FUSION_FORMULA = "(1 - weight) * z(cross_encoder_logit) + weight * z(retrieval_score)"


# ------------------------------------------------------------------------------------ during training


def scored_dev_metric(model: Any, dev: Sequence[ScoredPair], batch_size: int) -> float:
    """Dev metric during training: Spearman of the (sentence1, sentence2) logits."""
    logits = predict_logits(model, [(p.sentence1, p.sentence2) for p in dev], batch_size)
    return spearman(logits, [p.score for p in dev])


def relevance_dev_metric(model: Any, dev: Sequence[RelevanceExample], batch_size: int) -> float:
    """Dev metric for relevance data: MRR of the first positive among positives + negatives."""
    reciprocal: list[float] = []
    for ex in dev:
        if not ex.positives or not ex.negatives:
            continue
        candidates = list(ex.positives) + list(ex.negatives)
        logits = predict_logits(model, [(ex.query, c) for c in candidates], batch_size)
        order = np.argsort(-logits, kind="stable")
        rank = next(r for r, i in enumerate(order, start=1) if i < len(ex.positives))
        reciprocal.append(1.0 / rank)
    return float(np.mean(reciprocal)) if reciprocal else 0.0


def dev_metric(model: Any, data: TrainingData, batch_size: int) -> float | None:
    """The early-stopping metric named by ``data.dev_metric_name`` (None without dev data)."""
    if data.dev_scored:
        return scored_dev_metric(model, data.dev_scored, batch_size)
    if data.dev_relevance:
        return relevance_dev_metric(model, data.dev_relevance, batch_size)
    return None


# ---------------------------------------------------------------------------------------------- fusion


def tune_fusion_weight(
    ce: np.ndarray, cos: np.ndarray, gold: np.ndarray, grid: Sequence[float] = DEFAULT_FUSION_GRID
) -> tuple[float, float, dict[str, float]]:
    """Grid-search the cosine weight maximising Spearman (z-statistics from these same dev scores).

    Returns ``(best_weight, best_spearman, {weight: spearman})``; ties go to the smaller weight.
    """
    curve = {f"{w:.2f}": spearman(fuse_logits(ce, cos, w), gold) for w in grid}
    best_w, best = grid[0], -math.inf
    for w in grid:
        value = curve[f"{w:.2f}"]
        if value > best + 1e-12:
            best_w, best = w, value
    return float(best_w), float(best), curve


def _sts_fusion(
    arrays: dict[str, np.ndarray], gold: np.ndarray, config: TrainConfig, source: str | None
) -> tuple[dict[str, Any], float]:
    """The STS-dev-tuned fusion block of the metadata (with the dev statistics that ``score_pairs`` uses)
    and its dev Spearman."""
    weight, best_fused, curve = tune_fusion_weight(arrays["both_orders"], arrays["cosine"], gold, config.fusion_grid)
    fusion = {
        "mode": "zscore",
        "weight": weight,
        "formula": FUSION_FORMULA,
        "cross_encoder_input": "logit" + (" (mean of both pair orders)" if config.symmetric else ""),
        "bi_encoder": _bi_encoder_name(config),
        "retrieval_scope": "per_query",
        "retrieval_weight": config.retrieval_weight,
        "pairwise_stats": {
            "ce_mean": float(arrays["both_orders"].mean()),
            "ce_std": float(arrays["both_orders"].std()),
            "cos_mean": float(arrays["cosine"].mean()),
            "cos_std": float(arrays["cosine"].std()),
        },
        "tuned_on": {
            "data": source,
            "metric": "spearman",
            "grid": [float(w) for w in config.fusion_grid],
            "curve": curve,
        },
    }
    return fusion, best_fused


def _retrieval_fusion(weight: float) -> dict[str, Any]:
    """Per-query fusion only (no STS dev fusion): no pairwise statistics."""
    return {
        "mode": "zscore",
        "weight": weight,
        "retrieval_weight": weight,
        "formula": RETRIEVAL_FUSION_FORMULA,
        "retrieval_scope": "per_query",
    }


# ----------------------------------------------------------------------------------- after training


def cosine_scores(bi_encoder: Any, pairs: Sequence[tuple[str, str]], batch_size: int = 64) -> np.ndarray:
    """Cosine of L2-normalised bi-encoder embeddings for each pair (each distinct text encoded once)."""
    texts = list(dict.fromkeys(t for pair in pairs for t in pair))
    emb = bi_encoder.encode(
        texts,
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    row = {t: i for i, t in enumerate(texts)}
    a = emb[[row[p[0]] for p in pairs]]
    b = emb[[row[p[1]] for p in pairs]]
    return np.asarray((a * b).sum(axis=1), dtype=np.float64)


def _bi_encoder_name(config: TrainConfig) -> str:
    return str(config.bi_encoder) if config.bi_encoder is not None else default_base_model()


@dataclass
class FinalMetrics:
    """The kept model's dev and test metrics and the fusion block (``None`` when there is no fusion)."""

    dev: dict[str, float]
    test: dict[str, float] | None
    fusion: dict[str, Any] | None


class _PairScorer:
    """Scores of the kept model on scored pairs: cross-encoder (forward, both orders) and bi-encoder cosine."""

    def __init__(self, model: Any, config: TrainConfig) -> None:
        self.model = model
        self.symmetric = config.symmetric
        self.batch_size = config.eval_batch_size
        self.bi_encoder = load_bi_encoder(_bi_encoder_name(config))

    def scores(self, pairs: Sequence[ScoredPair]) -> dict[str, np.ndarray]:
        texts = [(p.sentence1, p.sentence2) for p in pairs]
        forward = predict_logits(self.model, texts, self.batch_size)
        backward = forward
        if self.symmetric:
            backward = predict_logits(self.model, [(b, a) for a, b in texts], self.batch_size)
        cos = cosine_scores(self.bi_encoder, texts, self.batch_size)
        return {"cross_encoder": forward, "both_orders": (forward + backward) / 2.0, "cosine": cos}

    def metrics(self, pairs: Sequence[ScoredPair]) -> tuple[dict[str, float], dict[str, np.ndarray], np.ndarray]:
        """Spearman of each score and Pearson of the shipped unfused one; also the scores and gold."""
        arrays = self.scores(pairs)
        gold = np.array([p.score for p in pairs])
        metrics = {
            "cosine_spearman": spearman(arrays["cosine"], gold),
            "cross_encoder_spearman": spearman(arrays["cross_encoder"], gold),
            "both_orders_spearman": spearman(arrays["both_orders"], gold),
            "both_orders_pearson": pearson(arrays["both_orders"], gold),
        }
        return metrics, arrays, gold


def final_evaluation(model: Any, config: TrainConfig, data: TrainingData, best_dev: float | None) -> FinalMetrics:
    """Evaluate the kept model on dev (tuning the fusion there) and test (reported only, never tuned on).

    The test split gets a fused score only when the fusion stores dev statistics (an STS dev fusion): a
    per-query-only fusion (``retrieval_weight`` without it) has none to fuse independent pairs with.
    """
    scorer = _PairScorer(model, config) if data.dev_scored or data.test_scored else None
    dev_metrics: dict[str, float] = {}
    fusion: dict[str, Any] | None = None
    if scorer is not None and data.dev_scored:
        dev_metrics, arrays, gold = scorer.metrics(data.dev_scored)
        if config.fusion:
            source = data.dev_info.source if data.dev_info else None
            fusion, dev_metrics["fusion_spearman"] = _sts_fusion(arrays, gold, config, source)
    elif data.dev_relevance and data.dev_metric_name == "mrr" and best_dev is not None:
        dev_metrics = {"mrr": best_dev}
    if fusion is None and config.retrieval_weight is not None:
        fusion = _retrieval_fusion(config.retrieval_weight)
    test_metrics: dict[str, float] | None = None
    if scorer is not None and data.test_scored:
        test_metrics, arrays, gold = scorer.metrics(data.test_scored)
        if fusion is not None and "pairwise_stats" in fusion:
            fused = fuse_logits(arrays["both_orders"], arrays["cosine"], fusion["weight"], fusion["pairwise_stats"])
            test_metrics["fusion_spearman"] = spearman(fused, gold)
    return FinalMetrics(dev_metrics, test_metrics, fusion)
