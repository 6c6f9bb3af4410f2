"""Score normalisation over one list of scores: the one home of z-score and min-max.

Both fusions use it: hybrid search (:func:`semsearch.search.modes.fuse_candidates`, ``minmax``/``zscore``
over a query's candidate union) and reranker fusion (:func:`semsearch.models.reranker.fuse_logits`, z-scores
per query or with stored dev statistics). A list without spread (constant, one element) normalises
to zeros: it carries no ranking information.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

NORMALIZERS = ("minmax", "zscore")


def zscore(values: Sequence[float] | np.ndarray, mean: float | None = None, std: float | None = None) -> np.ndarray:
    """``(x - mean) / std`` (statistics of ``values`` unless given); zeros when ``std`` is 0 or undefined."""
    arr = np.asarray(values, dtype=np.float64)
    if not arr.size:
        return arr
    mu = float(arr.mean()) if mean is None else float(mean)
    sigma = float(arr.std()) if std is None else float(std)
    if sigma <= 0.0 or not math.isfinite(sigma):
        return np.zeros_like(arr)
    return (arr - mu) / sigma


def minmax(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """``(x - min) / (max - min)`` into [0, 1]; zeros when all values are equal."""
    arr = np.asarray(values, dtype=np.float64)
    if not arr.size:
        return arr
    low = float(arr.min())
    span = float(arr.max()) - low
    return (arr - low) / span if span > 0 else np.zeros_like(arr)


def normalize(values: Sequence[float] | np.ndarray, method: str) -> np.ndarray:
    """``values`` normalised by ``method`` (one of :data:`NORMALIZERS`)."""
    if method == "minmax":
        return minmax(values)
    if method == "zscore":
        return zscore(values)
    raise ValueError(f"unknown score normalisation {method!r} (known: {', '.join(NORMALIZERS)})")
