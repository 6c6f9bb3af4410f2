"""Typed values the index layer hands across modules and to its callers, each with its JSON form.

* :class:`EncoderMeta`: what an index records of its encoder (``model``, ``fingerprint``, ``pooling``,
  ``backend``, ``max_seq_length``, ``dimension``);
* :class:`IndexRequest`: the index type and ``--index-param`` values a build asked for (a later write
  uses the same), stored as the manifest's ``index_request``;
* :class:`SegmentEntry`: one entry of a version manifest's ``segments`` list (name, rows, FAISS type,
  sha256 of its ``segment.json``, and its shard when the version is sharded).

The JSON written to disk is exactly what the dicts were before: ``to_json`` gives the same keys, and
``from_json`` reads what any earlier version wrote. Imports nothing of the index format.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class EncoderMeta:
    """What an index records of its encoder."""

    model: str
    fingerprint: str
    pooling: str
    backend: str
    max_seq_length: int
    dimension: int
    chunking: dict[str, Any] | None = None  # passages (indexer build --chunk-tokens), kept by every change
    prompts: dict[str, str] | None = None  # the query/passage prompts the encoder prepends

    @classmethod
    def of(cls, value: EncoderMeta | Mapping[str, Any]) -> EncoderMeta:
        """Itself, or read from the dict form (``{"model": ..., "fingerprint": ..., ...}``)."""
        if isinstance(value, EncoderMeta):
            return value
        return cls(
            model=value["model"],
            fingerprint=value["fingerprint"],
            pooling=value["pooling"],
            backend=value["backend"],
            max_seq_length=value["max_seq_length"],
            dimension=int(value["dimension"]),
            chunking=value.get("chunking"),
            prompts=value.get("prompts"),
        )

    @classmethod
    def recorded(cls, manifest: Any) -> EncoderMeta:
        """What a version manifest records of its encoder."""
        return cls(
            manifest.model,
            manifest.model_fingerprint,
            manifest.pooling,
            manifest.backend,
            manifest.max_seq_length,
            manifest.dimension,
            getattr(manifest, "chunking", None),
            getattr(manifest, "prompts", None),
        )

    def optional_fields(self) -> dict[str, Any]:
        """The optional manifest fields this encoder record carries (absent ones stay absent)."""
        return {k: v for k, v in (("chunking", self.chunking), ("prompts", self.prompts)) if v}

    def manifest_fields(self) -> dict[str, Any]:
        """The same as a version manifest's fields (``fingerprint`` is ``model_fingerprint`` there)."""
        return {
            "model": self.model,
            "model_fingerprint": self.fingerprint,
            "pooling": self.pooling,
            "backend": self.backend,
            "max_seq_length": self.max_seq_length,
            "dimension": self.dimension,
        }


@dataclass(frozen=True)
class IndexRequest:
    """The index type (``flat``, ``hnsw``, ..., ``auto``) and the parameters asked for."""

    type: str = "flat"
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, value: IndexRequest | Mapping[str, Any] | None, default_type: str = "flat") -> IndexRequest:
        """Itself, or read from the dict form (``{"type": ..., "params": {...}}``; missing keys: defaults)."""
        if isinstance(value, IndexRequest):
            return value
        value = value or {}
        return cls(type=value.get("type", default_type), params=dict(value.get("params", {})))

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "params": self.params}


@dataclass(frozen=True)
class SegmentEntry:
    """One segment as a version lists it."""

    name: str
    count: int
    index_type: str
    sha256: str
    shard: int | None = None  # None: the version is not sharded (the key is absent on disk)

    @classmethod
    def of(cls, value: SegmentEntry | Mapping[str, Any]) -> SegmentEntry:
        if isinstance(value, SegmentEntry):
            return value
        shard = value.get("shard")
        return cls(
            name=value["name"],
            count=int(value.get("count", 0)),
            index_type=value.get("index_type", ""),
            sha256=value.get("sha256", ""),
            shard=None if shard is None else int(shard),
        )

    @property
    def shard_or_zero(self) -> int:
        """Its shard (an unsharded version is shard 0)."""
        return 0 if self.shard is None else self.shard

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "count": self.count, "index_type": self.index_type}
        out["sha256"] = self.sha256
        if self.shard is not None:
            out["shard"] = self.shard
        return out
