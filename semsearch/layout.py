"""The versioned index directory and its atomic publishing protocol.

::

    INDEX_ROOT/
      current -> versions/v000002     relative symlink, switched with os.replace (atomic)
      versions/v000001/               complete, immutable versions (manifest.json written last)
      versions/v000002/
      staging/<build-id>/             builds in progress and their resume checkpoints
      rejects/<build-id>.jsonl        rows the indexer refused, with line numbers and reasons
      .lock                           held by a writer (one build at a time)

A version directory only appears under ``versions/`` by ``rename`` of a finished staging
directory, and ``current`` only moves after that, so a crash at any point leaves the previous
version in place and serving; a staging directory is never read by the service.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from semsearch.errors import IndexNotFoundError, InvalidInputError
from semsearch.manifest import MANIFEST

log = logging.getLogger(__name__)

CURRENT = "current"
VERSIONS = "versions"
STAGING = "staging"
REJECTS = "rejects"
_VERSION_RE = re.compile(r"^v(\d{6})$")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class IndexRoot:
    """An index root directory holding versions and a ``current`` pointer."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def versions_dir(self) -> Path:
        return self.path / VERSIONS

    @property
    def staging_dir(self) -> Path:
        return self.path / STAGING

    @property
    def rejects_dir(self) -> Path:
        return self.path / REJECTS

    def versions(self) -> list[str]:
        """Published version names, oldest first."""
        if not self.versions_dir.is_dir():
            return []
        return sorted(p.name for p in self.versions_dir.iterdir() if _VERSION_RE.match(p.name) and p.is_dir())

    def current_version(self) -> str | None:
        """The version ``current`` points at, or None when nothing was published yet."""
        link = self.path / CURRENT
        try:
            target = os.readlink(link)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise IndexNotFoundError(f"{link} is not a symlink to a version: {e}") from e
        return Path(target).name

    def resolve(self) -> Path:
        """The directory of the current version (resolved once, so a concurrent switch cannot mix versions)."""
        name = self.current_version()
        if name is None:
            raise IndexNotFoundError(
                f"no published index at {self.path} (no '{CURRENT}' pointer); build one with "
                f"`python -m indexer build --input FILE --output {self.path}`"
            )
        return self.versions_dir / name

    def next_version(self) -> str:
        existing = [int(m.group(1)) for v in self.versions() if (m := _VERSION_RE.match(v))]
        return f"v{(max(existing) + 1 if existing else 1):06d}"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive writer lock; a second concurrent build fails fast instead of racing."""
        self.path.mkdir(parents=True, exist_ok=True)
        with (self.path / ".lock").open("a") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as e:
                raise InvalidInputError(f"another indexer process is writing to {self.path}") from e
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def publish(self, staged: Path) -> str:
        """Move a finished staging directory into ``versions/`` and switch ``current`` to it."""
        if not (staged / MANIFEST).is_file():
            raise InvalidInputError(f"refusing to publish {staged}: it has no {MANIFEST}")
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        name = self.next_version()
        final = self.versions_dir / name
        for f in staged.iterdir():
            if f.is_file():
                with f.open("rb") as fh:
                    os.fsync(fh.fileno())
        os.rename(staged, final)
        fsync_dir(self.versions_dir)
        tmp_link = self.path / f".{CURRENT}.tmp-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            tmp_link.unlink()
        os.symlink(f"{VERSIONS}/{name}", tmp_link)
        os.replace(tmp_link, self.path / CURRENT)
        fsync_dir(self.path)
        log.info("published %s as current", final)
        return name

    def prune(self, keep: int) -> list[str]:
        """Delete all but the newest ``keep`` versions; the current version is never deleted."""
        if keep < 1:
            raise InvalidInputError("--keep must be at least 1")
        current = self.current_version()
        versions = self.versions()
        removed = []
        for name in versions[:-keep] if len(versions) > keep else []:
            if name == current:
                continue
            shutil.rmtree(self.versions_dir / name, ignore_errors=True)
            removed.append(name)
        if removed:
            log.info("pruned old versions: %s", ", ".join(removed))
        return removed


def resolve_version_dir(path: str | Path) -> Path:
    """Accept either an index root (follow ``current``) or a version directory itself."""
    p = Path(path)
    if (p / MANIFEST).is_file():
        return p
    if not p.exists():
        raise IndexNotFoundError(f"index path {p} does not exist")
    return IndexRoot(p).resolve()
