"""The bi-encoder: text -> L2-normalised sentence embeddings with an explicit pooling choice.

Pooling is decided here and nowhere else: the backend runner (:mod:`semsearch.models.runner`: the
transformers model on torch, or its ONNX export) returns the token outputs (``last_hidden_state``), and
:func:`pool_and_normalize` pools them in numpy: ``mean`` averages token outputs over the attention
mask, ``cls`` takes the first ([CLS]) token output, then each vector is scaled to unit length. The
model folder's own Pooling module is never run, so a model shipped with mean pooling really uses CLS
when CLS is asked for (``model_pooling`` says what it ships with). Because embeddings are unit length,
inner product equals cosine similarity.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast, get_args

import numpy as np

from semsearch.choices import check_choice
from semsearch.errors import InvalidInputError, ModelLoadError, ModelMismatchError
from semsearch.models.cache import QueryCache
from semsearch.models.runner import Runner, RunnerOptions, TorchRunner, open_runner
from semsearch.models.source import ResolvedModel, model_fingerprint, resolve_model
from semsearch.types import EncoderSpec

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
    # ONNX backends: batches above this many tokens (batch x padded length) free onnxruntime's arena chunks
    # after the run, so a long-running service does not keep its largest batch's memory (None: keep all)
    arena_keep_tokens: int | None = None
    # torch backend: where the model runs ("cpu", "cuda", "cuda:1", ...; None: cpu). Inputs follow the
    # model's weights (model_runner.TorchRunner), so moving it later with to_device() is safe too.
    device: str | None = None
    # Prompts prepended to queries and to passages (e5/bge style "query: "); None: the model folder's own
    # (config_sentence_transformers.json "prompts": "query", and "passage" or "document"), else none.
    query_prompt: str | None = None
    passage_prompt: str | None = None
    stats: EncodeStats = field(default_factory=EncodeStats, init=False)
    # The service's query-embedding cache (None: no cache, as in the indexer)
    cache: QueryCache | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        check_choice(self.pooling, POOLINGS, "pooling")
        check_choice(self.backend, BACKENDS, "backend")
        if self.device not in (None, "cpu") and self.backend != "torch":
            raise InvalidInputError(f"device {self.device!r} needs the torch backend (got {self.backend!r})")
        self.resolved: ResolvedModel = resolve_model(self.model)
        self.fingerprint = model_fingerprint(self.resolved.path)
        declared = read_prompts(self.resolved.path)
        if self.query_prompt is None:
            self.query_prompt = declared.get("query", "")
        if self.passage_prompt is None:
            self.passage_prompt = declared.get("passage", "")
        self._st: Any = None  # the loaded SentenceTransformer (tokenizer + transformer), when torch is used
        # The ONNX backends need only the tokenizer and the model folder's configuration: torch and
        # sentence-transformers are imported only for the torch backend, an unusual model folder, or
        # when the ONNX file has to be exported (several seconds of start-up otherwise).
        layout = _read_layout(self.resolved.path)
        if layout is None or self.backend == "torch":
            self._load_sentence_transformers()
        else:
            self.dim = layout.dim
            self.model_pooling = layout.pooling
            if self.max_seq_length is None:
                self.max_seq_length = layout.max_seq_length
        self._tokens = _Tokens.build(self._st, self.max_seq_length, layout)
        self._runner: Runner = open_runner(
            self.backend,
            "encoder",
            self._hf_model,
            model_dir=self.resolved.path,
            fingerprint=self.fingerprint,
            options=RunnerOptions(
                cache_dir=Path(self.cache_dir) if self.cache_dir else None,
                num_threads=self.num_threads,
                spinning=self.spinning,
                arena_keep_tokens=self.arena_keep_tokens,
            ),
        )
        if self.device not in (None, "cpu"):
            self.to_device(self.device)
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

    def to_device(self, device: str) -> None:
        """Run the torch backend's model on ``device`` (e.g. ``"cuda"``); its inputs follow it."""
        if not isinstance(self._runner, TorchRunner):
            raise InvalidInputError(f"device {device!r} needs the torch backend (got {self.backend!r})")
        self._runner.to(device)
        self.device = str(device)

    def _load_sentence_transformers(self) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        try:
            st = SentenceTransformer(str(self.resolved.path), device="cpu")
        except Exception as e:
            raise ModelLoadError(f"could not load model {self.resolved.name!r}: {e}") from e
        transformer: Any = st[0]
        if self.max_seq_length is not None:
            transformer.max_seq_length = self.max_seq_length
        dim = st.get_embedding_dimension()
        if not dim:
            raise ModelLoadError(f"model {self.resolved.name!r} does not report an embedding dimension")
        self.dim = int(dim)
        self.model_pooling = next((getattr(m, "pooling_mode", None) for m in st if hasattr(m, "pooling_mode")), None)
        st.eval()
        self._st = st
        self.max_seq_length = int(transformer.max_seq_length or 512)

    def _hf_model(self) -> Any:
        """The transformers model (loads torch and sentence-transformers on first use: ONNX export)."""
        if self._st is None:
            self._load_sentence_transformers()
        return self._st[0].auto_model

    @property
    def tokenizer(self) -> Any:
        """The transformers tokenizer (loads sentence-transformers for the ONNX backends)."""
        if self._st is None:
            self._load_sentence_transformers()
        return self._st.tokenizer

    @classmethod
    def from_manifest(cls, manifest: EncoderSpec, **kwargs: Any) -> Encoder:
        """The encoder an index was built with (model, pooling, backend, token limit), checked by fingerprint."""
        encoder = cls(
            model=manifest.model,
            pooling=cast(Pooling, manifest.pooling),
            backend=cast(Backend, manifest.backend),
            max_seq_length=manifest.max_seq_length,
            **{**prompts_of(manifest), **kwargs},
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
        """Untruncated token counts (special tokens included). Tokenizer only: never loads torch on the
        ONNX backends, and safe to call from any thread while another encodes."""
        return self._tokens.lengths(texts)

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """Character ``(start, end)`` spans of ``text``'s tokens (special tokens excluded), untruncated: where
        a long text can be cut at token boundaries (:mod:`semsearch.ingest.chunking`). Tokenizer only."""
        return self._tokens.offsets(text)

    def count_tokens(self, texts: Sequence[str]) -> int:
        """Tokens the model reads for ``texts``: each text's count (special tokens included) capped at
        ``max_seq_length``, summed (the ``usage`` of ``/v1/embeddings``). Same guarantees as :meth:`token_lengths`."""
        if not texts:
            return 0
        return int(np.minimum(self.token_lengths(texts), int(self.max_seq_length or 1 << 30)).sum())

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 64,
        progress: bool = False,
        desc: str = "encoding",
        prompt: str | Sequence[str] | None = None,
    ) -> np.ndarray:
        """Encode ``texts`` to a float32 array (n, dim) of unit vectors, in input order.

        ``prompt`` (one for all, or one per text) is prepended to each text; ``None`` or ``""``: the raw
        text. With a :attr:`cache`, vectors already computed are taken from it (bit-identical) and only
        the others encoded.

        Texts are tokenised once, then batched by token length (little padding); inputs longer than
        ``max_seq_length`` are truncated and counted in ``self.stats.truncated``. A text's vector
        does not depend on the batch it lands in (for onnx-int8 too: per-row activation scales).
        """
        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        prompts = [prompt or ""] * n if prompt is None or isinstance(prompt, str) else [p or "" for p in prompt]
        if len(prompts) != n:
            raise InvalidInputError(f"{n} texts but {len(prompts)} prompts")
        cache = self.cache
        if cache is not None and cache.enabled:
            keys = [(self.fingerprint, self.pooling, self.backend, p, t) for p, t in zip(prompts, texts, strict=True)]
            missing: list[int] = []
            for i, key in enumerate(keys):
                hit = cache.get(key)
                if hit is None:
                    missing.append(i)
                else:
                    out[i] = hit
            if missing:
                fresh = self._encode_texts([prompts[i] + texts[i] for i in missing], batch_size, progress, desc)
                out[missing] = fresh
                for i, vector in zip(missing, fresh, strict=True):
                    cache.put(keys[i], vector)
            return out
        if any(prompts):
            texts = [p + t for p, t in zip(prompts, texts, strict=True)]
        return self._encode_texts(texts, batch_size, progress, desc)

    def _encode_texts(self, texts: Sequence[str], batch_size: int, progress: bool, desc: str) -> np.ndarray:
        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)
        started = time.perf_counter()
        tokens = self._tokens.encode(texts)
        self.stats.truncated += tokens.truncated
        lengths = np.fromiter((len(ids) for ids in tokens.ids), dtype=np.int64, count=n)
        order = np.argsort(-lengths, kind="stable")  # longest first: the slowest batches show in the ETA early
        bar = _progress(n, desc) if progress else None
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            out[idx] = self._encode_batch(tokens.batch(idx, int(lengths[idx[0]])))
            if bar is not None:
                bar.update(len(idx))
        if bar is not None:
            bar.close()
        self.stats.texts += n
        self.stats.seconds += time.perf_counter() - started
        return out

    def _encode_batch(self, features: dict[str, np.ndarray]) -> np.ndarray:
        return pool_and_normalize(self._runner(features), features["attention_mask"], self.pooling)


PROMPTS_FILE = "config_sentence_transformers.json"


def read_prompts(folder: Path) -> dict[str, str]:
    """``{"query": ..., "passage": ...}`` as the model folder declares them in ``prompts`` of
    config_sentence_transformers.json (``passage`` may be named ``document`` there); empty when absent."""
    try:
        config = json.loads((folder / PROMPTS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    prompts = config.get("prompts") if isinstance(config, dict) else None
    if not isinstance(prompts, dict):
        return {}
    out: dict[str, str] = {}
    for name, keys in (("query", ("query",)), ("passage", ("passage", "document"))):
        for key in keys:
            value = prompts.get(key)
            if isinstance(value, str) and value:
                out[name] = value
                break
    return out


def prompts_of(spec: Any) -> dict[str, str]:
    """The prompts an index recorded (its manifest's ``prompts``), as Encoder keyword arguments: an index
    without them uses none (an index built before prompts existed embedded raw text)."""
    prompts = getattr(spec, "prompts", None) or {}
    return {"query_prompt": str(prompts.get("query", "")), "passage_prompt": str(prompts.get("passage", ""))}


@dataclass(frozen=True)
class _Layout:
    """What a sentence-transformers folder says about itself (modules.json and friends)."""

    dim: int
    pooling: str | None
    max_seq_length: int
    lowercase: bool
    tokenizer_file: Path
    pad_id: int


_PLAIN_MODULES = {"Transformer", "Pooling", "Normalize"}


def _read_layout(folder: Path) -> _Layout | None:
    """The layout of a plain Transformer[+Pooling][+Normalize] sentence-transformers folder with a fast
    tokenizer, read from its JSON files; ``None`` for anything else (then sentence-transformers loads it)."""
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
        kinds = {str(m["type"]).rsplit(".", 1)[-1]: m for m in modules}
        if not set(kinds) <= _PLAIN_MODULES or "Transformer" not in kinds or len(kinds) != len(modules):
            return None
        root = folder / str(kinds["Transformer"].get("path", ""))
        st_config = json.loads((root / "sentence_bert_config.json").read_text(encoding="utf-8"))
        config = json.loads((root / "config.json").read_text(encoding="utf-8"))
        tokenizer_file = root / "tokenizer.json"
        if not tokenizer_file.is_file() or "max_seq_length" not in st_config:
            return None
        pooling = None
        dim = int(config["hidden_size"])
        if "Pooling" in kinds:
            pool = json.loads((folder / str(kinds["Pooling"]["path"]) / "config.json").read_text(encoding="utf-8"))
            dim = int(pool.get("word_embedding_dimension", dim))
            modes = [
                k for k in ("cls", "mean", "max") if pool.get(f"pooling_mode_{k}_token" + ("s" if k != "cls" else ""))
            ]
            pooling = modes[0] if len(modes) == 1 else None
        return _Layout(
            dim=dim,
            pooling=pooling,
            max_seq_length=int(st_config["max_seq_length"]),
            lowercase=bool(st_config.get("do_lower_case", False)),
            tokenizer_file=tokenizer_file,
            pad_id=int(config.get("pad_token_id") or 0),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass
class _Batchable:
    """Tokenised texts (truncated ids and token types) and how many were truncated."""

    ids: list[list[int]]
    type_ids: list[list[int]]
    truncated: int
    pad_id: int

    def batch(self, idx: np.ndarray, width: int) -> dict[str, np.ndarray]:
        """Right-padded int64 ``input_ids``, ``attention_mask`` and ``token_type_ids`` for rows ``idx``."""
        ids = np.full((len(idx), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(idx), width), dtype=np.int64)
        types = np.zeros((len(idx), width), dtype=np.int64)
        for row, i in enumerate(idx):
            n = len(self.ids[i])
            ids[row, :n] = self.ids[i]
            mask[row, :n] = 1
            types[row, :n] = self.type_ids[i]
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


class _Tokens:
    """Tokenisation done once per text: the ``tokenizers`` library straight from ``tokenizer.json``
    (no torch, no transformers import), else the transformers tokenizer sentence-transformers loaded."""

    def __init__(
        self,
        encode: Callable[[list[str]], _Batchable],
        lengths: Callable[[list[str]], np.ndarray],
        offsets: Callable[[str], list[tuple[int, int]]] | None = None,
    ):
        self._encode = encode
        self._lengths = lengths
        self._offsets = offsets

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """Character spans of ``text``'s tokens, special tokens excluded."""
        if self._offsets is None:
            raise InvalidInputError("this model's tokenizer gives no token offsets (a fast tokenizer is needed)")
        return self._offsets(text)

    def encode(self, texts: Sequence[str]) -> _Batchable:
        return self._encode(list(texts))

    def lengths(self, texts: Sequence[str]) -> np.ndarray:
        return self._lengths(list(texts))

    @classmethod
    def build(cls, st: Any, max_length: int | None, layout: _Layout | None) -> _Tokens:
        """From the model folder's ``tokenizer.json`` (``layout``; no transformers import), else from the
        sentence-transformers model's tokenizer (``st``)."""
        max_length = int(max_length or 512)
        return cls._of_layout(layout, max_length) if layout is not None else cls._of_transformers(st, max_length)

    @classmethod
    def _of_layout(cls, layout: _Layout, max_length: int) -> _Tokens:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(layout.tokenizer_file))
        tok.no_padding()
        tok.enable_truncation(max_length)
        full = Tokenizer.from_file(str(layout.tokenizer_file))
        full.no_padding()
        full.no_truncation()
        lower = layout.lowercase

        def prepare(texts: list[str]) -> list[str]:
            return [t.lower() for t in texts] if lower else texts

        def encode(texts: list[str]) -> _Batchable:
            encs = tok.encode_batch(prepare(texts))
            return _Batchable(
                [e.ids for e in encs],
                [e.type_ids for e in encs],
                sum(1 for e in encs if e.overflowing),
                layout.pad_id,
            )

        def lengths(texts: list[str]) -> np.ndarray:
            encs = full.encode_batch(prepare(texts))
            return np.fromiter((len(e.ids) for e in encs), dtype=np.int64, count=len(texts))

        def offsets(text: str) -> list[tuple[int, int]]:
            prepared = prepare([text])[0]
            if len(prepared) != len(text):  # lowercasing changed the length: offsets would not map back
                prepared = text
            enc = full.encode(prepared)
            return [
                (int(a), int(b))
                for (a, b), special in zip(enc.offsets, enc.special_tokens_mask, strict=True)
                if not special
            ]

        return cls(encode, lengths, offsets)

    @classmethod
    def _of_transformers(cls, st: Any, max_length: int) -> _Tokens:
        hf = st.tokenizer
        pad_id = int(hf.pad_token_id or 0)
        # a transformers fast tokenizer sets its truncation per call: one call at a time (counts may come
        # from another thread than the encoder's)
        lock = threading.Lock()

        def hf_lengths(texts: list[str]) -> np.ndarray:
            with lock:
                enc = hf(texts, add_special_tokens=True, truncation=False, verbose=False)
            return np.fromiter((len(ids) for ids in enc["input_ids"]), dtype=np.int64, count=len(texts))

        def hf_encode(texts: list[str]) -> _Batchable:
            with lock:
                enc = hf(texts, truncation=True, max_length=max_length, return_token_type_ids=True, verbose=False)
            ids = [list(x) for x in enc["input_ids"]]
            truncated = int((hf_lengths(texts) > max_length).sum())  # slow tokenizers only: a second pass
            types = [list(x) for x in enc.get("token_type_ids") or [[0] * len(i) for i in ids]]
            return _Batchable(ids, types, truncated, pad_id)

        def hf_offsets(text: str) -> list[tuple[int, int]]:
            if not getattr(hf, "is_fast", False):
                raise InvalidInputError("this model's tokenizer gives no token offsets (a fast tokenizer is needed)")
            with lock:
                enc = hf(text, add_special_tokens=False, truncation=False, return_offsets_mapping=True, verbose=False)
            return [(int(a), int(b)) for a, b in enc["offset_mapping"]]

        return cls(hf_encode, hf_lengths, hf_offsets)


def pool_and_normalize(hidden: np.ndarray, mask: np.ndarray, pooling: str) -> np.ndarray:
    """Pooling + L2 normalisation of token outputs (every backend); mirrors sentence-transformers'
    Pooling + Normalize."""
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
