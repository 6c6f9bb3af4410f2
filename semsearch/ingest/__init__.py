"""Corpus readers: every format yields :class:`~semsearch.types.Record` or a per-row :class:`Reject`.

Imports only the base modules.
"""

from semsearch.ingest.readers import DEFAULT_MAX_CHARS, Reject, read_inputs, read_json_lines

__all__ = [
    "DEFAULT_MAX_CHARS",
    "Reject",
    "read_inputs",
    "read_json_lines",
]
