"""The one backend mechanism of the encoder and the reranker: a *runner* turns a tokenised batch into model output.

Both models work in three steps (infinity's ``encode_pre`` / ``encode_core`` / ``encode_post``):

* **pre** (the model's own): tokenise, batch by length, pad to int64 numpy ``input_ids``,
  ``attention_mask`` [, ``token_type_ids``];
* **core** (here): ``runner(features) -> float32 numpy``, the transformer's ``last_hidden_state``
  (B, T, H) for ``kind="encoder"``, its ``logits`` (B, L) for ``kind="cross-encoder"``;
* **post** (the model's own): pooling + L2 normalisation (encoder), the logit column (reranker).

:func:`open_runner` makes a runner for a backend name: ``torch`` (:class:`TorchRunner`, the transformers
model's forward) or ``onnx`` / ``onnx-int8`` (:class:`~semsearch.models.onnx.OnnxModel`, exported and
cached under the model fingerprint). Device handling lives in :class:`TorchRunner` and nowhere else.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np

if TYPE_CHECKING:
    import torch

    from semsearch.models.onnx import ModelSource

Kind = Literal["encoder", "cross-encoder"]
RunnerBackend = Literal["torch", "onnx", "onnx-int8"]
RUNNER_BACKENDS: tuple[str, ...] = get_args(RunnerBackend)
OUTPUTS: dict[str, str] = {"encoder": "last_hidden_state", "cross-encoder": "logits"}

Runner = Callable[[Mapping[str, np.ndarray]], np.ndarray]


@dataclass(frozen=True)
class RunnerOptions:
    """How a runner runs: ONNX cache folder and onnxruntime threading/arena (the torch runner ignores them)."""

    cache_dir: Path | None = None
    num_threads: int | None = None
    spinning: bool = False  # onnxruntime's intra-op spin-waiting (see OnnxModel)
    arena_keep_tokens: int | None = None


class TorchRunner:
    """A transformers model's forward as a runner, on the model's own device.

    Features arrive as CPU numpy arrays; they are moved to the device the model's parameters are on
    (wherever :meth:`to` or the caller put it), and the output comes back as float32 numpy on the CPU.
    This is the only place the encoder and the reranker handle a torch device.
    """

    def __init__(self, module: torch.nn.Module, kind: Kind) -> None:
        self.module = module
        self.output = OUTPUTS[kind]
        self.takes_token_types = "token_type_ids" in forward_parameters(module)

    @property
    def device(self) -> torch.device:
        """Where the model's weights are (the inputs follow them)."""
        return next(self.module.parameters()).device

    def to(self, device: str | torch.device) -> TorchRunner:
        """Move the model to ``device`` (e.g. ``"cuda"``); later batches are fed there."""
        self.module.to(device)
        return self

    def inputs(self, features: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """The model's keyword inputs: ``features`` as tensors on the model's device."""
        import torch

        device = self.device
        inputs = {k: torch.from_numpy(np.asarray(v)).to(device) for k, v in features.items()}
        if not self.takes_token_types:
            inputs.pop("token_type_ids", None)
        return inputs

    def __call__(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        import torch

        inputs = self.inputs(features)
        with torch.inference_mode():
            out = getattr(self.module(**inputs), self.output)
        return np.asarray(out.float().cpu().numpy())


def open_runner(
    backend: str,
    kind: Kind,
    model: ModelSource,
    *,
    model_dir: Path | None,
    fingerprint: str | None,
    options: RunnerOptions = RunnerOptions(),  # frozen: one shared default is safe
) -> Runner:
    """The runner of ``backend`` for a model of ``kind``.

    ``model`` is the transformers model or a function that loads it: the ONNX backends call it only when
    the export is not cached (so a cached model runs without importing torch); they need the model's
    ``fingerprint`` (:func:`semsearch.models.source.model_fingerprint`), the cache key.
    """
    if backend == "torch":
        from semsearch.models.onnx import _load

        return TorchRunner(_load(model), kind)
    if backend not in RUNNER_BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of: {', '.join(RUNNER_BACKENDS)}")
    if fingerprint is None:
        raise ValueError(f"the {backend} backend needs the model's fingerprint (its cache key)")
    from semsearch.models.onnx import OnnxModel

    onnx_model = OnnxModel(
        model,
        model_dir,
        fingerprint,
        kind=kind,
        variant=backend,  # type: ignore[arg-type]
        cache_dir=options.cache_dir,
        num_threads=options.num_threads,
        spinning=options.spinning,
        arena_keep_tokens=options.arena_keep_tokens,
    )
    return onnx_model.run


def forward_parameters(module: Any) -> set[str]:
    """The keyword arguments a module's ``forward`` accepts (empty when it cannot be inspected)."""
    try:
        return set(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return set()
