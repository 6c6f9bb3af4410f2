"""What a stored row's metadata may hold: the limits that keep every row searchable, filterable and serialisable.

A row is accepted only if every route can store it, return it, filter on it and serialise it, so the
limits are set where rows come in (the corpus readers; the service's writes can import the same
checks) and each refusal is a per-row reject with a reason:

- **Numbers are finite.** ``NaN``, ``Infinity``, ``-Infinity`` and literals that overflow a double
  (``1e400``) are refused: SQLite's JSON functions reject the stored text, which would make every
  filtered search on the index fail, and strict JSON (RFC 8259) has no such values.
- **Integers fit in 64 bits** (:data:`INT64_MIN`..:data:`INT64_MAX`): SQLite's JSON turns larger ones into
  doubles, so they could not be filtered on exactly. Integers beyond ±(2^53 - 1) are kept and
  returned exactly as JSON numbers, but JavaScript's ``JSON.parse`` reads them as doubles (use a
  string when a browser must see every digit). An integer literal of more than
  :data:`MAX_INT_DIGITS` digits is refused before it is converted (Python refuses 4,300+ digits).
- **Nesting**: at most :data:`MAX_METADATA_DEPTH` levels of objects/arrays, the row's metadata object
  being level 1 (the service serialises responses with a depth limit of about 254).
- **Size**: at most :data:`MAX_METADATA_BYTES` bytes of compact UTF-8 JSON per row (k=20 results stay
  under ~1.3 MB of metadata); callers may pass another bound.
- **Strings** (keys and values, at any depth): valid Unicode (no lone surrogate such as ``"\\ud800"``,
  which can be neither stored as UTF-8 nor tokenised nor serialised) and no NUL character.
- **Keys** are strings (JSON guarantees it). Keys that the filter language cannot name (anything but
  letters, digits and underscores, see :mod:`semsearch.search.filters`) are accepted, stored and returned;
  a filter on them is refused as invalid input, never an error of the index.
"""

from __future__ import annotations

import json
import math
from typing import Any

from semsearch.text import text_problem

MAX_METADATA_BYTES = 64 * 1024
MAX_METADATA_DEPTH = 32
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_INT_DIGITS = 40  # far above int64's 19 digits, far below Python's 4,300-digit conversion limit
_SHORT = 40


class RowError(ValueError):
    """A row that cannot be stored; the message is the reject's reason."""


def _refuse_constant(name: str) -> Any:
    raise RowError(f"{name} is not a finite number (JSON has no NaN or infinities)")


def _parse_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise RowError(f"number {_short(literal)} is too large for a double (it would become infinity)")
    return value


def _parse_int(literal: str) -> int:
    digits = len(literal.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise RowError(f"an integer with {digits} digits is outside the 64-bit range")
    return int(literal)


def loads_row(line: str) -> Any:
    """``json.loads`` of one input row, refusing what could not be stored: ``NaN``/``Infinity``,
    overflowing numbers, integer literals of more than :data:`MAX_INT_DIGITS` digits and nesting
    deeper than Python can parse all raise :class:`RowError` (a bad JSON syntax raises
    ``json.JSONDecodeError`` as usual)."""
    try:
        return json.loads(line, parse_constant=_refuse_constant, parse_float=_parse_float, parse_int=_parse_int)
    except RecursionError:
        raise RowError(f"JSON nested far deeper than the limit of {MAX_METADATA_DEPTH} levels") from None


def metadata_problem(
    metadata: Any, *, max_bytes: int = MAX_METADATA_BYTES, max_depth: int = MAX_METADATA_DEPTH
) -> str | None:
    """Why ``metadata`` (a row's metadata object) cannot be stored, or None. Walks iteratively, so any
    depth is reported, never a ``RecursionError``."""
    if not isinstance(metadata, dict):
        return f"metadata must be an object, got {type(metadata).__name__}"
    stack: list[tuple[dict[Any, Any] | list[Any], int, str]] = [(metadata, 1, "")]
    while stack:
        container, depth, path = stack.pop()
        if depth > max_depth:
            return f"metadata is nested more than {max_depth} levels deep (at {path})"
        items = container.items() if isinstance(container, dict) else enumerate(container)
        for key, value in items:
            if isinstance(container, dict):
                if not isinstance(key, str):
                    return f"metadata key {_short(key)} at {path or 'the top level'} must be a string"
                problem = text_problem(key, allow_blank=True)
                if problem:
                    return f"metadata key {_short(key)} {problem}"
                where = f"{path}.{key}" if path else key
            else:
                where = f"{path}[{key}]"
            if isinstance(value, dict | list):
                stack.append((value, depth + 1, where))
                continue
            problem = _scalar_problem(value)
            if problem:
                return f"metadata field {_short(where)} {problem}"
    size = len(json.dumps(metadata, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8"))
    if size > max_bytes:
        return f"metadata is {size:,} bytes of JSON, over the limit of {max_bytes:,} bytes per row"
    return None


def _scalar_problem(value: Any) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            return f"is an integer outside the 64-bit range ({value.bit_length()} bits); store it as a string"
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"is not a finite number ({value!r})"
    if isinstance(value, str):
        return text_problem(value, allow_blank=True)
    return f"has a type JSON cannot hold ({type(value).__name__})"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHORT else text[: _SHORT - 3] + "..."
