"""The identity of a row's id, defined once for every reader, the writer, the CLI, the HTTP API and filters.

An id is a JSON integer or a non-empty string:

- **Identity is the id's exact text.** The integer ``n`` and the string of its decimal form (``str(n)``)
  name the same row; nothing else is equal: ``" 1"``, ``"01"``, ``"1.0"`` and ``"1"`` are four different
  ids. Ids are never stripped, case-folded or Unicode-normalised.
- **A row keeps the type it was written with**, and search returns exactly that value. A later write
  of the same id with the other type is refused (it would change what clients get back).
- **Integers stay exact in every JSON client**: within ±(2^53 − 1) (JavaScript's safe integers); use a
  string for anything larger. A JSON number without a fractional part (``5.0``) is the integer ``5``, as
  JSON Schema's ``integer`` says (:func:`as_id`); ``5.5`` is refused.
- Strings: at most :data:`MAX_ID_CHARS` characters, encodable as UTF-8 (no lone surrogates), no NUL.
"""

from __future__ import annotations

from typing import Any

UserId = int | str
MAX_SAFE_INT = 2**53 - 1
MAX_ID_CHARS = 1024


def id_problem(value: Any) -> str | None:
    """Why ``value`` cannot be an id (a phrase such as "must not be empty"), or None."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        return f"must be a string or an integer, got {_json_type(value)}"
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INT:
            return "integer ids must be within ±(2^53 - 1) so that every JSON client keeps them exactly; use a string"
        return None
    if value == "":
        return "must not be empty"
    if len(value) > MAX_ID_CHARS:
        return f"has {len(value)} characters, over the limit of {MAX_ID_CHARS}"
    if "\x00" in value:
        return "must not contain NUL characters (U+0000)"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"is not valid Unicode text: lone surrogate U+{ord(value[e.start]):04X} at position {e.start}"
    return None


def as_id(value: Any) -> Any:
    """``value`` with an integral float (``5.0``, how some JSON encoders write integers) turned into the
    integer it equals; anything else unchanged (for :func:`id_problem` to judge)."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= MAX_SAFE_INT:
        return int(value)
    return value


def id_key(value: UserId) -> str:
    """The identity of an id: the text under which it is stored and looked up."""
    return str(value) if isinstance(value, int) else value


def _json_type(value: Any) -> str:
    return {
        bool: "a boolean",
        float: "a number with a fraction",
        type(None): "null",
        list: "an array",
        dict: "an object",
    }.get(type(value), type(value).__name__)
