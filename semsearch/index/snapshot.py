"""Snapshots: one archive file of an index's current version, and restoring one with verification.

An archive is a tar file (``.tar``, or gzip-compressed ``.tar.gz`` / ``.tgz``) laid out like an index root::

    snapshot.json                          first member: what the archive holds (version, files, sizes, sha256)
    versions/v000003/manifest.json
    versions/v000003/tombstones.npy        when the version has tombstones
    segments/<segment>/segment.json        every segment the version lists, with its files
    segments/<segment>/index.faiss ...

:func:`write_snapshot` is consistent while writers keep publishing: it reads the version ``current``
points at once, then opens every file of that version before archiving any of them. Segments and version
files are never modified once published, and an open file outlives a prune that unlinks it (POSIX), so
the archive holds exactly that version even if a writer publishes and prunes meanwhile; no lock is
taken. Every file is checksummed while it is read and a version whose files differ from their
manifests is refused rather than archived.

:func:`restore_snapshot` treats the archive as hostile: every member is checked before anything is
written (only the names above, regular files and directories: no absolute path, no ``..``, no link, no
device), files are written by this code (never ``extractall``) into a staging directory, and every
checksum is verified there (the archive's own list, each file against its ``segment.json``, each
``segment.json`` against the version's manifest, the manifests' self checksums, optionally the full
``verify`` of the caller) before the result is published: a new directory appears by one ``rename``;
onto an existing index (``overwrite=True`` only) the restored version is published as its next version
and ``current`` switches atomically, so a service serving it hot-reloads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tarfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, cast

from semsearch.errors import CorruptIndexError, InvalidInputError
from semsearch.index.format import (
    CURRENT,
    MANIFEST,
    SEGMENT_FILES,
    SEGMENT_MANIFEST,
    SEGMENTS,
    TOMBSTONES_FILE,
    VERSIONS,
    file_sha256,
    fsync_dir,
)
from semsearch.index.layout import SEGMENT_NAME, IndexRoot
from semsearch.index.manifest import Manifest, SegmentManifest

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = "semsearch-snapshot"
SNAPSHOT_FORMAT_VERSION = 1
SNAPSHOT_META = "snapshot.json"
SNAPSHOT_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_VERSION_DIR = re.compile(r"^v\d{6}$")
_MAX_META_BYTES = 16 << 20  # snapshot.json lists files: a few KiB per segment
_OPEN_RETRIES = 5
_BLOCK = 1 << 20

Check = Callable[[Path], list[str]]


@dataclass(frozen=True)
class SnapshotInfo:
    """What :func:`write_snapshot` archived or :func:`restore_snapshot` published."""

    path: Path  # the archive (write) or the index root (restore)
    version: str  # the source version's name (write) or the published version's name (restore)
    source_version: str
    count: int
    segments: int
    files: int
    bytes: int  # file bytes archived (uncompressed)
    sha256: str = ""  # of the archive file (write only)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "path": str(self.path)}


def snapshot_compression(path: Path) -> str:
    """``""`` for ``.tar``, ``"gz"`` for ``.tar.gz``/``.tgz``; anything else is refused."""
    name = path.name
    if name.endswith((".tar.gz", ".tgz")):
        return "gz"
    if name.endswith(".tar"):
        return ""
    raise InvalidInputError(f"snapshot file {path} must end in {', '.join(SNAPSHOT_SUFFIXES)}")


# ---------------------------------------------------------------------------------------------- write


@dataclass
class _Source:
    arcname: str
    handle: IO[bytes]
    size: int
    expected_sha256: str | None  # from the manifest that lists the file (None: the version manifest itself)


def _open_version(root: IndexRoot) -> tuple[str, Manifest, list[_Source]]:
    """The current version and an open handle on each of its files, retried if a writer moves
    ``current`` and prunes between reading the pointer and opening the files."""
    last: Exception | None = None
    for _ in range(_OPEN_RETRIES):
        version = root.current_version()
        if version is None:
            raise InvalidInputError(f"no published index at {root.path} (no '{CURRENT}' pointer): nothing to snapshot")
        sources: list[_Source] = []
        try:
            version_dir = root.versions_dir / version
            sources.append(_open(f"{VERSIONS}/{version}/{MANIFEST}", version_dir / MANIFEST, None))
            try:
                manifest = Manifest.read(version_dir)  # the file is open: a prune now cannot hide it from us
            except CorruptIndexError:
                if not (version_dir / MANIFEST).exists():
                    raise FileNotFoundError(version_dir / MANIFEST) from None
                raise
            if manifest.legacy:
                raise InvalidInputError(
                    f"{version_dir} is a format-1 version; run `python -m indexer upgrade --index {root.path}` "
                    "before taking a snapshot"
                )
            if manifest.tombstones:
                sources.append(
                    _open(
                        f"{VERSIONS}/{version}/{TOMBSTONES_FILE}",
                        version_dir / TOMBSTONES_FILE,
                        manifest.files.get(TOMBSTONES_FILE, ""),
                    )
                )
            for entry in manifest.segments:
                seg_dir = root.segments_dir / entry["name"]
                meta_source = _open(f"{SEGMENTS}/{entry['name']}/{SEGMENT_MANIFEST}", seg_dir / SEGMENT_MANIFEST, "")
                sources.append(meta_source)
                data = meta_source.handle.read()
                meta_source.handle.seek(0)
                if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
                    raise CorruptIndexError(
                        f"segment {entry['name']}: segment.json differs from the version's record (sha256); "
                        f"run `python -m indexer verify --index {root.path}`"
                    )
                meta_source.expected_sha256 = entry.get("sha256")
                files = json.loads(data.decode("utf-8")).get("files", {})
                for name in SEGMENT_FILES:
                    sources.append(_open(f"{SEGMENTS}/{entry['name']}/{name}", seg_dir / name, files.get(name, "")))
            return version, manifest, sources
        except FileNotFoundError as e:  # pruned between reading `current` and opening: take the new one
            last = e
            _close(sources)
        except BaseException:
            _close(sources)
            raise
    raise InvalidInputError(f"{root.path} kept changing while its files were opened ({last}); try again")


def _open(arcname: str, path: Path, expected: str | None) -> _Source:
    handle = path.open("rb")
    return _Source(arcname, handle, os.fstat(handle.fileno()).st_size, expected)


def _close(sources: list[_Source]) -> None:
    for s in sources:
        s.handle.close()


class _HashingReader(io.RawIOBase):
    """Reads at most ``size`` bytes of ``handle``, hashing them."""

    def __init__(self, handle: IO[bytes], size: int) -> None:
        self.handle = handle
        self.left = size
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.handle.read(n)
        self.left -= len(data)
        self.digest.update(data)
        return data


def _snapshot_meta(version: str, manifest: Any, sources: list[Any]) -> dict[str, Any]:
    """``snapshot.json``: what the archive holds, with every file's size and sha256."""
    meta: dict[str, Any] = {
        "format": SNAPSHOT_FORMAT,
        "format_version": SNAPSHOT_FORMAT_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "version": version,
        "count": manifest.count,
        "model": manifest.model,
        "segments": [e["name"] for e in manifest.segments],
        "files": {s.arcname: {"size": s.size, "sha256": s.expected_sha256} for s in sources},
    }
    # the version manifest's own sha256 is only known once read; read it now (it is small)
    head = sources[0]
    head_bytes = head.handle.read()
    head.handle.seek(0)
    meta["files"][head.arcname]["sha256"] = hashlib.sha256(head_bytes).hexdigest()
    return meta


def _write_archive(tmp: Path, compression: str | None, meta: dict[str, Any], sources: list[Any], root: Any) -> int:
    """Write the tar to ``tmp`` (fsynced), checking every file's sha256 as it is read; returns the bytes."""
    mode = f"w:{compression}" if compression else "w"
    total = 0
    with tmp.open("wb") as raw:
        with tarfile.open(fileobj=raw, mode=mode, format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            meta_bytes = json.dumps(meta, indent=2, sort_keys=True).encode("utf-8")
            tar.addfile(_member(SNAPSHOT_META, len(meta_bytes)), io.BytesIO(meta_bytes))
            for directory in _directories(meta["version"], meta["segments"]):
                tar.addfile(_member(directory, 0, tarfile.DIRTYPE))
            for s in sources:
                reader = _HashingReader(s.handle, s.size)
                tar.addfile(_member(s.arcname, s.size), reader)
                actual = reader.digest.hexdigest()
                expected = meta["files"][s.arcname]["sha256"]
                if actual != expected:
                    raise CorruptIndexError(
                        f"{s.arcname}: sha256 {actual[:12]}… differs from its manifest's {str(expected)[:12]}…; "
                        f"nothing was archived (run `python -m indexer verify --index {root.path}`)"
                    )
                total += s.size
        raw.flush()
        os.fsync(raw.fileno())
    return total


def write_snapshot(index: str | Path, out_path: str | Path) -> SnapshotInfo:
    """Archive the current version of the index root ``index`` into ``out_path`` (``.tar``, ``.tar.gz``
    or ``.tgz``), written to a temporary name and renamed when complete; an existing file is refused."""
    root = IndexRoot(index)
    out = Path(out_path)
    compression = snapshot_compression(out)
    if (root.path / MANIFEST).is_file():
        raise InvalidInputError(f"{root.path} is a version directory; give the index root that holds `current`")
    if out.exists():
        raise InvalidInputError(f"{out} already exists; choose a new file name")
    if not out.parent.is_dir():
        raise InvalidInputError(f"the directory of {out} does not exist")
    version, manifest, sources = _open_version(root)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        total = _write_archive(tmp, compression, _snapshot_meta(version, manifest, sources), sources, root)
        try:
            os.link(tmp, out)  # never replaces a file that appeared meanwhile
        except FileExistsError:
            raise InvalidInputError(f"{out} appeared while the snapshot was written; nothing was replaced") from None
        tmp.unlink()
        fsync_dir(out.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    finally:
        _close(sources)
    log.info("snapshot of %s (%s, %d rows) written to %s", root.path, version, manifest.count, out)
    return SnapshotInfo(
        path=out,
        version=version,
        source_version=version,
        count=manifest.count,
        segments=len(manifest.segments),
        files=len(sources),
        bytes=total,
        sha256=file_sha256(out),
    )


def _directories(version: str, segments: list[str]) -> list[str]:
    return [VERSIONS, f"{VERSIONS}/{version}", SEGMENTS] + [f"{SEGMENTS}/{name}" for name in segments]


def _member(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size if kind == tarfile.REGTYPE else 0
    info.mode = 0o644 if kind == tarfile.REGTYPE else 0o755
    info.mtime = int(time.time())
    return info


# -------------------------------------------------------------------------------------------- restore


def _member_problem(member: tarfile.TarInfo) -> str | None:
    """Why an archive member may not be restored, or None for an expected name of an allowed kind."""
    name = member.name
    if member.issym() or member.islnk():
        return f"is a {'symbolic' if member.issym() else 'hard'} link (to {member.linkname!r}); links are refused"
    if member.isdev() or member.isfifo():
        return "is a device or FIFO; only regular files and directories are allowed"
    if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE):
        return f"has tar type {member.type!r}; only regular files and directories are allowed"
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "is an absolute path"
    parts = name.rstrip("/").split("/")
    if ".." in parts:
        return "holds '..'"
    if any(p in ("", ".") for p in parts) or "\\" in name or "\x00" in name:
        return "is not a plain relative path"
    if member.isdir():
        ok = (
            parts in ([VERSIONS], [SEGMENTS])
            or (len(parts) == 2 and parts[0] == VERSIONS and _VERSION_DIR.match(parts[1]))
            or (len(parts) == 2 and parts[0] == SEGMENTS and SEGMENT_NAME.match(parts[1]))
        )
    else:
        ok = (
            parts == [SNAPSHOT_META]
            or (
                len(parts) == 3
                and parts[0] == VERSIONS
                and bool(_VERSION_DIR.match(parts[1]))
                and parts[2] in (MANIFEST, TOMBSTONES_FILE)
            )
            or (
                len(parts) == 3
                and parts[0] == SEGMENTS
                and bool(SEGMENT_NAME.match(parts[1]))
                and parts[2] in (SEGMENT_MANIFEST, *SEGMENT_FILES)
            )
        )
    return None if ok else "is not a file a semsearch snapshot holds"


@contextlib.contextmanager
def _open_archive(archive: Path) -> Iterator[tuple[tarfile.TarFile, IO[bytes]]]:
    """The archive read as a stream (one pass, gzip detected by its magic bytes, not the name), and the
    decompressed byte stream under it (for :func:`_check_end`)."""
    try:
        handle = archive.open("rb")
    except FileNotFoundError:
        raise InvalidInputError(f"snapshot {archive} does not exist") from None
    except OSError as e:
        raise InvalidInputError(f"snapshot {archive} cannot be read ({_why(e)})") from None
    with contextlib.ExitStack() as stack:
        stack.enter_context(handle)
        raw: IO[bytes] = handle
        if handle.read(2) == b"\x1f\x8b":
            raw = cast(IO[bytes], stack.enter_context(gzip.GzipFile(fileobj=handle, mode="rb")))
        handle.seek(0)
        try:
            tar = stack.enter_context(tarfile.open(fileobj=raw, mode="r|"))
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            raise InvalidInputError(
                f"snapshot {archive} is truncated or not a tar archive ({_why(e)}); nothing was restored"
            ) from None
        yield tar, raw


def _check_end(tar: tarfile.TarFile, raw: IO[bytes], archive: Path) -> None:
    """After the last member: the end-of-archive marker (two zero blocks; tarfile stops silently at a
    short read too) and, for gzip, its end-of-stream marker and CRC (read to the end of the file)."""
    stream: Any = tar.fileobj  # tarfile's _Stream: it has read the first end block, or tried to
    first_read_whole = getattr(stream, "pos", None) == tar.offset + tarfile.BLOCKSIZE
    if not first_read_whole or stream.read(tarfile.BLOCKSIZE) != tarfile.NUL * tarfile.BLOCKSIZE:
        raise InvalidInputError(
            f"snapshot {archive} is truncated (it ends without the tar end-of-archive marker); nothing was restored"
        )
    while raw.read(_BLOCK):
        pass


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _scan(archive: Path) -> tuple[list[tarfile.TarInfo], dict[str, Any]]:
    """First pass: every member validated before anything is written; ``snapshot.json`` read. A
    truncated or corrupt archive is refused here (the whole stream is read once)."""
    members: list[tarfile.TarInfo] = []
    meta_bytes: bytes | None = None
    seen: set[str] = set()
    with _open_archive(archive) as (tar, raw):
        try:
            for member in tar:
                _check_member(member, archive)
                name = member.name.rstrip("/")
                if name in seen:
                    raise InvalidInputError(f"snapshot {archive}: member {name!r} appears twice; nothing was restored")
                seen.add(name)
                if not members:
                    if member.name != SNAPSHOT_META or not member.isfile():
                        raise InvalidInputError(
                            f"snapshot {archive} does not start with {SNAPSHOT_META}: not a semsearch snapshot"
                        )
                    meta_bytes = _read_meta(tar, member, archive)
                members.append(member)
            _check_end(tar, raw, archive)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            raise InvalidInputError(
                f"snapshot {archive} is truncated or corrupt ({_why(e)}); nothing was restored"
            ) from None
    if meta_bytes is None:
        raise InvalidInputError(f"snapshot {archive} is empty: not a semsearch snapshot")
    return members, _load_meta(meta_bytes, archive)


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    problem = _member_problem(member)
    if problem is not None:
        raise InvalidInputError(f"snapshot {archive}: member {member.name!r} {problem}; nothing was restored")


def _read_meta(tar: tarfile.TarFile, member: tarfile.TarInfo, archive: Path) -> bytes:
    if member.size > _MAX_META_BYTES:
        raise InvalidInputError(f"snapshot {archive}: {SNAPSHOT_META} is over {_MAX_META_BYTES} bytes")
    handle = tar.extractfile(member)
    assert handle is not None
    return handle.read()


def _load_meta(data: bytes, archive: Path) -> dict[str, Any]:
    try:
        meta = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidInputError(f"snapshot {archive}: {SNAPSHOT_META} is not valid JSON ({e})") from None
    files = meta.get("files") if isinstance(meta, dict) else None
    if (
        not isinstance(meta, dict)
        or meta.get("format") != SNAPSHOT_FORMAT
        or not isinstance(meta.get("version"), str)
        or not isinstance(files, dict)
        or not all(
            isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get("sha256"), str)
            for v in files.values()
        )
    ):
        raise InvalidInputError(f"snapshot {archive}: {SNAPSHOT_META} is not a {SNAPSHOT_FORMAT} description")
    if meta.get("format_version") != SNAPSHOT_FORMAT_VERSION:
        raise InvalidInputError(
            f"snapshot {archive} has format_version {meta.get('format_version')!r}; this semsearch reads "
            f"{SNAPSHOT_FORMAT_VERSION}"
        )
    return meta


def restore_snapshot(
    archive: str | Path,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    check: Check | None = None,
) -> SnapshotInfo:
    """Restore ``archive`` into the index root ``out_dir`` after verifying every checksum.

    ``out_dir`` must not exist or be empty; an existing index is refused unless ``overwrite``, and then
    the restored version becomes its next version (``current`` switches atomically, older versions stay
    until pruned). ``check`` (e.g. :func:`semsearch.search.verify`) runs on the staged index root too; a
    problem it reports refuses the restore. Raises :class:`InvalidInputError` (a bad, truncated or
    hostile archive; a refused target) or :class:`CorruptIndexError` (a checksum that does not match);
    nothing is published then.
    """
    archive = Path(archive)
    root = IndexRoot(out_dir)
    existing = _existing_index(root, overwrite)
    if existing:
        staging_parent = root.staging_dir
    else:
        staging_parent = root.path.parent
        if not staging_parent.is_dir():
            raise InvalidInputError(f"the parent directory of {root.path} does not exist")
    staging_parent.mkdir(parents=True, exist_ok=True)
    staged = staging_parent / f".restore-{root.path.name}-{os.getpid()}-{time.time_ns()}"
    try:
        meta = _extract(archive, staged)
        version = meta["version"]
        _verify_staged(archive, staged, version, meta)
        if check is not None:
            problems = check(staged)
            if problems:
                raise CorruptIndexError(
                    f"snapshot {archive} does not verify: {problems[0]}"
                    + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
                    + "; nothing was restored"
                )
        manifest = Manifest.read(staged / VERSIONS / version)
        if existing:
            published = _publish_into(root, staged, version, manifest)
            shutil.rmtree(staged, ignore_errors=True)  # what is left: empty directories and a symlink
            with contextlib.suppress(OSError):
                root.staging_dir.rmdir()
        else:
            _publish_new(root, staged)
            published = version
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        if existing:
            with contextlib.suppress(OSError):
                root.staging_dir.rmdir()
        raise
    log.info("restored snapshot %s (%s) into %s as %s", archive, version, root.path, published)
    return SnapshotInfo(
        path=root.path,
        version=published,
        source_version=version,
        count=manifest.count,
        segments=len(manifest.segments),
        files=len(meta["files"]),
        bytes=sum(int(f["size"]) for f in meta["files"].values()),
    )


def _existing_index(root: IndexRoot, overwrite: bool) -> bool:
    """True when ``root`` already holds an index (refused unless ``overwrite``); False when it is absent
    or empty; anything else is refused."""
    path = root.path
    if not path.exists():
        return False
    if not path.is_dir():
        raise InvalidInputError(f"--output {path} is not a directory")
    entries = sorted(p.name for p in path.iterdir())
    if not entries:
        return False
    if root.current_version() is None:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise InvalidInputError(
            f"--output {path} is not empty and is not a semsearch index (it holds {shown}); nothing was changed"
        )
    if not overwrite:
        raise InvalidInputError(
            f"--output {path} already holds an index (current {root.current_version()}); nothing was changed "
            "(pass --overwrite to publish the snapshot as its next version)"
        )
    return True


def _extract(archive: Path, staged: Path) -> dict[str, Any]:
    """Validate every member (:func:`_scan`), then write the files into ``staged`` in a second pass,
    checking each member again and its size and sha256 against ``snapshot.json``. Returns ``snapshot.json``."""
    members, meta = _scan(archive)
    files: dict[str, Any] = meta["files"]
    regular = {m.name for m in members[1:] if m.isfile()}
    if regular != set(files):
        missing = sorted(set(files) - regular)[:3]
        extra = sorted(regular - set(files))[:3]
        raise InvalidInputError(
            f"snapshot {archive} does not hold the files its {SNAPSHOT_META} lists (missing: {missing}; not "
            f"listed: {extra}): truncated or assembled by hand; nothing was restored"
        )
    versions = {name.split("/")[1] for name in files if name.startswith(f"{VERSIONS}/")}
    if versions != {meta["version"]}:
        raise InvalidInputError(f"snapshot {archive} must hold exactly version {meta['version']!r}, has {versions}")
    staged.mkdir()
    written: set[str] = set()
    with _open_archive(archive) as (tar, _):
        try:
            for member in tar:
                _check_member(member, archive)  # the file may have changed since the first pass
                name = member.name
                if member.isdir() or name == SNAPSHOT_META:
                    continue
                if name not in files or name in written:
                    raise InvalidInputError(f"snapshot {archive} changed while it was restored; nothing was restored")
                if member.size != files[name]["size"]:
                    raise CorruptIndexError(
                        f"snapshot {archive}: {name} has {member.size} bytes, {SNAPSHOT_META} says "
                        f"{files[name]['size']}; nothing was restored"
                    )
                target = staged.joinpath(*name.split("/"))
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None
                digest = hashlib.sha256()
                with target.open("xb") as out:
                    while block := source.read(_BLOCK):
                        digest.update(block)
                        out.write(block)
                if digest.hexdigest() != files[name]["sha256"]:
                    raise CorruptIndexError(
                        f"snapshot {archive}: {name} has sha256 {digest.hexdigest()[:12]}…, {SNAPSHOT_META} "
                        f"says {files[name]['sha256'][:12]}… (tampered or damaged); nothing was restored"
                    )
                written.add(name)
        except (tarfile.TarError, EOFError, zlib.error) as e:
            raise InvalidInputError(
                f"snapshot {archive} is truncated or corrupt ({_why(e)}); nothing was restored"
            ) from None
    if written != set(files):
        raise InvalidInputError(f"snapshot {archive} changed while it was restored; nothing was restored")
    return meta


def _verify_staged(archive: Path, staged: Path, version: str, meta: dict[str, Any]) -> None:
    """The format's own checksums, each file against the manifest that lists it."""
    fail = f"snapshot {archive} does not verify: "
    version_dir = staged / VERSIONS / version
    try:
        manifest = Manifest.read(version_dir)
    except CorruptIndexError as e:
        raise CorruptIndexError(fail + e.message + "; nothing was restored") from None
    if manifest.legacy:
        raise CorruptIndexError(fail + "it holds a format-1 version")
    expected = {f"{VERSIONS}/{version}/{MANIFEST}"}
    if manifest.tombstones:
        expected.add(f"{VERSIONS}/{version}/{TOMBSTONES_FILE}")
        if file_sha256(version_dir / TOMBSTONES_FILE) != manifest.files.get(TOMBSTONES_FILE):
            raise CorruptIndexError(
                fail + f"{TOMBSTONES_FILE} differs from the manifest's sha256; nothing was restored"
            )
    for entry in manifest.segments:
        seg_dir = staged / SEGMENTS / str(entry["name"])
        expected |= {f"{SEGMENTS}/{entry['name']}/{f}" for f in (SEGMENT_MANIFEST, *SEGMENT_FILES)}
        if not (seg_dir / SEGMENT_MANIFEST).is_file():
            raise CorruptIndexError(fail + f"segment {entry['name']} is missing; nothing was restored")
        if file_sha256(seg_dir / SEGMENT_MANIFEST) != entry.get("sha256"):
            raise CorruptIndexError(
                fail + f"segment {entry['name']}: segment.json differs from the version's record; nothing was restored"
            )
        try:
            seg = SegmentManifest.read(seg_dir)
        except CorruptIndexError as e:
            raise CorruptIndexError(fail + e.message + "; nothing was restored") from None
        for name in SEGMENT_FILES:
            if not (seg_dir / name).is_file() or file_sha256(seg_dir / name) != seg.files.get(name):
                raise CorruptIndexError(
                    fail + f"segment {entry['name']}: {name} differs from its segment.json sha256 "
                    "(tampered or damaged); nothing was restored"
                )
    if expected != set(meta["files"]):
        extra = sorted(set(meta["files"]) - expected)[:3]
        raise CorruptIndexError(fail + f"it holds files its version does not list ({extra}); nothing was restored")
    os.symlink(f"{VERSIONS}/{version}", staged / CURRENT)


def _fsync_tree(directory: Path) -> None:
    for f in directory.rglob("*"):
        if f.is_file() and not f.is_symlink():
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
    for d in [directory, *(p for p in directory.rglob("*") if p.is_dir() and not p.is_symlink())]:
        fsync_dir(d)


def _publish_new(root: IndexRoot, staged: Path) -> None:
    _fsync_tree(staged)
    if root.path.exists():
        root.path.rmdir()  # empty (checked); a file appearing meanwhile makes this fail, nothing replaced
    os.rename(staged, root.path)
    fsync_dir(root.path.parent)


def _publish_into(root: IndexRoot, staged: Path, version: str, manifest: Manifest) -> str:
    """Publish the staged version as the next version of the existing index ``root`` (under its writer
    lock): its segments move into ``segments/`` (one already there under the same name must be the same
    segment), then :meth:`IndexRoot.publish` switches ``current``."""
    with root.lock():
        new_segments: list[Path] = []
        for entry in manifest.segments:
            src = staged / SEGMENTS / str(entry["name"])
            there = root.segments_dir / str(entry["name"])
            if there.exists():
                if not (there / SEGMENT_MANIFEST).is_file() or file_sha256(there / SEGMENT_MANIFEST) != entry["sha256"]:
                    raise InvalidInputError(
                        f"{root.path} already has a different segment named {entry['name']}; nothing was restored"
                    )
                continue
            new_segments.append(src)
        name = root.next_version()
        version_dir = staged / VERSIONS / version
        renamed = dataclasses.replace(manifest, version=name)
        renamed.write(version_dir)
        return root.publish(version_dir, new_segments)
