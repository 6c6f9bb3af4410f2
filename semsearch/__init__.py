"""semsearch core: encoding, the index directory format, search and reranking (no HTTP here)."""

from __future__ import annotations

__version__ = "0.1.0"
