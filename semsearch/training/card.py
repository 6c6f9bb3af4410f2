"""What a trained reranker folder says about itself: ``semsearch_reranker.json`` and ``model_card.md``."""

from __future__ import annotations

import importlib.metadata
import platform
import time
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from semsearch.training.config import TrainConfig
from semsearch.training.data import TrainingData
from semsearch.training.evaluate import FinalMetrics
from semsearch.training.loop import LoopResult
from semsearch.training.model import describe_model

MODEL_CARD_FILE = "model_card.md"
META_FORMAT_VERSION = 1


def versions() -> dict[str, str]:
    """The library versions a model was trained with."""
    import sentence_transformers
    import transformers

    try:
        semsearch_version = importlib.metadata.version("semsearch")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        semsearch_version = "unknown"
    return {
        "semsearch": semsearch_version,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "numpy": np.__version__,
    }


def build_metadata(
    config: TrainConfig,
    data: TrainingData,
    loop: LoopResult,
    final: FinalMetrics,
    *,
    base_model: str,
    hyperparameters: dict[str, Any],
    timings: dict[str, Any],
) -> dict[str, Any]:
    """The content of ``semsearch_reranker.json`` (``docs/reranker.md`` describes the fields)."""
    return {
        "format_version": META_FORMAT_VERSION,
        "kind": "cross-encoder",
        "num_labels": 1,
        "base_model": base_model,
        "base_model_name": describe_model(base_model),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": data.describe(config.relevance_source),
        "hyperparameters": hyperparameters,
        "seed": config.seed,
        "dev_metric": data.dev_metric_name,
        "history": [asdict(h) for h in loop.history],
        "best_epoch": loop.best_epoch,
        "best_step": loop.best_step,
        "best_dev_metric": loop.best_dev_metric,
        "stopped_early": loop.stopped_early,
        "dev_metrics": final.dev,
        "test_metrics": final.test,
        "fusion": final.fusion,
        "score": {
            "unfused": "sigmoid(logit)",
            "fused": "zscore fusion (see fusion)" if final.fusion else None,
            "symmetric_pairs": "mean of both orders' logits" if config.symmetric else None,
        },
        "timings": timings,
        "versions": versions(),
    }


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100.0 * value:.2f}"


def render_model_card(meta: dict[str, Any]) -> str:
    """A human-readable ``model_card.md`` from the metadata written to ``semsearch_reranker.json``."""
    sections = (_data_section, _training_section, _results_section, _fusion_section, _timings_section)
    return "\n".join(line for section in sections for line in section(meta))


def _data_section(meta: dict[str, Any]) -> list[str]:
    lines = [
        "# semsearch cross-encoder reranker",
        "",
        "A sentence-transformers `CrossEncoder` (one output) fine-tuned from "
        f"{meta.get('base_model_name') or meta['base_model']} (`{meta['base_model']}`) "
        "with semsearch's own training loop (`semsearch.training.train_cross_encoder`).",
        "",
        "## Training data",
        "",
    ]
    for key in ("train_scored", "train_relevance", "dev", "test"):
        info = meta["data"].get(key)
        if info:
            details = ", ".join(f"{k}={v}" for k, v in info.items())
            lines.append(f"- **{key}**: {details}")
    return [
        *lines,
        "",
        "STS-B (if used) is the STS Benchmark of Agirre et al. (SemEval 2017): scores CC BY-SA 4.0, "
        "sentence texts under their own source licences (see `data/stsb/README.md`).",
        "",
    ]


def _training_section(meta: dict[str, Any]) -> list[str]:
    lines = ["## Hyper-parameters", ""]
    lines += [f"- {k}: {v}" for k, v in meta["hyperparameters"].items()]
    lines += [f"- seed: {meta['seed']}", ""]
    lines += [
        "## Dev evaluations during training",
        "",
        "| epoch | step | train loss | dev metric |",
        "|---|---|---|---|",
    ]
    for h in meta["history"]:
        dev = "–" if h["dev_metric"] is None else f"{h['dev_metric']:.4f}"
        lines.append(f"| {h['epoch']} | {h['step']} | {h['train_loss']:.4f} | {dev} |")
    return [
        *lines,
        "",
        f"Kept checkpoint: epoch {meta['best_epoch']}, step {meta['best_step']} "
        f"(dev {meta['dev_metric']} {_fmt(meta['best_dev_metric'])}); "
        f"stopped early: {meta['stopped_early']}.",
        "",
    ]


_RESULT_ROWS = (
    ("cosine_spearman", "bi-encoder cosine"),
    ("cross_encoder_spearman", "cross-encoder (sentence1, sentence2)"),
    ("both_orders_spearman", "cross-encoder, both orders averaged"),
    ("fusion_spearman", "fusion (shipped)"),
)


def _results_section(meta: dict[str, Any]) -> list[str]:
    dev_m, test_m = meta.get("dev_metrics") or {}, meta.get("test_metrics") or {}
    if not dev_m and not test_m:
        return []
    lines = ["## Results (Spearman ×100)", "", "| score | dev | test |", "|---|---|---|"]
    for key, label in _RESULT_ROWS:
        if key in dev_m or key in test_m:
            lines.append(f"| {label} | {_pct(dev_m.get(key))} | {_pct(test_m.get(key))} |")
    return [*lines, ""]


def _fusion_section(meta: dict[str, Any]) -> list[str]:
    fusion = meta.get("fusion")
    if not fusion:
        return []
    if "pairwise_stats" not in fusion:  # a given per-query weight, no STS dev fusion
        how = (
            "(given for retrieval reranking). The z-statistics are computed per query over its candidate "
            "list (`retrieval_scope: per_query`); independent pairs are not fused."
        )
    else:
        how = (
            "(grid-searched on dev only). For STS pairs the z-statistics are the dev statistics in "
            "`pairwise_stats`; for retrieval reranking they are computed per query over its candidate list "
            "(`retrieval_scope: per_query`)."
        )
    return ["## Score fusion", "", f"`{fusion['formula']}` with weight {fusion['weight']} {how}", ""]


def _timings_section(meta: dict[str, Any]) -> list[str]:
    timings = meta["timings"]
    return [
        "## Timings",
        "",
        f"Training {timings['train_seconds']} s, total {timings['total_seconds']} s "
        f"on {meta['hyperparameters']['num_threads']} CPU thread(s) (load average at the end: "
        f"{timings.get('load_average_at_end')}; other processes slow these timings down).",
        "",
        "## Limitations",
        "",
        "Trained on English sentence-similarity data: scores measure semantic similarity, not "
        "question-answer relevance; long passages are truncated to `max_length` tokens.",
        "",
    ]
