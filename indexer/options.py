"""What the indexer's commands share in parsing their options.

Closed choices are the core's ``Literal`` types used directly as option types (typer lists their values
in ``--help`` and rejects others with exit 2): ``semsearch.models.encoder.Pooling`` and ``Backend``,
``semsearch.choices.IndexType``, ``Mode`` and ``FusionMethod``. Each is defined once, in the core.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from semsearch.errors import InvalidInputError
from semsearch.ids import id_problem

# `indexer search --filter`: far above any filter the grammar allows (semsearch.search.filters: a few levels,
# bounded sizes), far below what would exhaust the JSON parser's recursion or the memory
MAX_FILTER_CHARS = 1 << 20
MAX_FILTER_DEPTH = 32


def parse_params(values: list[str], param_hint: str = "--index-param") -> dict[str, Any]:
    """``key=value`` strings to a dict (values stay strings; the index types them); bad syntax is exit 2."""
    out: dict[str, Any] = {}
    for v in values:
        key, sep, val = v.partition("=")
        if not sep:
            raise typer.BadParameter(f"expected key=value, got {v!r}", param_hint=param_hint)
        out[key.strip()] = val.strip()
    return out


def parse_filter(text: str) -> Any:
    """``--filter``'s JSON, bounded in size and depth before and after parsing (exit 2 otherwise)."""
    if len(text) > MAX_FILTER_CHARS:
        raise typer.BadParameter(f"{len(text)} characters, over the limit of {MAX_FILTER_CHARS}", param_hint="--filter")
    try:
        spec = json.loads(text)
    except RecursionError as e:
        raise typer.BadParameter(f"nested deeper than {MAX_FILTER_DEPTH} levels", param_hint="--filter") from e
    except ValueError as e:  # JSONDecodeError, or an integer of more than 4300 digits
        raise typer.BadParameter(f"not valid JSON: {e}", param_hint="--filter") from e
    if _depth(spec) > MAX_FILTER_DEPTH:
        raise typer.BadParameter(f"nested deeper than {MAX_FILTER_DEPTH} levels", param_hint="--filter")
    return spec


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def parse_ids_option(values: list[str]) -> list[str]:
    """``--ids`` values split at commas, each id exactly as written (never stripped; see
    :mod:`semsearch.ids`). An empty id or one that is not a valid id is a data error."""
    out: list[str] = []
    for value in values:
        for part in value.split(","):
            problem = id_problem(part)
            if problem:
                hint = " (an empty piece: two commas, or a comma at an end?)" if part == "" else ""
                raise InvalidInputError(
                    f"--ids {_short(value)!r}: the id {_short(part)!r} {problem}{hint}; nothing was changed "
                    "(ids are taken exactly as written; an id containing a comma goes in --ids-file)"
                )
            out.append(part)
    return out


def read_ids_file(path: Path) -> list[str]:
    """One id per line of a UTF-8 file (``-``: standard input), exactly as written apart from the line
    ending (``\\n`` or ``\\r\\n``); blank lines and a leading byte-order mark are skipped.
    A bad line is an error naming it."""
    name = "standard input" if str(path) == "-" else str(path)
    try:
        data = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    except OSError as e:
        raise InvalidInputError(f"--ids-file {name}: {e.strerror or e}") from e
    out: list[str] = []
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.removesuffix(b"\r")
        if not raw:
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            where = f"--ids-file {name}:{lineno}"
            raise InvalidInputError(f"{where}: not valid UTF-8 ({e.reason} at byte {e.start})") from e
        if lineno == 1:
            text = text.removeprefix("\ufeff")
        problem = id_problem(text)
        if problem:
            raise InvalidInputError(f"--ids-file {name}:{lineno}: the id {_short(text)!r} {problem}")
        out.append(text)
    return out


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
