"""Passages: a document cut into runs of whole sentences of at most N model tokens (``--chunk-tokens``).

Sentences come from :func:`~semsearch.ingest.readers.split_sentences` and are packed greedily, in
order, while the passage's token count (special tokens included, what the model reads) stays within
``tokens``; consecutive passages share ``overlap`` sentences. A sentence longer than the budget is
cut at token boundaries (preferably between words) with the tokenizer's character offsets, so no
text is ever truncated away. Each passage is a character span ``(start, end)`` of the document, so
``document[start:end]`` is exactly its text.

The tokenizer is passed in as two functions (this package does not import ``semsearch.models``):
``lengths(texts)`` (token counts, special tokens included, untruncated) and ``offsets(text)`` (the
character spans of its tokens, special tokens excluded): :meth:`Encoder.token_lengths` and
:meth:`Encoder.token_offsets`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from semsearch.errors import InvalidInputError
from semsearch.ingest.readers import split_sentences
from semsearch.types import DOCUMENT_KEY, Record

Lengths = Callable[[Sequence[str]], np.ndarray]
Offsets = Callable[[str], list[tuple[int, int]]]


@dataclass(frozen=True)
class Chunking:
    """How documents become passages: at most ``tokens`` model tokens, ``overlap`` sentences shared."""

    tokens: int
    overlap: int = 0

    def __post_init__(self) -> None:
        if self.tokens < 8:
            raise InvalidInputError(f"--chunk-tokens must be at least 8, got {self.tokens}")
        if self.overlap < 0:
            raise InvalidInputError(f"--chunk-overlap must be >= 0, got {self.overlap}")

    def as_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "overlap": self.overlap}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Chunking:
        return cls(int(data["tokens"]), int(data.get("overlap", 0)))


class Chunker:
    """Cuts texts into passage spans with one model's tokenizer."""

    def __init__(self, chunking: Chunking, lengths: Lengths, offsets: Offsets) -> None:
        self.chunking = chunking
        self._lengths = lengths
        self._offsets = offsets
        self.specials = int(lengths([""])[0])  # [CLS] + [SEP] for BERT-like models
        self.budget = chunking.tokens - self.specials
        if self.budget < 1:
            raise InvalidInputError(
                f"--chunk-tokens {chunking.tokens} leaves no room beside {self.specials} special tokens"
            )

    def count(self, text: str) -> int:
        return int(self._lengths([text])[0])

    def spans(self, text: str) -> list[tuple[int, int]]:
        """The passages of ``text`` as ``(start, end)`` character offsets, in order."""
        sentences = list(split_sentences(text))
        if not sentences:
            return []
        lengths = self._lengths([text[s:e] for s, e in sentences]) - self.specials
        units: list[tuple[int, int, int]] = []  # start, end, content tokens
        for (s, e), n in zip(sentences, lengths.tolist(), strict=True):
            if n <= self.budget:
                units.append((s, e, int(n)))
            else:
                units.extend(self._cut(text, s, e))
        out: list[tuple[int, int]] = []
        i = 0
        while i < len(units):
            j, used = i, units[i][2]
            while j + 1 < len(units) and used + units[j + 1][2] <= self.budget:
                j += 1
                used += units[j][2]
            # the sum of the units' counts is an estimate of the joined text's count: check it exactly
            while j > i and self.count(text[units[i][0] : units[j][1]]) > self.chunking.tokens:
                j -= 1
            out.append((units[i][0], units[j][1]))
            if j + 1 >= len(units):
                break
            i = max(i + 1, j + 1 - self.chunking.overlap)
        return out

    def _cut(self, text: str, start: int, end: int) -> Iterator[tuple[int, int, int]]:
        """A sentence over the budget, cut into pieces of at most ``budget`` tokens at token boundaries
        (at a word boundary when one lies in the second half of a piece)."""
        offs = [(start + a, start + b) for a, b in self._offsets(text[start:end]) if b > a]
        i = 0
        while i < len(offs):
            j = min(i + self.budget, len(offs))  # tokens [i, j)
            if j < len(offs):
                for m in range(j, i + max(1, self.budget // 2), -1):  # prefer a cut before a word's first token
                    if offs[m][0] > offs[m - 1][1]:
                        j = m
                        break
            while j > i + 1 and self.count(text[offs[i][0] : offs[j - 1][1]]) > self.chunking.tokens:
                j -= 1
            yield offs[i][0], offs[j - 1][1], j - i
            i = j


def passages(doc: Record, doc_id: str, spans: Sequence[tuple[int, int]], with_ids: bool) -> Iterator[Record]:
    """The passage records of one document: ids ``DOCID#n`` (``with_ids``; else automatic ids), its
    ``doc_id``, offsets and metadata; the first passage also stores the document's text (once) under
    :data:`~semsearch.types.DOCUMENT_KEY`."""
    for n, (start, end) in enumerate(spans):
        metadata = {**doc.metadata, DOCUMENT_KEY: doc.text} if n == 0 else doc.metadata
        yield Record(
            text=doc.text[start:end],
            ext_id=f"{doc_id}#{n}" if with_ids else None,
            metadata=metadata,
            doc_id=doc_id,
            start=start,
            end=end,
            source=doc.source,
        )
