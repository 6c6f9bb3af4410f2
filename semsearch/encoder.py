"""The bi-encoder: text -> L2-normalised sentence embeddings with an explicit pooling choice.

Pooling is decided here and nowhere else. ``mean`` averages token outputs over the attention
mask; ``cls`` takes the first ([CLS]) token output. The model is always assembled from its own
transformer module plus our Pooling and Normalize modules, so a model shipped with mean pooling
really uses CLS when CLS is asked for. Because embeddings are unit length, inner product equals
cosine similarity.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast, get_args

import numpy as np

from semsearch.choices import check_choice
from semsearch.errors import ModelLoadError, ModelMismatchError
from semsearch.models import ResolvedModel, model_fingerprint, resolve_model

if TYPE_CHECKING:
    from semsearch.manifest import Manifest

log = logging.getLogger(__name__)

Pooling = Literal["mean", "cls"]
Backend = Literal["torch", "onnx", "onnx-int8"]
POOLINGS: tuple[str, ...] = get_args(Pooling)
BACKENDS: tuple[str, ...] = get_args(Backend)


@dataclass
class EncodeStats:
    """What an encoding run did: counts and time, for logs and summaries."""

    texts: int = 0
    truncated: int = 0
    seconds: float = 0.0

    @property
    def per_second(self) -> float:
        return self.texts / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Encoder:
    """A sentence encoder with a fixed pooling and backend.

    ``model`` is a hub name, a local folder, or ``None`` for the packaged all-MiniLM-L6-v2.
    """

    model: str | None = None
    pooling: Pooling = "mean"
    backend: Backend = "torch"
    max_seq_length: int | None = None
    num_threads: int | None = None
    cache_dir: str | None = None
    spinning: bool = True  # ONNX backends: spin-wait between operators (throughput) or sleep (shared CPUs)
    stats: EncodeStats = field(default_factory=EncodeStats, init=False)

    def __post_init__(self) -> None:
        check_choice(self.pooling, POOLINGS, "pooling")
        check_choice(self.backend, BACKENDS, "backend")
        import torch
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.base.modules import Normalize
        from sentence_transformers.sentence_transformer.modules import Pooling as PoolingModule

        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        self.resolved: ResolvedModel = resolve_model(self.model)
        self.fingerprint = model_fingerprint(self.resolved.path)
        try:
            base = SentenceTransformer(str(self.resolved.path), device="cpu")
        except Exception as e:
            raise ModelLoadError(f"could not load model {self.resolved.name!r}: {e}") from e
        transformer: Any = base[0]
        if self.max_seq_length is not None:
            transformer.max_seq_length = self.max_seq_length
        dim = base.get_embedding_dimension()
        if not dim:
            raise ModelLoadError(f"model {self.resolved.name!r} does not report an embedding dimension")
        self.dim = int(dim)
        self.model_pooling = next((getattr(m, "pooling_mode", None) for m in base if hasattr(m, "pooling_mode")), None)
        self._st = SentenceTransformer(
            modules=[transformer, PoolingModule(self.dim, pooling_mode=self.pooling), Normalize()], device="cpu"
        )
        self._st.eval()
        self.max_seq_length = int(self._st.max_seq_length or 512)
        self.tokenizer = self._st.tokenizer
        self._onnx: Callable[[dict[str, np.ndarray]], np.ndarray] | None = None
        if self.backend != "torch":
            from semsearch.onnx_backend import OnnxModel

            onnx_model = OnnxModel(
                transformer.auto_model,
                self.resolved.path,
                self.fingerprint,
                kind="encoder",
                variant=self.backend,
                cache_dir=Path(self.cache_dir) if self.cache_dir else None,
                num_threads=self.num_threads,
                spinning=self.spinning,
            )
            self._onnx = onnx_model.run
        log.info(
            "encoder %s (%s, fingerprint %s): pooling=%s backend=%s dim=%d max_seq_length=%d",
            self.resolved.name,
            self.resolved.source,
            self.fingerprint,
            self.pooling,
            self.backend,
            self.dim,
            self.max_seq_length or 0,
        )

    @classmethod
    def from_manifest(cls, manifest: Manifest, **kwargs: Any) -> Encoder:
        """The encoder an index was built with (model, pooling, backend, token limit), checked by fingerprint."""
        encoder = cls(
            model=manifest.model,
            pooling=cast(Pooling, manifest.pooling),
            backend=cast(Backend, manifest.backend),
            max_seq_length=manifest.max_seq_length,
            **kwargs,
        )
        if encoder.fingerprint != manifest.model_fingerprint:
            raise ModelMismatchError(
                f"the index was built with model {manifest.model!r} (fingerprint {manifest.model_fingerprint}), "
                f"but that name now resolves to fingerprint {encoder.fingerprint}: rebuild the index"
            )
        return encoder

    @property
    def name(self) -> str:
        return self.resolved.name

    def token_lengths(self, texts: Sequence[str]) -> np.ndarray:
        """Untruncated token counts (special tokens included)."""
        enc = self.tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False)
        return np.fromiter((len(ids) for ids in enc["input_ids"]), dtype=np.int64, count=len(texts))

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 64,
        progress: bool = False,
        desc: str = "encoding",
    ) -> np.ndarray:
        """Encode ``texts`` to a float32 array (n, dim) of unit vectors, in input order.

        Batches are formed from texts sorted by token length (little padding); inputs longer than
        ``max_seq_length`` are truncated and counted in ``self.stats.truncated``.
        """
        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        started = time.perf_counter()
        lengths = self.token_lengths(texts)
        self.stats.truncated += int((lengths > self.max_seq_length).sum())
        order = np.argsort(-lengths, kind="stable")  # longest first: the slowest batches show in the ETA early
        bar = _progress(n, desc) if progress else None
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            out[idx] = self._encode_batch([texts[i] for i in idx])
            if bar is not None:
                bar.update(len(idx))
        if bar is not None:
            bar.close()
        self.stats.texts += n
        self.stats.seconds += time.perf_counter() - started
        return out

    def _encode_batch(self, batch: list[str]) -> np.ndarray:
        if self._onnx is None:
            import torch

            with torch.inference_mode():
                vecs = self._st.encode(batch, batch_size=len(batch), convert_to_numpy=True, show_progress_bar=False)
            return np.asarray(vecs, dtype=np.float32)
        feats = self.tokenizer(
            batch, padding=True, truncation=True, max_length=self.max_seq_length, return_tensors="np"
        )
        features = {k: np.asarray(v, dtype=np.int64) for k, v in feats.items()}
        hidden = self._onnx(features)
        return pool_and_normalize(hidden, features["attention_mask"], self.pooling)


def pool_and_normalize(hidden: np.ndarray, mask: np.ndarray, pooling: str) -> np.ndarray:
    """Numpy pooling for non-torch backends; mirrors sentence-transformers' Pooling + Normalize."""
    if pooling == "cls":
        vecs = hidden[:, 0, :]
    else:
        m = mask[:, :, None].astype(np.float32)
        vecs = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    return (vecs / np.clip(norms, 1e-12, None)).astype(np.float32)


def _progress(total: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="sent", unit_scale=True, smoothing=0.1, mininterval=1.0)
