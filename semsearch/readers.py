"""Streaming input readers: ``.txt``, ``.jsonl``, ``.csv``, ``.tsv`` and their ``.gz`` variants.

Corpus readers yield :class:`Record` or :class:`Reject` one row at a time (memory does not grow with
the corpus). A bad row never stops the stream: it becomes a ``Reject`` with its line number and
reason, and the caller decides when there are too many.

Labelled data (evaluation and reranker training) is read strictly instead: :func:`read_json_lines`
and :func:`read_scored_pairs` raise :class:`InvalidInputError` naming the file and line.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from semsearch.errors import InvalidInputError
from semsearch.store import Record

FORMATS = ("txt", "jsonl", "csv", "tsv")
DEFAULT_MAX_CHARS = 20_000
_RAW_SNIPPET = 200


@dataclass
class Reject:
    """A row the reader refused."""

    source: str
    line: int
    reason: str
    raw: str = ""


def detect_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    ext = suffixes[-1].lstrip(".") if suffixes else ""
    if ext == "json":
        ext = "jsonl"
    if ext not in FORMATS:
        raise InvalidInputError(
            f"cannot tell the format of {path} from its extension; use one of: "
            + ", ".join(f".{f}" for f in FORMATS)
            + " (optionally .gz)"
        )
    return ext


def _open_binary(path: Path) -> IO[bytes]:
    if not path.is_file():
        raise InvalidInputError(f"input file {path} does not exist")
    if path.suffix.lower() == ".gz":
        fh = gzip.open(path, "rb")  # noqa: SIM115 - returned open to the caller's with-block
        try:
            fh.peek(1)
        except gzip.BadGzipFile as e:
            fh.close()
            raise InvalidInputError(f"{path} has a .gz extension but is not gzip data: {e}") from e
        return fh  # type: ignore[return-value]
    return path.open("rb")


def _decoded_lines(fh: IO[bytes], source: str) -> Iterator[tuple[int, str | None, bytes]]:
    """(line number, decoded text or None if not UTF-8, raw bytes) for every line."""
    for lineno, raw in enumerate(fh, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            yield lineno, None, raw
            continue
        if lineno == 1:
            text = text.lstrip("\ufeff")
        yield lineno, text.rstrip("\r\n"), raw


def _check_text(text: Any, max_chars: int) -> str | None:
    """The reason a text value is unusable, or None."""
    if not isinstance(text, str):
        return f"text must be a string, got {type(text).__name__}"
    if not text.strip():
        return "empty text"
    if len(text) > max_chars:
        return f"text has {len(text)} characters, over the limit of {max_chars} (--max-chars)"
    if "\x00" in text:
        return "text contains NUL bytes (binary data?)"
    return None


def _snippet(raw: bytes | str) -> str:
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="backslashreplace")
    return raw[:_RAW_SNIPPET]


def _read_lines(path: Path, parse: Callable[[str, int], Record | Reject]) -> Iterator[Record | Reject]:
    """``parse(text, line number)`` of every non-blank line; a line that is not UTF-8 is rejected."""
    src = str(path)
    with _open_binary(path) as fh:
        for lineno, text, raw in _decoded_lines(fh, src):
            if text is None:
                yield Reject(src, lineno, "not valid UTF-8", _snippet(raw))
            elif text.strip():  # blank lines separate nothing
                yield parse(text, lineno)


def read_txt(path: Path, max_chars: int) -> Iterator[Record | Reject]:
    """One sentence per line."""

    def parse(text: str, lineno: int) -> Record | Reject:
        reason = _check_text(text, max_chars)
        if reason:
            return Reject(str(path), lineno, reason, _snippet(text))
        return Record(text=text.strip(), source=f"{path.name}:{lineno}")

    return _read_lines(path, parse)


def _valid_id(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, str) and value != "")


def read_jsonl(path: Path, text_field: str, id_field: str, max_chars: int) -> Iterator[Record | Reject]:
    """One JSON object per line: ``text_field``, optionally ``id_field``; the other fields are metadata."""

    def parse(line: str, lineno: int) -> Record | Reject:
        src = str(path)
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            return Reject(src, lineno, f"invalid JSON: {e.msg} at column {e.colno}", _snippet(line))
        if not isinstance(obj, dict):
            return Reject(src, lineno, f"expected a JSON object, got {type(obj).__name__}", _snippet(line))
        if text_field not in obj:
            return Reject(src, lineno, f"missing field {text_field!r}", _snippet(line))
        text = obj.pop(text_field)
        reason = _check_text(text, max_chars)
        if reason:
            return Reject(src, lineno, reason, _snippet(line))
        ext_id = obj.pop(id_field, None)
        if ext_id is not None and not _valid_id(ext_id):
            return Reject(src, lineno, f"{id_field!r} must be a non-empty string or an integer", _snippet(line))
        return Record(text=text.strip(), ext_id=ext_id, metadata=obj, source=f"{path.name}:{lineno}")

    return _read_lines(path, parse)


def read_delimited(
    path: Path, delimiter: str, text_field: str, id_field: str, max_chars: int
) -> Iterator[Record | Reject]:
    src = str(path)
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with _open_binary(path) as fh:
        text_stream = io.TextIOWrapper(fh, encoding="utf-8", errors="strict", newline="")
        reader = csv.reader(text_stream, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        except UnicodeDecodeError as e:
            raise InvalidInputError(f"{path}: the header line is not valid UTF-8") from e
        header = [h.lstrip("\ufeff").strip() for h in header]
        if text_field not in header:
            raise InvalidInputError(
                f"{path}: no column {text_field!r} in the header ({', '.join(header)}); set --text-field"
            )
        text_col = header.index(text_field)
        id_col = header.index(id_field) if id_field in header else None
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except UnicodeDecodeError:
                # The reader's position is lost; report and stop this file rather than mis-number lines.
                yield Reject(src, reader.line_num + 1, "not valid UTF-8 (rest of file skipped)")
                break
            except csv.Error as e:
                yield Reject(src, reader.line_num, f"malformed CSV: {e}")
                continue
            lineno = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                yield Reject(
                    src, lineno, f"expected {len(header)} fields, got {len(row)}", _snippet(delimiter.join(row))
                )
                continue
            text = row[text_col]
            reason = _check_text(text, max_chars)
            if reason:
                yield Reject(src, lineno, reason, _snippet(delimiter.join(row)))
                continue
            ext_id: str | None = row[id_col].strip() if id_col is not None else None
            if id_col is not None and not ext_id:
                yield Reject(src, lineno, f"empty id in column {id_field!r}", _snippet(delimiter.join(row)))
                continue
            metadata = {h: v for i, (h, v) in enumerate(zip(header, row, strict=True)) if i not in (text_col, id_col)}
            yield Record(text=text.strip(), ext_id=ext_id, metadata=metadata, source=f"{path.name}:{lineno}")


# Sentence boundaries: end punctuation followed by whitespace and an upper-case letter, digit or quote;
# common abbreviations are protected. Simple, fast, deterministic, and offsets are exact.
_ABBREV = "".join(
    rf"(?<!\b{a})" for a in (r"[A-Z]", "Mr", "Mrs", "Ms", "Dr", "St", "vs", "etc", r"e\.g", r"i\.e", "Fig", "al")
)
_BOUNDARY = re.compile(_ABBREV + r"[.!?][\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(text: str) -> Iterator[tuple[int, int]]:
    """(start, end) character offsets of the sentences of ``text`` (whitespace trimmed)."""
    pos = 0
    for m in _BOUNDARY.finditer(text):
        end = m.end()
        yield from _trimmed(text, pos, end)
        pos = end
    yield from _trimmed(text, pos, len(text))


def _trimmed(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if end > start:
        yield start, end


def explode(record: Record, doc_number: int) -> Iterator[Record]:
    """Turn one document record into sentence records keeping document id and offsets."""
    doc_id = str(record.ext_id) if record.ext_id is not None else f"doc{doc_number}"
    for n, (start, end) in enumerate(split_sentences(record.text)):
        yield Record(
            text=record.text[start:end],
            ext_id=f"{doc_id}#{n}",
            metadata=record.metadata,
            doc_id=doc_id,
            start=start,
            end=end,
            source=record.source,
        )


def read_inputs(
    paths: Iterable[Path],
    text_field: str = "text",
    id_field: str = "id",
    split: bool = False,
    max_chars: int = DEFAULT_MAX_CHARS,
) -> Iterator[Record | Reject]:
    """All rows of all inputs in order; with ``split``, documents become sentences."""
    doc_number = 0
    for path in paths:
        fmt = detect_format(path)
        if fmt == "txt":
            rows: Iterator[Record | Reject] = read_txt(path, max_chars)
        elif fmt == "jsonl":
            rows = read_jsonl(path, text_field, id_field, max_chars)
        else:
            rows = read_delimited(path, "," if fmt == "csv" else "\t", text_field, id_field, max_chars)
        for row in rows:
            if split and isinstance(row, Record):
                doc_number += 1
                yield from explode(row, doc_number)
            else:
                yield row


# ------------------------------------------------------------------------------ labelled data (strict)

T = TypeVar("T")


def open_text(path: Path) -> IO[str]:
    """UTF-8 text (gunzipped for ``.gz``), ``newline=""`` so that the csv module sees raw line ends."""
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def read_json_lines(path: Path, parse: Callable[[Any], T], what: str) -> Iterator[T]:
    """``parse(obj)`` for every non-blank JSON line of ``path`` (``.gz`` allowed); a line that is not
    JSON or that ``parse`` rejects (KeyError, TypeError, ValueError) is an error naming ``path:line``
    and ``what`` the line should be."""
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                value = parse(json.loads(line))
            except (KeyError, TypeError, ValueError) as e:  # json.JSONDecodeError is a ValueError
                raise InvalidInputError(f"{path}:{lineno}: not {what} ({e})") from e
            yield value


@dataclass(frozen=True)
class ScoredPair:
    """A sentence pair with a graded similarity/relevance score (e.g. STS-B, 0–5)."""

    sentence1: str
    sentence2: str
    score: float


def read_scored_pairs(
    path: str | Path,
    *,
    sentence1_column: str = "sentence1",
    sentence2_column: str = "sentence2",
    score_column: str = "score",
) -> list[ScoredPair]:
    """A tab-separated file with a header (``csv.QUOTE_NONE``; ``.gz`` allowed), e.g. STS-B."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"scored pairs file {path} does not exist")
    columns = (sentence1_column, sentence2_column, score_column)
    pairs: list[ScoredPair] = []
    with open_text(path) as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = set(columns) - set(reader.fieldnames or ())
        if missing:
            raise InvalidInputError(
                f"{path}: missing column(s) {sorted(missing)}: the header must name {', '.join(columns[:2])} "
                f"and {columns[2]}; got {reader.fieldnames}"
            )
        for line_no, row in enumerate(reader, start=2):
            try:
                score = float(row[score_column])
            except (TypeError, ValueError) as exc:
                raise InvalidInputError(f"{path}:{line_no}: score {row[score_column]!r} is not a number") from exc
            s1, s2 = row[sentence1_column], row[sentence2_column]
            if not s1 or not s2:
                raise InvalidInputError(f"{path}:{line_no}: empty sentence")
            pairs.append(ScoredPair(s1, s2, score))
    return pairs
