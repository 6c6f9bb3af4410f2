"""What the indexer's commands share in parsing their options.

Closed choices are the core's ``Literal`` types used directly as option types (typer lists their values
in ``--help`` and rejects others with exit 2): ``semsearch.models.encoder.Pooling`` and ``Backend``,
``semsearch.choices.IndexType``, ``Mode`` and ``FusionMethod``. Each is defined once, in the core.
"""

from __future__ import annotations

from typing import Any

import typer


def parse_params(values: list[str], param_hint: str = "--index-param") -> dict[str, Any]:
    """``key=value`` strings to a dict (values stay strings; the index types them); bad syntax is exit 2."""
    out: dict[str, Any] = {}
    for v in values:
        key, sep, val = v.partition("=")
        if not sep:
            raise typer.BadParameter(f"expected key=value, got {v!r}", param_hint=param_hint)
        out[key.strip()] = val.strip()
    return out
