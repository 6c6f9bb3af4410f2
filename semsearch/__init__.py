"""semsearch core: encoding, the index directory format, search and reranking (no HTTP here)."""

from __future__ import annotations

import os

__version__ = "0.1.0"

# No spin-waiting: GNU OpenMP (FAISS, torch) keeps its idle threads busy-waiting after every parallel
# region unless told otherwise, which doubled the CPU of a lone query (docs/benchmarks.md, "No
# spin-waiting"). libgomp reads this once, when it is loaded, so it is set here, before any module of
# the core imports faiss or torch; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
