"""The output folder: refuse to clobber what is not a reranker, write into a staging folder, publish whole."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from semsearch.errors import InvalidInputError
from semsearch.models.reranker import RERANKER_META_FILE


def check_output(output_dir: Path, overwrite: bool) -> None:
    """Refuse a non-folder, a non-empty folder without ``overwrite``, and any folder that is not a reranker."""
    if output_dir.exists() and not output_dir.is_dir():
        raise InvalidInputError(f"output {output_dir} exists and is not a folder")
    if output_dir.exists() and any(output_dir.iterdir()):
        if not overwrite:
            raise InvalidInputError(f"output folder {output_dir} is not empty (use overwrite)")
        if not (output_dir / RERANKER_META_FILE).exists():
            raise InvalidInputError(f"refusing to overwrite {output_dir}: it is not a reranker folder")


@contextmanager
def staged_output(output_dir: Path, overwrite: bool) -> Iterator[Path]:
    """A staging folder next to ``output_dir``, published in its place when the block succeeds and removed
    when it fails (an interrupted run leaves no half-written model where a service would load it)."""
    check_output(output_dir, overwrite)  # again: it may have changed during training
    staging = output_dir.with_name(f".{output_dir.name}.partial-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        yield staging
        _publish(staging, output_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _publish(staging: Path, output_dir: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    for path in [staging, *staging.rglob("*")]:  # some writers create 0600 files; use the usual umask
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
    if output_dir.exists():
        old = output_dir.with_name(f".{output_dir.name}.old-{os.getpid()}")
        output_dir.rename(old)
        staging.rename(output_dir)
        shutil.rmtree(old)
    else:
        staging.rename(output_dir)
