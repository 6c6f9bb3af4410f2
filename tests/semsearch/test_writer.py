"""The writer's collaborators: each row's vector is written once into its shard's open segment file,
and ``--resume``, in-operation upserts and a chunk that fails to commit keep rows and vectors aligned."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import META, synthetic_row

from semsearch.errors import DuplicateIdError
from semsearch.index import IndexRoot, IndexWriter, SegmentEntry
from semsearch.index.store import Record
from semsearch.search.reader import SearchIndex, verify


def _rows(n: int, seed: int = 0, prefix: str = "r") -> list[tuple[Record, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [synthetic_row(rng, f"{prefix}{i}") for i in range(n)]


def _add(writer: IndexWriter, rows: list[tuple[Record, np.ndarray]], on_duplicate: str = "keep-last") -> None:
    writer.add_chunk([r for r, _ in rows], np.stack([v for _, v in rows]), [], len(rows), on_duplicate)  # type: ignore[arg-type]


def _stored(root: Path) -> dict[str, np.ndarray]:
    idx = SearchIndex.load(root)
    try:
        iids, vecs = idx.live_vectors()
        docs = idx.docs_for(iids.tolist())
        return {str(docs[int(i)].id): v for i, v in zip(iids, vecs, strict=True)}
    finally:
        idx.close()


@pytest.mark.parametrize("shards", [None, 3])
def test_upserts_inside_one_operation_keep_the_later_vector(tmp_path: Path, shards: int | None) -> None:
    root = IndexRoot(tmp_path / "idx")
    rows = _rows(40)
    again = _rows(10, seed=1)  # the same ids r0..r9, new texts and vectors
    again = [(Record(text=r.text, ext_id=f"r{i}", metadata=r.metadata), v) for i, (r, v) in enumerate(again)]
    with root.lock():
        writer = IndexWriter(root, "build", META, {"type": "flat", "params": {}}, shards=shards)
        _add(writer, rows[:25])
        _add(writer, again + rows[25:])
        writer.commit({"kind": "build"})
    assert verify(root.path) == []
    stored = _stored(root.path)
    expected = {str(r.ext_id): v for r, v in rows[10:]} | {str(r.ext_id): v for r, v in again}
    assert stored.keys() == expected.keys()
    for key, vec in expected.items():
        np.testing.assert_array_equal(stored[key], vec)
    assert not (root.path / "staging").exists()


def test_resume_after_a_crash_keeps_committed_chunks(tmp_path: Path) -> None:
    root = IndexRoot(tmp_path / "idx")
    rows = _rows(30)
    with root.lock():
        writer = IndexWriter(root, "build-x", META, {"type": "flat", "params": {}}, segment_rows=12)
        _add(writer, rows[:10])
        _add(writer, rows[10:20])  # seals a segment of 20 rows (>= 12)
        _add(writer, rows[20:25])
        writer.close()  # "killed": nothing published
        open_file = writer.dir / "open" / "0.npy"
        with open_file.open("ab") as fh:  # a chunk whose transaction never committed
            fh.write(np.ones((3, 16), np.float32).tobytes())
        resumed = IndexWriter(root, "build-x", META, {"type": "flat", "params": {}}, segment_rows=12, resume=True)
        assert resumed.consumed == 25
        _add(resumed, rows[25:])
        manifest = resumed.commit({"kind": "build"})
    assert manifest.count == 30 and len(manifest.segments) == 2
    assert [SegmentEntry.of(e).count for e in manifest.segments] == [20, 10]
    assert verify(root.path) == []
    stored = _stored(root.path)
    for r, v in rows:
        np.testing.assert_array_equal(stored[str(r.ext_id)], v)


def test_a_chunk_that_fails_leaves_no_vector_behind(tmp_path: Path) -> None:
    """The service's writer lives on after a refused chunk: the next chunk's vectors stay aligned."""
    root = IndexRoot(tmp_path / "idx")
    rows = _rows(12)
    with root.lock():
        writer = IndexWriter(root, "build", META, {"type": "flat", "params": {}})
        _add(writer, rows[:6], "error")
        with pytest.raises(DuplicateIdError):
            _add(writer, [rows[6], rows[0]], "error")  # r0 again: refused, the whole chunk rolls back
        _add(writer, rows[6:], "error")
        writer.commit({"kind": "build"})
    assert verify(root.path) == []
    stored = _stored(root.path)
    assert len(stored) == 12
    for r, v in rows:
        np.testing.assert_array_equal(stored[str(r.ext_id)], v)
