"""The two model kinds (bi-encoder, cross-encoder) over one backend mechanism (``torch`` or the ONNX export).

Public API: :class:`Encoder` (``encode``, ``count_tokens``, ``from_manifest``), :class:`Reranker`, the
closed choices ``Pooling`` / ``Backend`` and the model resolution helpers. Imports only the base modules.
"""

from semsearch.models.cache import QueryCache
from semsearch.models.encoder import Backend, Encoder, Pooling, _read_layout, _Tokens, pool_and_normalize, prompts_of
from semsearch.models.reranker import Reranker, RerankerBackend, available_backends, fuse_logits
from semsearch.models.source import resolve_model

__all__ = [
    "Backend",
    "Encoder",
    "Pooling",
    "QueryCache",
    "Reranker",
    "RerankerBackend",
    "_Tokens",
    "_read_layout",
    "available_backends",
    "fuse_logits",
    "pool_and_normalize",
    "prompts_of",
    "resolve_model",
]
