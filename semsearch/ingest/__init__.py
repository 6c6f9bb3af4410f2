"""Corpus readers: every format yields :class:`~semsearch.types.Record` or a per-row :class:`Reject`.

Imports only the base modules.
"""

from semsearch.ingest.chunking import Chunker, Chunking, passages
from semsearch.ingest.readers import DEFAULT_MAX_CHARS, explode, read_inputs, read_json_lines, split_sentences
from semsearch.types import Reject

__all__ = [
    "DEFAULT_MAX_CHARS",
    "Chunker",
    "Chunking",
    "Reject",
    "explode",
    "passages",
    "read_inputs",
    "read_json_lines",
    "split_sentences",
]
