"""The two model kinds (bi-encoder, cross-encoder) over one backend mechanism (``torch`` or the ONNX export).

Public API: :class:`Encoder` (``encode``, ``count_tokens``, ``from_manifest``), :class:`Reranker`, the
closed choices ``Pooling`` / ``Backend`` and the model resolution helpers. Imports only the base modules.
"""

from semsearch.models.encoder import Backend, Encoder, Pooling, _read_layout, _Tokens, pool_and_normalize
from semsearch.models.reranker import Reranker, RerankerBackend, available_backends, fuse_logits
from semsearch.models.source import resolve_model

__all__ = [
    "Backend",
    "Encoder",
    "Pooling",
    "Reranker",
    "RerankerBackend",
    "_Tokens",
    "_read_layout",
    "available_backends",
    "fuse_logits",
    "pool_and_normalize",
    "resolve_model",
]
