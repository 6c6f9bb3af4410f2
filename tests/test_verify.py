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
from semsearch.index import SearchIndex, verify


def _version(root: Path) -> Path:
    return root / "versions" / "v000001"


def _drop_file(d: Path) -> None:
    (d / "index.faiss").unlink()


def _manifest_count(d: Path) -> None:
    m = json.loads((d / "manifest.json").read_text())
    m["count"] += 1
    (d / "manifest.json").write_text(json.dumps(m))


def _manifest_garbage(d: Path) -> None:
    (d / "manifest.json").write_text("{ not json")


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


CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing file": (_drop_file, "index.faiss is missing"),
    "manifest count": (_manifest_count, "vectors.npy has shape (300, 384), manifest says (301, 384)"),
    "manifest not json": (_manifest_garbage, "manifest.json is not valid JSON"),
    "sqlite row deleted": (_sqlite_row_deleted, "SQLite holds 299 sentences, manifest says 300"),
    "sqlite text changed": (_sqlite_text_changed, "corpus checksum"),
    "vector flipped": (_vector_bytes_flipped, "vectors.npy: sha256"),
    "faiss garbage": (_faiss_garbage, "not a readable FAISS index"),
    "ids shifted": (_ids_shifted, "FAISS ids and SQLite ids differ"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_verify_catches(tmp_path, small_index, name):
    corrupt, expected = CORRUPTIONS[name]
    root = tmp_path / "idx"
    shutil.copytree(small_index, root, symlinks=True)
    assert verify(root) == []
    corrupt(_version(root))
    problems = verify(root)
    assert any(expected in p for p in problems), problems


def test_load_refuses_a_structurally_broken_version(tmp_path, small_index):
    root = tmp_path / "idx"
    shutil.copytree(small_index, root, symlinks=True)
    _manifest_count(_version(root))
    with pytest.raises(CorruptIndexError, match="failed verification"):
        SearchIndex.load(root)


def test_cli_verify_exit_codes(tmp_path, small_index):
    root = tmp_path / "idx"
    shutil.copytree(small_index, root, symlinks=True)
    cmd = [sys.executable, "-m", "indexer", "verify", "--index", str(root)]
    ok = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0 and "OK" in ok.stdout
    _sqlite_row_deleted(_version(root))
    bad = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 1
    assert "FAIL: SQLite holds 299 sentences, manifest says 300" in bad.stderr
