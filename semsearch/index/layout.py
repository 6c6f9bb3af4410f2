"""The index root: versions, segments, the atomic ``current`` switch, and garbage collection.

See :mod:`semsearch.index.format` for the layout. A version directory only appears under ``versions/``
by ``rename`` of a finished staging directory, and ``current`` only moves after that, so a crash
at any point leaves the previous version in place and serving; a staging directory is never read
by the service. Segments are moved into ``segments/`` before the version that lists them is
published; a crash in between leaves unreferenced segments that :meth:`IndexRoot.collect_garbage`
removes.
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
from semsearch.index.format import (
    CURRENT,
    LOCK,
    MANIFEST,
    REJECTS,
    SEGMENT_MANIFEST,
    SEGMENTS,
    STAGING,
    VERSIONS,
    fsync_dir,
)

log = logging.getLogger(__name__)

_VERSION_RE = re.compile(r"^v(\d{6})$")
# exactly the names semsearch.index.writer.new_segment_name makes: garbage collection touches nothing else
SEGMENT_NAME = re.compile(r"^s\d{14}-[0-9a-f]{8}$")
# what an index root holds before its first version is published (a failed or interrupted first build)
_UNPUBLISHED_ENTRIES = frozenset({LOCK, STAGING, REJECTS})


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
    def segments_dir(self) -> Path:
        return self.path / SEGMENTS

    @property
    def rejects_dir(self) -> Path:
        return self.path / REJECTS

    def versions(self) -> list[str]:
        """Published version names, oldest first."""
        if not self.versions_dir.is_dir():
            return []
        return sorted(p.name for p in self.versions_dir.iterdir() if _VERSION_RE.match(p.name) and p.is_dir())

    def check_writable(self, flag: str = "--output") -> None:
        """Refuse to write into a directory that holds something other than a semsearch index: it
        must not exist, be empty, hold an index (``current`` or ``versions/``) or only what an
        unpublished first build leaves (``staging/``, ``rejects/``, the lock file). Nothing is touched."""
        if not self.path.exists():
            return
        if not self.path.is_dir():
            raise InvalidInputError(f"{flag} {self.path} is not a directory")
        entries = {p.name for p in self.path.iterdir()}
        if CURRENT in entries or VERSIONS in entries or entries <= _UNPUBLISHED_ENTRIES:
            return
        shown = ", ".join(sorted(entries)[:5]) + (", ..." if len(entries) > 5 else "")
        raise InvalidInputError(
            f"{flag} {self.path} is not empty and is not a semsearch index (it holds {shown}); "
            "nothing was changed: choose a new or empty directory"
        )

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
    def lock(self, holder: str = "another indexer process") -> Iterator[None]:
        """Exclusive writer lock; a second concurrent writer fails fast instead of racing.

        The holder writes who it is (``holder``, its pid) into the lock file, and a refused writer's
        error names it: e.g. the service holding the index ``--writable``."""
        self.path.mkdir(parents=True, exist_ok=True)
        with (self.path / LOCK).open("a+") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as e:
                fh.seek(0)
                who = fh.read(200).strip() or "another indexer process"
                raise InvalidInputError(
                    f"{who} is writing to {self.path}; it holds the index's writer lock (one writer per index)"
                ) from e
            with contextlib.suppress(OSError):
                fh.truncate(0)
                fh.write(f"{holder} (pid {os.getpid()})\n")
                fh.flush()
            try:
                yield
            finally:
                with contextlib.suppress(OSError):
                    fh.truncate(0)
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def publish(self, staged: Path, segments: list[Path] | None = None) -> str:
        """Move staged segments into ``segments/``, the staged version into ``versions/``, then switch
        ``current`` to it (the commit point). Returns the version's name."""
        if not (staged / MANIFEST).is_file():
            raise InvalidInputError(f"refusing to publish {staged}: it has no {MANIFEST}")
        if segments:
            self.segments_dir.mkdir(parents=True, exist_ok=True)
            for seg in segments:
                _fsync_tree(seg)
                os.rename(seg, self.segments_dir / seg.name)
            fsync_dir(self.segments_dir)
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        name = self.next_version()
        final = self.versions_dir / name
        _fsync_tree(staged)
        os.rename(staged, final)
        fsync_dir(self.versions_dir)
        self.point_current(name)
        log.info("published %s as current", final)
        return name

    def point_current(self, name: str) -> None:
        tmp_link = self.path / f".{CURRENT}.tmp-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            tmp_link.unlink()
        os.symlink(f"{VERSIONS}/{name}", tmp_link)
        os.replace(tmp_link, self.path / CURRENT)
        fsync_dir(self.path)

    def prune(self, keep: int) -> list[str]:
        """Delete all but the newest ``keep`` versions (never the current one), then the segments
        that no remaining version lists."""
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
        self.collect_garbage()
        return removed

    def referenced_segments(self) -> set[str]:
        """Names of the segments some published version lists (an unreadable manifest keeps everything)."""
        from semsearch.index.manifest import Manifest

        names: set[str] = set()
        for version in self.versions():
            try:
                manifest = Manifest.read(self.versions_dir / version)
            except Exception:  # a version we cannot read may still reference anything
                return {p.name for p in self.segments_dir.iterdir()} if self.segments_dir.is_dir() else set()
            names.update(e.name for e in manifest.entries)
        return names

    def collect_garbage(self) -> list[str]:
        """Remove segments that no published version references (left by a crash or by pruning).

        Only what the writer made is a segment: a directory named as :data:`SEGMENT_NAME` says, holding
        the ``segment.json`` every segment is written with (a crash between moving a segment here and
        publishing its version leaves exactly such a directory). Anything else a user drops into
        ``segments/`` is never touched."""
        if not self.segments_dir.is_dir():
            return []
        keep = self.referenced_segments()
        removed = []
        for seg in sorted(self.segments_dir.iterdir()):
            if seg.name not in keep and is_segment_dir(seg):
                shutil.rmtree(seg, ignore_errors=True)
                removed.append(seg.name)
        if removed:
            log.info("removed %d unreferenced segment(s): %s", len(removed), ", ".join(removed))
        return removed


def is_segment_dir(path: Path) -> bool:
    """A directory the index writer made under ``segments/`` (its name and its ``segment.json``)."""
    return (
        bool(SEGMENT_NAME.match(path.name))
        and not path.is_symlink()
        and path.is_dir()
        and (path / SEGMENT_MANIFEST).is_file()
    )


def _fsync_tree(directory: Path) -> None:
    for f in directory.rglob("*"):
        if f.is_file():
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(directory)


def resolve_version_dir(path: str | Path) -> Path:
    """Accept either an index root (follow ``current``) or a version directory itself."""
    p = Path(path)
    if (p / MANIFEST).is_file():
        return p
    if not p.exists():
        raise IndexNotFoundError(f"index path {p} does not exist")
    return IndexRoot(p).resolve()
