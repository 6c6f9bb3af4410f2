"""Cross-encoder reranking: ``Reranker`` wraps a sentence-transformers ``CrossEncoder``.

Scores returned by :meth:`Reranker.score` (query vs candidate texts, retrieval reranking):

* **fused** when the model folder's ``semsearch_reranker.json`` configures fusion (``mode: "zscore"``) and
  the caller passes the retrieval scores of the candidates: ``(1 - w) * z(logit) + w * z(retrieval)``,
  each z-normalised over this query's candidate list. Fused scores are unbounded and only comparable
  within one call (one query's list);
* otherwise the cross-encoder's activation of its logit (``sigmoid(logit)`` in [0, 1] for the usual
  one-output model), exactly what ``CrossEncoder.predict`` returns.

:meth:`Reranker.score_pairs` scores independent pairs (STS): symmetric pairs use the mean logit of both
orders; with ``cosine_scores`` and fusion configured the z-statistics are the dev statistics stored at
training time, so a pair's score does not depend on the other pairs in the call.

Backends: ``"torch"`` (default, the CrossEncoder's own ``predict``: the reference), ``"onnx"`` and ``"onnx-int8"``
(a :class:`FeatureBackend` over the runner :func:`semsearch.models.runner.open_runner` makes, the one backend
mechanism the encoder uses too: the transformer exported/quantised once and cached by the model fingerprint;
``backend_options``: ``cache_dir``, ``num_threads``, ``spinning``, ``arena_keep_tokens``), and ``"auto"``
(the service's default: onnx-int8 where it can be built, else torch; :func:`_load_backend`). Others plug in with
:func:`register_backend`; a backend only has to turn the CrossEncoder's tokenised features into logits
(see :class:`FeatureBackend`).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from semsearch.errors import InvalidInputError, ModelLoadError
from semsearch.score_norm import zscore

logger = logging.getLogger(__name__)

RERANKER_META_FILE = "semsearch_reranker.json"
FUSION_MODES = ("zscore",)


class LogitsBackend(Protocol):
    """Turns (text_a, text_b) pairs into raw logits, shape ``(len(pairs),)``."""

    def logits(self, pairs: Sequence[tuple[str, str]], batch_size: int) -> np.ndarray: ...


BackendFactory = Callable[[Any, "BackendContext"], LogitsBackend]


@dataclass(frozen=True)
class BackendContext:
    """What a backend factory gets besides the loaded ``CrossEncoder``."""

    name_or_path: str
    model_dir: Path | None
    options: Mapping[str, Any]


@dataclass(frozen=True)
class FusionConfig:
    """Fusion of the cross-encoder logit with a bi-encoder/retrieval score (``semsearch_reranker.json``).

    ``weight`` is the cosine weight tuned on the (STS) dev pairs, used by ``score_pairs``;
    ``retrieval_weight`` is the weight of the retrieval score in one query's candidate list (``score``):
    the card's ``retrieval_weight``, or ``weight`` when the card has none (``null``).
    """

    weight: float
    retrieval_weight: float
    mode: str = "zscore"
    pairwise_stats: Mapping[str, float] | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> FusionConfig | None:
        """Parse the ``fusion`` entry; ``None``/``{}``/``{"mode": "none"}`` mean no fusion."""
        if not data or data.get("mode") in (None, "none"):
            return None
        mode = str(data["mode"])
        if mode not in FUSION_MODES:
            raise ModelLoadError(f"unknown fusion mode {mode!r} (known: {', '.join(FUSION_MODES)})")
        weight = float(data["weight"])
        raw_retrieval = data.get("retrieval_weight")
        retrieval = None if raw_retrieval is None else float(raw_retrieval)
        for value in (weight, retrieval):
            if value is not None and not 0.0 <= value <= 1.0:
                raise ModelLoadError(f"fusion weights must be in [0, 1], got {value}")
        stats = data.get("pairwise_stats")
        return cls(
            weight,
            weight if retrieval is None else retrieval,
            mode=mode,
            pairwise_stats=dict(stats) if stats else None,
        )


def fuse_logits(
    ce_logits: Sequence[float] | np.ndarray,
    other: Sequence[float] | np.ndarray,
    weight: float,
    stats: Mapping[str, float] | None = None,
) -> np.ndarray:
    """Reranker fusion of cross-encoder logits with another score (retrieval or cosine):
    ``(1 - weight) * z(ce_logits) + weight * z(other)``.

    Without ``stats`` the z-statistics are those of the given lists (per query); with ``stats``
    (``ce_mean``, ``ce_std``, ``cos_mean``, ``cos_std``) they are fixed (pairwise STS scoring).
    """
    ce = np.asarray(ce_logits, dtype=np.float64)
    ot = np.asarray(other, dtype=np.float64)
    if ce.shape != ot.shape:
        raise InvalidInputError(f"fusion inputs differ in length: {ce.shape[0]} vs {ot.shape[0]}")
    if stats is None:
        ce_z, ot_z = zscore(ce), zscore(ot)
    else:
        ce_z = zscore(ce, stats["ce_mean"], stats["ce_std"])
        ot_z = zscore(ot, stats["cos_mean"], stats["cos_std"])
    return (1.0 - weight) * ce_z + weight * ot_z


class FeatureBackend:
    """A backend from a feature runner: tokenises with the CrossEncoder, ``run(features) -> logits``.

    An ONNX backend is ``FeatureBackend(cross_encoder, OnnxModel(...).run)``: tokenisation, length-sorted
    batching and order restoration are shared with the torch path.
    """

    def __init__(self, cross_encoder: Any, run: Callable[[dict[str, Any]], Any]) -> None:
        self.cross_encoder = cross_encoder
        self.run = run

    def logits(self, pairs: Sequence[tuple[str, str]], batch_size: int) -> np.ndarray:
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        order = np.argsort([-(len(a) + len(b)) for a, b in pairs], kind="stable")
        out = np.empty(len(pairs), dtype=np.float32)
        for start in range(0, len(pairs), batch_size):
            idx = order[start : start + batch_size]
            features = self.cross_encoder.preprocess([pairs[i] for i in idx])
            result = self.run(features)
            if hasattr(result, "detach"):  # a torch tensor
                result = result.detach().float().cpu().numpy()
            out[idx] = np.asarray(result, dtype=np.float32).reshape(len(idx), -1)[:, 0]
        return out


class TorchBackend:
    """The default backend: the CrossEncoder's own torch forward, raw logits (no activation)."""

    def __init__(self, cross_encoder: Any, context: BackendContext) -> None:
        self.cross_encoder = cross_encoder

    def logits(self, pairs: Sequence[tuple[str, str]], batch_size: int) -> np.ndarray:
        import torch

        if not pairs:
            return np.zeros(0, dtype=np.float32)
        scores = self.cross_encoder.predict(
            list(pairs),
            batch_size=batch_size,
            activation_fn=torch.nn.Identity(),
            show_progress_bar=False,
            convert_to_numpy=True,
        )
        return np.asarray(scores, dtype=np.float32).reshape(-1)


def _onnx_factory(variant: str) -> BackendFactory:
    """``FeatureBackend`` over a cached ONNX export of the CrossEncoder's transformer (local folders only)."""

    def factory(cross_encoder: Any, context: BackendContext) -> LogitsBackend:
        from semsearch.models.runner import RunnerOptions, open_runner
        from semsearch.models.source import model_fingerprint

        if context.model_dir is None:
            raise ModelLoadError(
                f"the {variant} reranker backend needs a local model folder (got {context.name_or_path!r})"
            )
        cache_dir = context.options.get("cache_dir")
        options = RunnerOptions(
            cache_dir=Path(cache_dir) if cache_dir else None,
            num_threads=context.options.get("num_threads"),
            spinning=bool(context.options.get("spinning", False)),
            arena_keep_tokens=context.options.get("arena_keep_tokens"),
        )
        try:
            run = open_runner(
                variant,
                "cross-encoder",
                cross_encoder.model,
                model_dir=context.model_dir,
                fingerprint=model_fingerprint(context.model_dir),
                options=options,
            )
        except RuntimeError as exc:
            raise ModelLoadError(f"cannot build the {variant} reranker for {context.name_or_path!r}: {exc}") from exc
        return FeatureBackend(cross_encoder, run)

    return factory


_BACKENDS: dict[str, BackendFactory] = {
    "torch": TorchBackend,
    "onnx": _onnx_factory("onnx"),
    "onnx-int8": _onnx_factory("onnx-int8"),
}


AUTO_BACKEND = "onnx-int8"


RerankerBackend = Literal["auto", "torch", "onnx", "onnx-int8"]  # the built-in choices (settings, CLI)


def _load_backend(backend: str, cross_encoder: Any, context: BackendContext) -> tuple[str, LogitsBackend]:
    """``(name, backend)``; ``auto`` is onnx-int8 for a local folder whose export can be cached, else torch.

    onnx-int8 reranks 1.4-2.2x faster than torch within the quality guard (docs/benchmarks.md 6.6); it needs a
    local folder and a writable ONNX cache (or the export already in it), which a read-only container or
    a hub name lacks: then ``auto`` says why in one warning and runs torch."""
    if backend != "auto":
        return backend, _BACKENDS[backend](cross_encoder, context)
    if context.model_dir is not None:
        try:
            return AUTO_BACKEND, _BACKENDS[AUTO_BACKEND](cross_encoder, context)
        except (ModelLoadError, OSError) as exc:
            logger.warning("reranker backend auto: %s; using torch", exc)
    return "torch", _BACKENDS["torch"](cross_encoder, context)


def register_backend(name: str, factory: BackendFactory) -> None:
    """Make ``Reranker(..., backend=name)`` use ``factory(cross_encoder, context) -> LogitsBackend``."""
    _BACKENDS[name] = factory


def available_backends() -> list[str]:
    """Names accepted by ``Reranker(backend=...)``."""
    return sorted(_BACKENDS)


def read_reranker_metadata(model_dir: str | Path) -> dict[str, Any] | None:
    """The ``semsearch_reranker.json`` of a model folder, or ``None`` when absent."""
    path = Path(model_dir) / RERANKER_META_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"unreadable {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return data


class Reranker:
    """Rerank candidate texts for a query with a cross-encoder (optionally fused with retrieval scores).

    ``name_or_path`` is a local CrossEncoder folder (e.g. one written by ``train_cross_encoder``) or a
    Hugging Face hub name (needs the network or a warm cache). ``fusion=False`` ignores a configured
    fusion; ``retrieval_weight`` sets the weight of the retrieval score used by :meth:`score` (per-query
    lists), overriding the folder's ``retrieval_weight``/``weight``, and enables per-query fusion for
    folders without one (``fusion_weight`` is its deprecated old name).
    """

    def __init__(
        self,
        name_or_path: str | Path,
        *,
        backend: str = "torch",
        device: str = "cpu",
        max_length: int | None = None,
        fusion: bool = True,
        retrieval_weight: float | None = None,
        backend_options: Mapping[str, Any] | None = None,
        fusion_weight: float | None = None,
    ) -> None:
        from sentence_transformers import CrossEncoder

        if fusion_weight is not None:
            warnings.warn(
                "Reranker(fusion_weight=...) is deprecated; use retrieval_weight=...", DeprecationWarning, stacklevel=2
            )
            if retrieval_weight is None:
                retrieval_weight = fusion_weight

        self.name = str(name_or_path)
        local = Path(name_or_path).expanduser()
        self.path: Path | None = local.resolve() if local.exists() else None
        if backend != "auto" and backend not in _BACKENDS:
            raise InvalidInputError(
                f"unknown reranker backend {backend!r} (available: auto, {', '.join(available_backends())})"
            )
        try:
            self.cross_encoder = CrossEncoder(
                str(self.path) if self.path else self.name,
                device=device,
                max_length=max_length,
                local_files_only=self.path is not None,
            )
        except Exception as exc:
            raise ModelLoadError(f"cannot load cross-encoder {self.name!r}: {exc}") from exc
        if self.cross_encoder.num_labels != 1:
            raise ModelLoadError(
                f"{self.name!r} has {self.cross_encoder.num_labels} outputs; a reranker needs exactly one"
            )
        self.metadata: dict[str, Any] = (read_reranker_metadata(self.path) if self.path else None) or {}
        config = FusionConfig.from_json(self.metadata.get("fusion")) if fusion else None
        if fusion and retrieval_weight is not None:
            if not 0.0 <= retrieval_weight <= 1.0:
                raise InvalidInputError(f"retrieval_weight must be in [0, 1], got {retrieval_weight}")
            if config is None:  # e.g. a hub cross-encoder: per-query fusion only
                config = FusionConfig(retrieval_weight, retrieval_weight)
            else:
                config = replace(config, retrieval_weight=retrieval_weight)
        self.fusion: FusionConfig | None = config
        self.symmetric_default = bool((self.metadata.get("hyperparameters") or {}).get("symmetric", True))
        context = BackendContext(self.name, self.path, dict(backend_options or {}))
        self.backend, self._backend = _load_backend(backend, self.cross_encoder, context)
        logger.info("reranker %s loaded (backend %s, fusion %s)", self.name, self.backend, self.fusion)

    @property
    def max_length(self) -> int:
        """Tokens the cross-encoder reads per (query, text) pair; longer pairs are truncated."""
        return int(self.cross_encoder.max_seq_length)

    # ------------------------------------------------------------------ scoring

    def logits(self, pairs: Sequence[tuple[str, str]], batch_size: int = 32) -> np.ndarray:
        """Raw cross-encoder logits for (text_a, text_b) pairs."""
        if batch_size < 1:
            raise InvalidInputError("batch_size must be >= 1")
        return self._backend.logits([(str(a), str(b)) for a, b in pairs], batch_size)

    def activate(self, logits: np.ndarray) -> np.ndarray:
        """The CrossEncoder's activation (sigmoid for one-output models), as ``predict`` applies it."""
        import torch  # lazily: the search service imports this module without a reranker

        tensor = torch.from_numpy(np.asarray(logits, dtype=np.float32))
        activation = self.cross_encoder.activation_fn or torch.nn.Identity()
        with torch.inference_mode():
            return np.asarray(activation(tensor).numpy(), dtype=np.float32)

    def score(
        self,
        query: str,
        texts: Sequence[str],
        retrieval_scores: Sequence[float] | None = None,
        batch_size: int = 32,
    ) -> np.ndarray:
        """Final scores of ``texts`` for ``query`` (higher is better), in input order.

        Fused (per-query z-scores, see module doc) when fusion is configured and ``retrieval_scores``
        are given; otherwise ``sigmoid(logit)`` (the CrossEncoder's ``predict``).
        """
        if retrieval_scores is not None and len(retrieval_scores) != len(texts):
            raise InvalidInputError(
                f"{len(retrieval_scores)} retrieval scores for {len(texts)} texts",
            )
        if not texts:
            return np.zeros(0, dtype=np.float64)
        logits = self.logits([(query, t) for t in texts], batch_size)
        if self.fusion is not None and retrieval_scores is not None:
            return fuse_logits(logits, retrieval_scores, self.fusion.retrieval_weight)
        return self.activate(logits).astype(np.float64)

    def rank(
        self,
        query: str,
        texts: Sequence[str],
        retrieval_scores: Sequence[float] | None = None,
        top_k: int | None = None,
        batch_size: int = 32,
    ) -> list[tuple[int, float]]:
        """``(index, score)`` of ``texts`` best first (stable for ties), cut to ``top_k``."""
        scores = self.score(query, texts, retrieval_scores, batch_size)
        order = np.argsort(-scores, kind="stable")
        return [(int(i), float(scores[i])) for i in order[:top_k]]

    def score_pairs(
        self,
        pairs: Sequence[tuple[str, str]],
        symmetric: bool | None = None,
        cosine_scores: Sequence[float] | None = None,
        batch_size: int = 32,
    ) -> np.ndarray:
        """Scores of independent pairs (STS). ``symmetric`` (default: as trained) averages both orders'
        logits. With ``cosine_scores`` and fusion whose dev statistics are stored: the fused score;
        otherwise ``sigmoid`` of the (mean) logit.
        """
        if cosine_scores is not None and len(cosine_scores) != len(pairs):
            raise InvalidInputError(f"{len(cosine_scores)} cosine scores for {len(pairs)} pairs")
        if not pairs:
            return np.zeros(0, dtype=np.float64)
        sym = self.symmetric_default if symmetric is None else symmetric
        logits = self.logits(pairs, batch_size).astype(np.float64)
        if sym:
            logits = (logits + self.logits([(b, a) for a, b in pairs], batch_size)) / 2.0
        fusion = self.fusion
        if fusion is not None and cosine_scores is not None:
            if fusion.pairwise_stats is None:
                raise InvalidInputError("this reranker stores no pairwise fusion statistics")
            return fuse_logits(logits, cosine_scores, fusion.weight, fusion.pairwise_stats)
        return self.activate(logits.astype(np.float32)).astype(np.float64)

    def score_texts(
        self,
        query: str,
        texts: Sequence[str],
        cosine_scores: Sequence[float] | None = None,
        batch_size: int = 32,
    ) -> tuple[np.ndarray, str]:
        """The score this reranker's card defines for caller-supplied ``texts`` (the service's ``/rerank``).

        Returns ``(scores, kind)``:

        * ``"fused_pairwise"``: fusion with stored dev statistics and ``cosine_scores`` given: each
          ``(query, text)`` scored as :meth:`score_pairs` does (both orders when trained symmetric, the
          card's STS ``weight``), the product ``indexer eval sts`` measures; a text's score does not
          depend on the other texts of the call;
        * ``"fused_per_query"``: fusion without stored statistics: :meth:`score` with the cosines as
          retrieval scores (per-call z-scores, as search reranking does; comparable only within a call);
        * ``"sigmoid"``: no fusion configured or no ``cosine_scores``: ``sigmoid(logit)``.
        """
        fusion = self.fusion
        if fusion is None or cosine_scores is None:
            return self.score(query, texts, batch_size=batch_size), "sigmoid"
        if fusion.pairwise_stats is not None:
            pairs = [(query, t) for t in texts]
            return self.score_pairs(pairs, cosine_scores=cosine_scores, batch_size=batch_size), "fused_pairwise"
        return self.score(query, texts, retrieval_scores=cosine_scores, batch_size=batch_size), "fused_per_query"

    def token_count(self, query: str, texts: Sequence[str]) -> int:
        """Tokens the cross-encoder reads for ``(query, text)`` pairs (truncated at its ``max_length``)."""
        if not texts:
            return 0
        tokenizer = self.cross_encoder.tokenizer
        enc = tokenizer(
            [query] * len(texts),
            list(texts),
            truncation=True,
            max_length=self.cross_encoder.max_seq_length,
            verbose=False,
        )
        return sum(len(ids) for ids in enc["input_ids"])
