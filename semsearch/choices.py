"""Closed choices of the core, each defined once as a ``Literal``, and the one check that names the valid values.

The CLI (``indexer``) takes these ``Literal`` types as its option types, so a choice added here reaches
``--help`` and the error for a bad value without a second list. Pooling and backend live in
``semsearch.models.encoder`` (``Pooling``, ``Backend``) next to the code that implements them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from semsearch.errors import InvalidInputError

Mode = Literal["dense", "lexical", "hybrid"]
FusionMethod = Literal["rrf", "minmax", "zscore"]
IndexType = Literal["flat", "hnsw", "ivf", "sq8", "pq", "hnsw-sq8", "binary", "auto"]


def check_choice(value: str, choices: Sequence[str], what: str) -> None:
    """Raise a clear error listing the valid values."""
    if value not in choices:
        raise InvalidInputError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")
