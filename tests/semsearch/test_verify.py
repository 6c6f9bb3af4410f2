"""``verify`` catches each corruption it claims to, with a precise message; the CLI exits 1 on it."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from semsearch.errors import CorruptIndexError
from semsearch.search.reader import SearchIndex, verify


def _version(root: Path) -> Path:
    return root / "versions" / "v000001"


def _segment(root: Path) -> Path:
    (seg,) = (root / "segments").iterdir()
    return seg


def _drop_file(d: Path) -> None:
    (d / "index.faiss").unlink()


def _edit_json(path: Path, **changes: object) -> None:
    m = json.loads(path.read_text())
    m.update(changes)
    path.write_text(json.dumps(m))


def _manifest_count(d: Path) -> None:
    _edit_json(d / "manifest.json", count=301)


def _manifest_model(d: Path) -> None:
    _edit_json(d / "manifest.json", model="some/other-model")


def _manifest_garbage(d: Path) -> None:
    (d / "manifest.json").write_text("{ not json")


def _segment_count(d: Path) -> None:
    _edit_json(d / "segment.json", count=301)


def _segment_missing(d: Path) -> None:
    shutil.rmtree(d)


def _sqlite_row_deleted(d: Path) -> None:
    conn = sqlite3.connect(d / "docs.sqlite")
    conn.execute("DELETE FROM docs WHERE iid = 5")
    conn.commit()
    conn.close()


def _sqlite_text_changed(d: Path) -> None:
    conn = sqlite3.connect(d / "docs.sqlite")
    conn.execute("UPDATE docs SET text = 'tampered' WHERE iid = 3")
    conn.commit()
    conn.close()


def _vector_bytes_flipped(d: Path) -> None:
    v = np.load(d / "vectors.npy")
    v[0] = -v[0]
    np.save(d / "vectors.npy", v)


def _faiss_garbage(d: Path) -> None:
    (d / "index.faiss").write_bytes(b"\x00garbage" * 100)


def _ids_shifted(d: Path) -> None:
    ids = np.load(d / "ids.npy")
    np.save(d / "ids.npy", ids + 1000)


# (corruption, where it is applied: the version directory or the segment, what verify must say)
CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "manifest count": (_manifest_count, "version", "its checksum does not match its fields"),
    "manifest model edited": (_manifest_model, "version", "its checksum does not match its fields"),
    "manifest not json": (_manifest_garbage, "version", "manifest.json is not valid JSON"),
    "segment manifest edited": (_segment_count, "segment", "segment.json differs from the version's record"),
    "segment missing": (_segment_missing, "segment", "is missing"),
    "missing file": (_drop_file, "segment", "index.faiss is missing"),
    "sqlite row deleted": (_sqlite_row_deleted, "segment", "SQLite holds 299 sentences, manifest says 300"),
    "sqlite text changed": (_sqlite_text_changed, "segment", "corpus checksum"),
    "vector flipped": (_vector_bytes_flipped, "segment", "vectors.npy: sha256"),
    "faiss garbage": (_faiss_garbage, "segment", "not a readable FAISS index"),
    "ids shifted": (_ids_shifted, "segment", "ids.npy spans 1000..1299, manifest says 0..299"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_verify_catches(tmp_path, small_index, name):
    corrupt, where, expected = CORRUPTIONS[name]
    root = tmp_path / "idx"
    shutil.copytree(small_index, root, symlinks=True)
    assert verify(root) == []
    corrupt(_version(root) if where == "version" else _segment(root))
    problems = verify(root)
    assert any(expected in p for p in problems), problems


def test_load_refuses_a_structurally_broken_version(tmp_path, small_index):
    root = tmp_path / "idx"
    shutil.copytree(small_index, root, symlinks=True)
    (_segment(root) / "ids.npy").unlink()
    with pytest.raises(CorruptIndexError, match=r"failed verification: ids\.npy is missing"):
        SearchIndex.load(root)
    _manifest_model(_version(root))
    with pytest.raises(CorruptIndexError, match="checksum does not match"):
        SearchIndex.load(root)


def test_cli_verify_exit_codes(tmp_path, small_index):
    root = tmp_path / "idx"
    shutil.copytree(small_index, root, symlinks=True)
    cmd = [sys.executable, "-m", "indexer", "verify", "--index", str(root)]
    ok = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0 and "OK" in ok.stdout
    _sqlite_row_deleted(_segment(root))
    bad = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 1
    assert "SQLite holds 299 sentences, manifest says 300" in bad.stderr
    assert all(line.startswith("FAIL: segment ") for line in bad.stderr.splitlines())
