"""What text the encoder accepts, for every entry point (the service's schemas and the CLI).

The tokenizer raises a ``TypeError`` on a lone surrogate (a string that is not encodable as UTF-8,
e.g. ``"\\ud800"`` from JSON or undecodable bytes in a command line); NUL characters are refused like
the corpus readers refuse them. Checking here, at the edge, keeps such input away from shared work.
"""

from __future__ import annotations

import re

# Unicode White_Space, spelled out: Python's ``str.isspace``/``\s`` also count U+001C-U+001F, ECMA-262's
# ``\s`` counts U+FEFF and Rust's does neither, so the OpenAPI pattern and this check name the set
WHITESPACE = r"\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
TEXT_PATTERN = r"^[^\x00]*$"  # JSON Schema pattern of any accepted text
NON_BLANK_PATTERN = rf"^[^\x00]*[^\x00{WHITESPACE}][^\x00]*$"  # ... and of a text that must not be blank
_NON_BLANK_RE = re.compile(rf"[^{WHITESPACE}]")


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
