"""What text the encoder accepts, for every entry point (the service's schemas and the CLI).

The tokenizer raises a ``TypeError`` on a lone surrogate (a string that is not encodable as UTF-8,
e.g. ``"\\ud800"`` from JSON or undecodable bytes in a command line); NUL characters are refused like
the corpus readers refuse them. Checking here, at the edge, keeps such input away from shared work.
"""

from __future__ import annotations

import re

_NON_BLANK_RE = re.compile(r"\S")


def text_problem(text: str, *, allow_blank: bool = False) -> str | None:
    """Why ``text`` cannot be encoded (a phrase like "must not contain NUL characters"), or None."""
    if "\x00" in text:
        return "must not contain NUL characters (U+0000)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"is not valid Unicode text: lone surrogate U+{ord(text[e.start]):04X} at position {e.start}"
    if not allow_blank and not _NON_BLANK_RE.search(text):
        return "must not be empty or only whitespace"
    return None
