"""Shards: which shard a row belongs to, and what a version records about its sharding.

A shard is a set of segments. A sharded version's manifest says ``shards = {"count": N, "key":
"sha1-8"}`` and every entry of its ``segments`` list carries ``"shard": s``; an unsharded version
has ``shards = None`` and is exactly one shard (shard 0). A row's shard is a stable hash of its
user id (the id as text, the same text ``ext_id`` is stored as): the first 8 bytes of
``sha1(id)`` as a big-endian integer, modulo N. It depends on nothing but the id and N, so
``add``/``delete`` route a row to the same shard whichever machine or process computes it, and
an upsert always replaces the row in its own shard. Internal ids (``iid``) stay global across
shards (one ``next_iid`` per version), so the union of the shards is exactly the unsharded index.

Nothing here imports FAISS, SQLite or Ray.
"""

from __future__ import annotations

import hashlib
from typing import Any

from semsearch.errors import InvalidInputError

SHARD_KEY = "sha1-8"
MAX_SHARDS = 4096


def shard_of(ext_id: str | int, count: int) -> int:
    """The shard (0..count-1) of a row with this user id."""
    if count <= 1:
        return 0
    digest = hashlib.sha1(str(ext_id).encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % count


def shard_spec(count: int | None) -> dict[str, Any] | None:
    """The manifest's ``shards`` field for ``count`` shards (None: unsharded, as before sharding)."""
    if count is None:
        return None
    if not 1 <= int(count) <= MAX_SHARDS:
        raise InvalidInputError(f"--shards must be in 1..{MAX_SHARDS}, got {count}")
    return {"count": int(count), "key": SHARD_KEY}


def shard_count(spec: dict[str, Any] | None) -> int:
    """Shards of a version (1 when unsharded)."""
    if not spec:
        return 1
    if spec.get("key") != SHARD_KEY:
        raise InvalidInputError(f"unknown shard key {spec.get('key')!r} (this semsearch knows {SHARD_KEY!r})")
    return int(spec["count"])


def segment_shard(entry: dict[str, Any]) -> int:
    """The shard of one entry of a version's ``segments`` list (0 when unsharded)."""
    return int(entry.get("shard", 0))
