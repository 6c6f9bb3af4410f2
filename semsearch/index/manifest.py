"""The two manifests: ``manifest.json`` (a version, written last, read first) and ``segment.json``.

Both carry a ``checksum`` over their own fields (:func:`semsearch.index.format.self_checksum`), so a hand
edit (say, of ``model``) is caught by ``verify`` and refused by every loader, not only the files
they describe.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from semsearch.errors import CorruptIndexError, ModelMismatchError
from semsearch.index.entries import SegmentEntry
from semsearch.index.format import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    SEGMENT_FORMAT,
    SEGMENT_MANIFEST,
    self_checksum,
    write_json_atomic,
)

READABLE_FORMAT_VERSIONS = (1, FORMAT_VERSION)

_T = TypeVar("_T", bound="_Checked")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class _Checked:
    """Shared JSON round trip with a self checksum."""

    FILE = ""
    FORMAT_NAME = ""

    def fields_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    def sealed(self) -> dict[str, Any]:
        data = self.fields_dict()
        data["checksum"] = self_checksum(data)
        return data

    def write(self, directory: Path) -> None:
        write_json_atomic(directory / self.FILE, self.sealed())

    @classmethod
    def _load(cls: type[_T], directory: Path) -> tuple[_T, dict[str, Any]]:
        path = directory / cls.FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise CorruptIndexError(f"{path} is missing") from e
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CorruptIndexError(f"{path} is not valid JSON: {e}") from e
        if not isinstance(data, dict) or data.get("format") != cls.FORMAT_NAME:
            raise CorruptIndexError(f"{path} is not a {cls.FORMAT_NAME} manifest (format field)")
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        try:
            obj = cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as e:
            raise CorruptIndexError(f"{path} lacks required fields: {e}") from e
        return obj, data


@dataclass
class SegmentManifest(_Checked):
    """``segment.json``: what one immutable segment holds."""

    FILE = SEGMENT_MANIFEST
    FORMAT_NAME = SEGMENT_FORMAT

    name: str
    count: int  # rows in the segment (tombstones live in versions, never here)
    dimension: int
    index_type: str  # the FAISS type actually built for this segment
    index_params: dict[str, Any]
    model_fingerprint: str
    min_iid: int
    max_iid: int
    corpus_sum: str  # multiset hash of the rows (semsearch.index.format.rows_sum)
    tokens: int  # FTS5 tokens over all rows: BM25's collection statistics are sums of these
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256
    created_at: str = field(default_factory=_now)
    origin: dict[str, Any] = field(default_factory=dict)  # build/add/merge and what it came from
    format: str = SEGMENT_FORMAT

    @classmethod
    def read(cls, directory: Path) -> SegmentManifest:
        obj, data = cls._load(directory)
        if data.get("checksum") != self_checksum(data):
            raise CorruptIndexError(f"{directory / cls.FILE}: its checksum does not match its fields (edited?)")
        return obj


@dataclass
class Manifest(_Checked):
    """The self-description of one index version (format 2; format-1 manifests still read)."""

    FILE = MANIFEST
    FORMAT_NAME = FORMAT

    model: str
    model_fingerprint: str
    pooling: str
    backend: str
    max_seq_length: int
    dimension: int
    index_type: str
    index_params: dict[str, Any]
    count: int  # live rows
    corpus_checksum: str
    files: dict[str, str] = field(default_factory=dict)  # version-level files (tombstones) -> sha256
    normalized: bool = True
    metric: str = "inner_product"  # = cosine, the vectors are unit length
    version: str = ""
    parent_version: str | None = None
    built_at: str = field(default_factory=_now)
    build: dict[str, Any] = field(default_factory=dict)  # inputs, rejects, timings, truncation
    libraries: dict[str, str] = field(default_factory=lambda: library_versions())
    # format 2: the segments (name, count, sha256 of segment.json) and the tombstones
    segments: list[dict[str, Any]] = field(default_factory=list)
    tombstones: int = 0
    next_iid: int = 0
    index_request: dict[str, Any] = field(default_factory=dict)  # the type and --index-param values asked for
    shards: dict[str, Any] | None = None
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    # Optional, absent from older manifests (and from the checksummed fields when unset, so those keep
    # their checksum): how documents are cut into passages ({"tokens", "overlap"}: every later add applies
    # it) and the prompts the encoder prepends ({"query", "passage"}).
    chunking: dict[str, Any] | None = None
    prompts: dict[str, str] | None = None

    OPTIONAL = ("chunking", "prompts")

    def fields_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in self.OPTIONAL:
            if data.get(key) is None:
                data.pop(key, None)
        return data

    @property
    def legacy(self) -> bool:
        """A format-1 version: its one segment's files lie in the version directory itself."""
        return self.format_version == 1

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        obj, data = cls._load(directory)
        path = directory / MANIFEST
        if data.get("format_version") not in READABLE_FORMAT_VERSIONS:
            raise CorruptIndexError(
                f"{path} has format_version {data.get('format_version')!r}; this semsearch reads "
                f"{', '.join(map(str, READABLE_FORMAT_VERSIONS))}"
            )
        # format 1 had no self checksum; format 2 always has one
        if (data.get("format_version") != 1 or "checksum" in data) and data.get("checksum") != self_checksum(data):
            raise CorruptIndexError(f"{path}: its checksum does not match its fields (was it edited by hand?)")
        return obj

    @property
    def entries(self) -> list[SegmentEntry]:
        """Its ``segments`` list, typed (the JSON on disk stays the list of dicts)."""
        return [SegmentEntry.of(e) for e in self.segments]

    def summary(self) -> dict[str, Any]:
        """The fields users ask about first (``indexer info --json``, ``GET /info``)."""
        return {
            "version": self.version,
            "count": self.count,
            "model": self.model,
            "model_fingerprint": self.model_fingerprint,
            "pooling": self.pooling,
            "backend": self.backend,
            "dimension": self.dimension,
            "metric": self.metric,
            "normalized": self.normalized,
            "index_type": self.index_type,
            "index_params": self.index_params,
            "built_at": self.built_at,
            "corpus_checksum": self.corpus_checksum,
            "format_version": self.format_version,
            "segments": len(self.segments) if not self.legacy else 1,
            "tombstones": self.tombstones,
            **{key: getattr(self, key) for key in self.OPTIONAL if getattr(self, key) is not None},
        }


class LoadedVersion:
    """What a loaded index version answers from its manifest: its version name, its row count and
    whether an encoder is the one it was built with (:class:`~semsearch.search.reader.SearchIndex` and
    :class:`~semsearch.search.sharded.ShardedIndex` both are one)."""

    directory: Path
    manifest: Manifest

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def count(self) -> int:
        return self.manifest.count

    def check_encoder(self, model_fingerprint: str, model_name: str, pooling: str) -> None:
        """Refuse an encoder that is not the one the index was built with, naming both."""
        m = self.manifest
        if model_fingerprint != m.model_fingerprint or pooling != m.pooling:
            raise ModelMismatchError(
                f"index {self.directory} was built with model {m.model!r} (fingerprint {m.model_fingerprint}, "
                f"pooling {m.pooling}); the configured encoder is {model_name!r} (fingerprint "
                f"{model_fingerprint}, pooling {pooling})"
            )


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("semsearch", "sentence-transformers", "transformers", "torch", "faiss-cpu", "numpy", "onnxruntime"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out
