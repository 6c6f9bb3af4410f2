"""Snapshots (issue 23): an archive of the current version restores to an index that answers the same
searches and verifies; a hostile, tampered or truncated archive and an existing target are refused with
one clear error and nothing published. Synthetic rows, real files (fast tier)."""

from __future__ import annotations

import io
import json
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import META, synthetic_row

from semsearch.errors import CorruptIndexError, InvalidInputError
from semsearch.index import IndexRoot, restore_snapshot, write_snapshot
from semsearch.index.layout import IndexRoot as _Root
from semsearch.index.store import Record
from semsearch.index.writer import BaseVersion, IndexWriter
from semsearch.search import SearchIndex, search, verify


def _write(root: Path, op: str, rows: list[tuple[Record, np.ndarray]], keep: int | None = None) -> None:
    index_root = IndexRoot(root)
    with index_root.lock():
        base = BaseVersion.read(index_root)
        writer = IndexWriter(index_root, op, META, {"type": "flat", "params": {}}, base=base)
        writer.add_chunk([r for r, _ in rows], np.stack([v for _, v in rows]), [], len(rows), "keep-last")
        writer.commit({"kind": op})
    if keep is not None:
        index_root.prune(keep)


def _delete(root: Path, ids: list[str]) -> None:
    index_root = IndexRoot(root)
    with index_root.lock():
        base = BaseVersion.read(index_root)
        writer = IndexWriter(index_root, f"delete-{time.time_ns()}", META, {"type": "flat", "params": {}}, base=base)
        assert writer.delete(ids) == []
        writer.commit({"kind": "delete"})


@pytest.fixture
def index(tmp_path: Path) -> Path:
    """Two segments and tombstones: every kind of file a snapshot carries."""
    rng = np.random.default_rng(7)
    root = tmp_path / "idx"
    _write(root, "build", [synthetic_row(rng, f"r{i}") for i in range(40)])
    _write(root, f"add-{time.time_ns()}", [synthetic_row(rng, f"a{i}") for i in range(15)])
    _delete(root, ["r3", "a4"])
    return root


def _answers(root: Path) -> list[list[tuple[object, float]]]:
    rng = np.random.default_rng(1)
    queries = ["alpha beta", "gamma", "delta epsilon"]
    vectors = rng.standard_normal((3, META["dimension"])).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    idx = SearchIndex.load(root)
    try:
        return [
            [(h.id, round(h.score, 6)) for h in row]
            for mode in ("dense", "lexical", "hybrid")
            for row in search(idx, queries, vectors, 10, mode)
        ]
    finally:
        idx.close()


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_round_trip_answers_the_same_and_verifies(index: Path, tmp_path: Path, suffix: str) -> None:
    archive = tmp_path / f"snap{suffix}"
    info = write_snapshot(index, archive)
    assert info.version == "v000003" and info.count == 53 and info.segments == 2
    assert archive.is_file() and info.sha256
    assert not list(tmp_path.glob(".snap*"))  # no partial file left
    out = tmp_path / "restored"
    restored = restore_snapshot(archive, out, check=verify)
    assert restored.version == "v000003" and restored.count == 53
    assert verify(out) == []
    assert IndexRoot(out).current_version() == "v000003"
    assert _answers(out) == _answers(index)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".restore")]


def test_an_existing_index_is_never_overwritten_unless_asked(index: Path, tmp_path: Path) -> None:
    archive = tmp_path / "snap.tar"
    write_snapshot(index, archive)
    with pytest.raises(InvalidInputError, match=r"already holds an index .*--overwrite"):
        restore_snapshot(archive, index)
    assert IndexRoot(index).versions() == ["v000001", "v000002", "v000003"]
    not_index = tmp_path / "docs"
    not_index.mkdir()
    (not_index / "notes.txt").write_text("mine")
    with pytest.raises(InvalidInputError, match="not empty and is not a semsearch index"):
        restore_snapshot(archive, not_index, overwrite=True)
    assert [p.name for p in not_index.iterdir()] == ["notes.txt"]
    # with overwrite: published as the next version, current switches, the same answers
    before = _answers(index)
    _delete(index, ["r5"])
    restored = restore_snapshot(archive, index, overwrite=True, check=verify)
    assert restored.version == "v000005" and restored.source_version == "v000003"
    assert IndexRoot(index).current_version() == "v000005"
    assert verify(index) == []
    assert _answers(index) == before
    assert not (index / "staging").exists()


def test_a_snapshot_is_consistent_while_a_writer_publishes_and_prunes(index: Path, tmp_path: Path) -> None:
    """Files opened before archiving survive a prune that deletes the version being archived."""
    rng = np.random.default_rng(11)
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        n = 0
        while not stop.is_set():
            try:
                _write(index, f"add-{time.time_ns()}", [synthetic_row(rng, f"c{n}-{i}") for i in range(3)], keep=1)
            except BaseException as e:
                errors.append(e)
                return
            n += 1

    writer = threading.Thread(target=churn)
    writer.start()
    try:
        archives = []
        for i in range(4):
            archive = tmp_path / f"s{i}.tar"
            write_snapshot(index, archive)
            archives.append(archive)
    finally:
        stop.set()
        writer.join()
    assert not errors, errors
    for i, archive in enumerate(archives):
        out = tmp_path / f"r{i}"
        restore_snapshot(archive, out, check=verify)
        assert verify(out) == []


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, link: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info, None


META_MEMBER = _file("snapshot.json", b'{"format": "semsearch-snapshot", "format_version": 1, "version": "v000001"}')
SEG = "segments/s20260101000000-0123abcd"
HOSTILE = {
    "dotdot": ([META_MEMBER, _file("../evil.txt", b"x")], "holds '..'"),
    "dotdot-inside": ([META_MEMBER, _file(f"{SEG}/../../../evil", b"x")], "holds '..'"),
    "absolute": ([META_MEMBER, _file("/tmp/evil.txt", b"x")], "absolute path"),
    "symlink-out": ([META_MEMBER, _special(f"{SEG}/index.faiss", tarfile.SYMTYPE, "/etc/passwd")], "symbolic link"),
    "hardlink": ([META_MEMBER, _special(f"{SEG}/index.faiss", tarfile.LNKTYPE, "/etc/passwd")], "hard link"),
    "char-device": ([META_MEMBER, _special(f"{SEG}/ids.npy", tarfile.CHRTYPE)], "device"),
    "block-device": ([META_MEMBER, _special(f"{SEG}/ids.npy", tarfile.BLKTYPE)], "device"),
    "fifo": ([META_MEMBER, _special(f"{SEG}/ids.npy", tarfile.FIFOTYPE)], "device or FIFO"),
    "unexpected-name": ([META_MEMBER, _file("versions/v000001/run.sh", b"x")], "not a file a semsearch snapshot"),
    "no-meta-first": ([_file(f"{SEG}/ids.npy", b"x"), META_MEMBER], "does not start with snapshot.json"),
    "duplicate": ([META_MEMBER, _file(f"{SEG}/ids.npy", b"x"), _file(f"{SEG}/ids.npy", b"y")], "appears twice"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_members_are_refused_before_anything_is_written(tmp_path: Path, name: str) -> None:
    members, why = HOSTILE[name]
    archive = _tar(tmp_path / "hostile.tar", members)
    out = tmp_path / "out"
    with pytest.raises(InvalidInputError, match=why) as caught:
        restore_snapshot(archive, out)
    assert "nothing was restored" in caught.value.message or "not a semsearch snapshot" in caught.value.message
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostile.tar"]  # no staging left, nothing escaped
    assert not (tmp_path.parent / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()


def test_a_truncated_archive_is_refused(index: Path, tmp_path: Path) -> None:
    for suffix in (".tar", ".tar.gz"):
        archive = tmp_path / f"snap{suffix}"
        write_snapshot(index, archive)
        data = archive.read_bytes()
        with tarfile.open(archive) as tar:
            last = tar.getmembers()[-1]
        # a third of it; inside its last file; gzip: without its end-of-stream marker and CRC
        cuts = [len(data) // 3, *((last.offset_data + last.size // 2,) if suffix == ".tar" else (len(data) - 6,))]
        for cut in cuts:
            short = tmp_path / f"short{suffix}"
            short.write_bytes(data[:cut])
            with pytest.raises(InvalidInputError, match="truncated") as caught:
                restore_snapshot(short, tmp_path / "out")
            assert "\n" not in caught.value.message
            assert not (tmp_path / "out").exists()


def _rewrite(archive: Path, out: Path, change: dict[str, bytes]) -> Path:
    with tarfile.open(archive) as src, tarfile.open(out, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
            if member.name in change:
                data = change[member.name]
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    return out


def test_a_flipped_byte_in_a_segment_file_is_refused(index: Path, tmp_path: Path) -> None:
    archive = tmp_path / "snap.tar"
    write_snapshot(index, archive)
    with tarfile.open(archive) as tar:
        name = next(m.name for m in tar.getmembers() if m.name.endswith("vectors.npy"))
        data = bytearray(tar.extractfile(name).read())  # type: ignore[union-attr]
    data[-5] ^= 0x01
    flipped = _rewrite(archive, tmp_path / "flipped.tar", {name: bytes(data)})
    with pytest.raises(CorruptIndexError, match=r"vectors.npy has sha256 .*tampered"):
        restore_snapshot(flipped, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # a tamperer who also fixes snapshot.json is caught by segment.json's checksum of the file
    with tarfile.open(archive) as tar:
        meta = json.loads(tar.extractfile("snapshot.json").read())  # type: ignore[union-attr]
    import hashlib

    meta["files"][name]["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    both = _rewrite(
        archive, tmp_path / "both.tar", {name: bytes(data), "snapshot.json": json.dumps(meta).encode("utf-8")}
    )
    with pytest.raises(CorruptIndexError, match=r"vectors\.npy differs from its segment\.json sha256"):
        restore_snapshot(both, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_snapshot_refuses_bad_names_and_existing_files(index: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="must end in"):
        write_snapshot(index, tmp_path / "snap.zip")
    (tmp_path / "taken.tar").write_text("mine")
    with pytest.raises(InvalidInputError, match="already exists"):
        write_snapshot(index, tmp_path / "taken.tar")
    assert (tmp_path / "taken.tar").read_text() == "mine"
    with pytest.raises(InvalidInputError, match="no published index"):
        write_snapshot(tmp_path / "nothing", tmp_path / "n.tar")
    assert _Root(index).current_version() == "v000003"


def test_the_cli_snapshots_and_restores_with_one_error_line(index: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    from conftest import REPO

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "indexer", *args], cwd=REPO, capture_output=True, text=True)

    archive = tmp_path / "s.tar.gz"
    made = run("snapshot", "--index", str(index), "--output", str(archive))
    assert made.returncode == 0 and "snapshot of v000003: 53 sentences" in made.stdout, made.stderr
    out = tmp_path / "restored"
    done = run("restore", "--snapshot", str(archive), "--output", str(out))
    assert done.returncode == 0 and "verified" in done.stdout and verify(out) == []
    again = run("restore", "--snapshot", str(archive), "--output", str(out))
    errors = [line for line in again.stderr.splitlines() if line.startswith("error:")]
    assert again.returncode == 1 and len(errors) == 1 and "--overwrite" in errors[0]
    assert run("restore", "--snapshot", str(archive), "--output", str(out), "--overwrite").returncode == 0
    assert IndexRoot(out).current_version() == "v000004"
