"""Values that cross layers: a row to index (:class:`Record`) and a stored row (:class:`Doc`).

They live below every subpackage so that a reader (``semsearch.ingest``), the index
(``semsearch.index``) and search (``semsearch.search``) share them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from semsearch.ids import UserId

__all__ = ["DOCUMENT_KEY", "Doc", "EncoderSpec", "Record", "Reject", "UserId"]

# The reserved metadata key under which a document's first passage (``--chunk-tokens``) stores the whole
# document's text, once per document; the store takes it out of the metadata into ``Doc.document``.
DOCUMENT_KEY = "_semsearch_document"


@dataclass
class Record:
    """One sentence (or passage) to index, as read from the input."""

    text: str
    ext_id: UserId | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    doc_id: str | None = None
    start: int | None = None
    end: int | None = None
    source: str | None = None  # "file:line"


@dataclass
class Reject:
    """A row a reader refused: where it was, why, and (the start of) what it said."""

    source: str
    line: int
    reason: str
    raw: str = ""


@dataclass
class Doc:
    """A stored sentence, as returned by search."""

    iid: int
    id: UserId
    text: str
    metadata: dict[str, Any]
    doc_id: str | None = None
    start: int | None = None
    end: int | None = None
    source: str | None = None
    document: str | None = None  # the whole document's text, on a document's first passage only


class EncoderSpec(Protocol):
    """What identifies the encoder an index was built with (a version's manifest is one)."""

    @property
    def model(self) -> str: ...
    @property
    def pooling(self) -> str: ...
    @property
    def backend(self) -> str: ...
    @property
    def max_seq_length(self) -> int | None: ...
    @property
    def model_fingerprint(self) -> str: ...
