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
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from semsearch.errors import InvalidInputError
from semsearch.ids import as_id, id_problem
from semsearch.rows import MAX_METADATA_BYTES, RowError, loads_row, metadata_problem
from semsearch.text import text_problem
from semsearch.types import Record, Reject

FORMATS = ("txt", "jsonl", "csv", "tsv")
DEFAULT_MAX_CHARS = 20_000
_RAW_SNIPPET = 200


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


# What a corrupt or truncated gzip stream raises while it is being read.
_GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)


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
        except (EOFError, zlib.error) as e:
            fh.close()
            raise InvalidInputError(_corrupt_message(path, 0, e)) from e
        return fh  # type: ignore[return-value]
    return path.open("rb")


class _CorruptStream(Exception):
    """The compressed stream broke while reading (the reader turns it into one InvalidInputError)."""


def _raw_lines(fh: IO[bytes]) -> Iterator[bytes]:
    """The ``\\n``-terminated byte lines of ``fh``; a gzip error while reading raises :class:`_CorruptStream`."""
    lines = iter(fh)
    while True:
        try:
            raw = next(lines)
        except StopIteration:
            return
        except _GZIP_ERRORS as e:
            raise _CorruptStream() from e
        yield raw


def _corrupt_message(path: Path, last_line: int, error: BaseException) -> str:
    after = f"after line {last_line}" if last_line else "before its first line"
    if isinstance(error, EOFError):
        what = f"is truncated: the gzip data ends before its end-of-stream marker, {after}"
    else:
        what = f"holds corrupt gzip data {after} ({error})"
    return (
        f"{path} {what}; the rows after it cannot be read, so the file is refused as a whole "
        "(re-create or re-download it)"
    )


def _utf8_reason(error: UnicodeDecodeError) -> str:
    byte = error.object[error.start]
    return f"not valid UTF-8 ({error.reason}: byte 0x{byte:02X} at byte {error.start + 1} of the line)"


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
    problem = text_problem(text, allow_blank=True)  # a lone surrogate (a "\ud800" escape in JSON)
    return f"text {problem}" if problem else None


def _snippet(raw: bytes | str) -> str:
    """At most ``_RAW_SNIPPET`` characters of a rejected row, always valid text (bad bytes as ``\\xff``)."""
    if isinstance(raw, str):
        raw = raw[:_RAW_SNIPPET].encode("utf-8", errors="backslashreplace")
    return raw.decode("utf-8", errors="backslashreplace")[:_RAW_SNIPPET]


def _read_lines(path: Path, parse: Callable[[str, int], Record | Reject]) -> Iterator[Record | Reject]:
    """``parse(text, line number)`` of every non-blank line; a line that is not UTF-8 is rejected alone."""
    src = str(path)
    lineno = 0
    with _open_binary(path) as fh:
        try:
            for raw in _raw_lines(fh):
                lineno += 1
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield Reject(src, lineno, _utf8_reason(e), _snippet(raw))
                    continue
                if lineno == 1:
                    text = text.removeprefix("\ufeff")
                text = text.rstrip("\r\n")
                if text.strip():  # blank lines separate nothing
                    yield parse(text, lineno)
        except _CorruptStream as e:
            raise InvalidInputError(_corrupt_message(path, lineno, e.__cause__ or e)) from e.__cause__


def read_txt(path: Path, max_chars: int) -> Iterator[Record | Reject]:
    """One sentence per line."""

    def parse(text: str, lineno: int) -> Record | Reject:
        reason = _check_text(text, max_chars)
        if reason:
            return Reject(str(path), lineno, reason, _snippet(text))
        return Record(text=text.strip(), source=f"{path.name}:{lineno}")

    return _read_lines(path, parse)


def read_jsonl(
    path: Path, text_field: str, id_field: str, max_chars: int, max_metadata_bytes: int = MAX_METADATA_BYTES
) -> Iterator[Record | Reject]:
    """One JSON object per line: ``text_field``, optionally ``id_field``; the other fields are metadata.

    An ``id_field`` that is absent or ``null`` leaves the row without an id of its own."""

    def parse(line: str, lineno: int) -> Record | Reject:
        src = str(path)
        try:
            obj = loads_row(line)
        except json.JSONDecodeError as e:
            return Reject(src, lineno, f"invalid JSON: {e.msg} at column {e.colno}", _snippet(line))
        except RowError as e:
            return Reject(src, lineno, str(e), _snippet(line))
        if not isinstance(obj, dict):
            return Reject(src, lineno, f"expected a JSON object, got {type(obj).__name__}", _snippet(line))
        if text_field not in obj:
            return Reject(src, lineno, f"missing field {text_field!r}", _snippet(line))
        text = obj.pop(text_field)
        reason = _check_text(text, max_chars)
        if reason:
            return Reject(src, lineno, reason, _snippet(line))
        ext_id = as_id(obj.pop(id_field, None))
        if ext_id is not None:
            problem = id_problem(ext_id)
            if problem:
                return Reject(src, lineno, f"{id_field!r} {problem}", _snippet(line))
        problem = metadata_problem(obj, max_bytes=max_metadata_bytes)
        if problem:
            return Reject(src, lineno, problem, _snippet(line))
        return Record(text=text.strip(), ext_id=ext_id, metadata=obj, source=f"{path.name}:{lineno}")

    return _read_lines(path, parse)


# A lone CR ends a line too (as in universal newlines): split after every CR not followed by LF.
_LONE_CR = re.compile(rb"(?<=\r)(?!\n)")


class _PhysicalLines:
    """The decoded physical lines of a delimited file, for the csv module, with their numbers.

    Each line is decoded on its own, strictly; a line that is not UTF-8 is decoded with
    ``surrogateescape`` (so the csv module still finds the record's end) and noted in :attr:`bad`,
    and the record holding it is rejected alone. Lines end at LF, CRLF or a lone CR, like the
    ``newline=""`` text mode the csv module expects; the line end is kept.
    """

    def __init__(self, fh: IO[bytes]) -> None:
        self._raw = _raw_lines(fh)
        self._pending: deque[bytes] = deque()
        self.lineno = 0  # the number of the last line handed out
        self.bad: list[tuple[int, str]] = []  # (line, reason) since the caller last cleared it

    def __iter__(self) -> _PhysicalLines:
        return self

    def __next__(self) -> str:
        if not self._pending:
            raw = next(self._raw)
            if b"\r" in raw.removesuffix(b"\r\n"):
                self._pending.extend(part for part in _LONE_CR.split(raw) if part)
            else:
                self._pending.append(raw)
        raw = self._pending.popleft()
        self.lineno += 1
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            self.bad.append((self.lineno, _utf8_reason(e)))
            line = raw.decode("utf-8", errors="surrogateescape")
        return line.removeprefix("\ufeff") if self.lineno == 1 else line


def read_delimited(
    path: Path,
    delimiter: str,
    text_field: str,
    id_field: str,
    max_chars: int,
    max_metadata_bytes: int = MAX_METADATA_BYTES,
) -> Iterator[Record | Reject]:
    """A header row, then one record per row; a record may span lines (a quoted field with line
    breaks) and is numbered by its first line. Ids are strings, exactly as written (not stripped)."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with _open_binary(path) as fh:
        lines = _PhysicalLines(fh)
        try:
            yield from _delimited_rows(path, lines, delimiter, text_field, id_field, max_chars, max_metadata_bytes)
        except _CorruptStream as e:
            raise InvalidInputError(_corrupt_message(path, lines.lineno, e.__cause__ or e)) from e.__cause__


def _delimited_rows(
    path: Path,
    lines: _PhysicalLines,
    delimiter: str,
    text_field: str,
    id_field: str,
    max_chars: int,
    max_metadata_bytes: int,
) -> Iterator[Record | Reject]:
    src = str(path)
    reader = csv.reader(lines, delimiter=delimiter, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as e:
        raise InvalidInputError(f"{path}: the header (line 1) is not valid CSV: {e}") from e
    if lines.bad:
        line, why = lines.bad[0]
        raise InvalidInputError(f"{path}:{line}: the header is {why}; the file must be UTF-8")
    header = [h.strip() for h in header]
    if text_field not in header:
        raise InvalidInputError(
            f"{path}: no column {text_field!r} in the header ({', '.join(header)}); set --text-field"
        )
    twice = sorted({h for h in header if header.count(h) > 1})
    if twice:
        raise InvalidInputError(
            f"{path}: the header names column(s) {', '.join(map(repr, twice))} more than once; "
            "a later column would overwrite an earlier one: give each column its own name"
        )
    text_col = header.index(text_field)
    id_col = header.index(id_field) if id_field in header else None
    end = lines.lineno
    while True:
        error = None
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            row, error = [], f"malformed CSV: {e}"
        start, end = end + 1, lines.lineno
        if error and "unexpected end of data" in error:
            # A quote that is never closed makes the rest of the file one field: refuse the file
            # instead of publishing without every row after it.
            raise InvalidInputError(
                f"{path}:{start}: a quoted field opened on line {start} is never closed, so lines "
                f"{start}-{end} (the rest of the file) would be one field; close the quote"
            )
        bad, lines.bad = lines.bad, []
        if bad:
            line, why = bad[0]
            result: Record | str = why if line == start else f"{why[:-1]} on line {line})"
        elif error:
            result = error
        elif not row or all(not c.strip() for c in row):
            continue
        else:
            result = _delimited_record(path, row, start, header, text_col, id_col, max_chars, max_metadata_bytes)
        if isinstance(result, Record):
            yield result
            continue
        spans = f" (the record spans lines {start}-{end})" if end > start else ""
        raw = delimiter.join(row).encode("utf-8", errors="surrogateescape")  # bad bytes back as they were
        yield Reject(src, start, result + spans, _snippet(raw))


def _delimited_record(
    path: Path,
    row: list[str],
    line: int,
    header: list[str],
    text_col: int,
    id_col: int | None,
    max_chars: int,
    max_metadata_bytes: int,
) -> Record | str:
    """The record of a decoded CSV/TSV row, or the reason it is rejected."""
    if len(row) != len(header):
        return f"expected {len(header)} fields, got {len(row)}"
    text = row[text_col]
    reason = _check_text(text, max_chars)
    if reason:
        return reason
    ext_id: str | None = None
    if id_col is not None:
        ext_id = row[id_col]
        if not ext_id.strip():
            return f"empty id in column {header[id_col]!r}"
        problem = id_problem(ext_id)
        if problem:
            return f"{header[id_col]!r} {problem}"
    metadata = {h: v for i, (h, v) in enumerate(zip(header, row, strict=True)) if i not in (text_col, id_col)}
    problem = metadata_problem(metadata, max_bytes=max_metadata_bytes)
    if problem:
        return problem
    return Record(text=text.strip(), ext_id=ext_id, metadata=metadata, source=f"{path.name}:{line}")


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
    max_metadata_bytes: int = MAX_METADATA_BYTES,
) -> Iterator[Record | Reject]:
    """All rows of all inputs in order; with ``split``, documents become sentences.

    A bad row is a :class:`Reject` (its line, the reason) and reading goes on; a file that cannot be
    read as a whole (missing, unknown extension, a CSV header without ``text_field``, a corrupt or
    truncated ``.gz``) raises :class:`InvalidInputError`, possibly after rows of it were yielded.
    ``max_metadata_bytes`` bounds each row's metadata (compact UTF-8 JSON, :mod:`semsearch.rows`).
    """
    doc_number = 0
    for path in paths:
        fmt = detect_format(path)
        if fmt == "txt":
            rows: Iterator[Record | Reject] = read_txt(path, max_chars)
        elif fmt == "jsonl":
            rows = read_jsonl(path, text_field, id_field, max_chars, max_metadata_bytes)
        else:
            delimiter = "," if fmt == "csv" else "\t"
            rows = read_delimited(path, delimiter, text_field, id_field, max_chars, max_metadata_bytes)
        for row in rows:
            if split and isinstance(row, Record):
                doc_number += 1
                sentences = list(explode(row, doc_number))
                problem = next((id_problem(s.ext_id) for s in sentences if id_problem(s.ext_id)), None)
                if problem:  # the document's id plus "#n" can pass the length limit
                    line = int((row.source or ":0").rsplit(":", 1)[1])
                    yield Reject(str(path), line, f"sentence id {problem}", _snippet(row.text))
                    continue
                yield from sentences
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
