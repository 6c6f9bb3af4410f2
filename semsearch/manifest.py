"""``manifest.json``: what an index version is, written last, read first."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from semsearch.errors import CorruptIndexError

FORMAT = "semsearch-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


@dataclass
class Manifest:
    """The self-description of one index version."""

    model: str
    model_fingerprint: str
    pooling: str
    backend: str
    max_seq_length: int
    dimension: int
    index_type: str
    index_params: dict[str, Any]
    count: int
    corpus_checksum: str
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256
    normalized: bool = True
    metric: str = "inner_product"  # = cosine, the vectors are unit length
    version: str = ""
    parent_version: str | None = None
    built_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    build: dict[str, Any] = field(default_factory=dict)  # inputs, rejects, timings, truncation
    libraries: dict[str, str] = field(default_factory=lambda: library_versions())
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, ensure_ascii=False)

    def write(self, directory: Path) -> None:
        tmp = directory / (MANIFEST + ".tmp")
        tmp.write_text(self.to_json() + "\n", encoding="utf-8")
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, directory / MANIFEST)

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise CorruptIndexError(f"{path} is missing: not a complete index version") from e
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CorruptIndexError(f"{path} is not valid JSON: {e}") from e
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CorruptIndexError(f"{path} is not a semsearch manifest (format field is not {FORMAT!r})")
        if data.get("format_version") != FORMAT_VERSION:
            raise CorruptIndexError(
                f"{path} has format_version {data.get('format_version')!r}; this semsearch reads {FORMAT_VERSION}"
            )
        known = set(cls.__dataclass_fields__)
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as e:
            raise CorruptIndexError(f"{path} lacks required fields: {e}") from e

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
        }


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("semsearch", "sentence-transformers", "transformers", "torch", "faiss-cpu", "numpy", "onnxruntime"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out
