"""Fixtures of the compatible-route and client tests: a small reranker whose card fuses pairwise.

Plugin module (``pytest_plugins = ["app_fixtures", "compat_fixtures"]``), like ``app_fixtures``.
The reranker is a real (untrained) CrossEncoder on the packaged MiniLM weights with a fresh one-output
head; its ``semsearch_reranker.json`` configures z-score fusion *with* stored pairwise statistics and
symmetric training, the shape of the card ``make reranker`` writes (which is what /rerank serves by
default). Its order is arbitrary but deterministic: the service must reproduce the core's scores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from semsearch.models.reranker import RERANKER_META_FILE
from semsearch.models.source import resolve_model

PAIRWISE_FUSION = {
    "mode": "zscore",
    "weight": 0.4,
    "pairwise_stats": {"ce_mean": 0.05, "ce_std": 0.2, "cos_mean": 0.3, "cos_std": 0.25},
}


@pytest.fixture(scope="session")
def compat_reranker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sentence_transformers import CrossEncoder

    out = tmp_path_factory.mktemp("compat-reranker") / "reranker"
    torch.manual_seed(1)
    CrossEncoder(str(resolve_model(None).path), num_labels=1).save(str(out))
    meta = {"base_model": "sentence-transformers/all-MiniLM-L6-v2", "fusion": PAIRWISE_FUSION}
    meta["hyperparameters"] = {"symmetric": True}
    (out / RERANKER_META_FILE).write_text(json.dumps(meta))
    return out
