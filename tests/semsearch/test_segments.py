"""Index format 2: segments + tombstones behave exactly like a fresh build of the live rows.

The property test drives the core writer with seeded synthetic rows (random texts over a small
vocabulary, random unit vectors) through random add / upsert / delete / merge / compact sequences,
and after every step compares the version with a fresh one-segment build of the same live rows:
same count and corpus checksum, the same dense (flat, exact) and lexical (BM25) results with
scores to 1e-6, tombstoned rows never returned, ``verify`` clean. BM25 is also checked against
SQLite FTS5's own ``bm25()`` on the fresh build. The rest uses the real model and CLI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import DIM, META, REPO, VOCAB, sample_rows, synthetic_row, write_jsonl

from indexer.pipeline import BuildOptions, run_build, run_compact, run_delete
from semsearch.errors import CorruptIndexError, InvalidInputError
from semsearch.index import maybe_merge
from semsearch.index.format import TOMBSTONES_FILE
from semsearch.index.layout import IndexRoot
from semsearch.index.lexical import query_terms
from semsearch.index.manifest import Manifest
from semsearch.index.store import Record
from semsearch.index.writer import BaseVersion, IndexWriter, MergePolicy
from semsearch.search.filters import compile_filter
from semsearch.search.modes import search
from semsearch.search.reader import SearchIndex, SegmentPool, verify

FORMAT1 = REPO / "tests" / "fixtures" / "format1_index"


def _write(root: Path, op: str, rows: list[tuple[Record, np.ndarray]], *, segment_rows: int = 10**6) -> None:
    index_root = IndexRoot(root)
    with index_root.lock():
        base = BaseVersion.read(index_root)
        writer = IndexWriter(index_root, op, META, {"type": "flat", "params": {}}, base=base, segment_rows=segment_rows)
        for start in range(0, len(rows), 7):  # several chunks per operation
            part = rows[start : start + 7]
            writer.add_chunk([r for r, _ in part], np.stack([v for _, v in part]), [], len(part), "keep-last")
        writer.commit({"kind": op})


def _delete(root: Path, ids: list[str]) -> None:
    index_root = IndexRoot(root)
    with index_root.lock():
        base = BaseVersion.read(index_root)
        assert base is not None
        writer = IndexWriter(index_root, f"delete-{time.time_ns()}", META, {"type": "flat", "params": {}}, base=base)
        assert writer.delete(ids) == []
        writer.commit({"kind": "delete"})


def _fresh(tmp: Path, live: dict[str, tuple[Record, np.ndarray]], order: list[str]) -> Path:
    root = tmp / f"fresh-{time.time_ns()}"
    _write(root, "build", [live[i] for i in order])
    return root


def _results(idx: SearchIndex, queries: list[str], qv: np.ndarray, mode: str, spec=None) -> list[list[tuple]]:
    return [[(h.id, h.score) for h in row] for row in search(idx, queries, qv, 10, mode, spec)]


def _assert_same(a: list[list[tuple]], b: list[list[tuple]]) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        assert [i for i, _ in ra] == [i for i, _ in rb]
        np.testing.assert_allclose([s for _, s in ra], [s for _, s in rb], rtol=0, atol=1e-6)


def _fts5_bm25(root: Path, text: str) -> dict[str, float]:
    """SQLite's own ``-bm25()`` on a one-segment index: the reference for collection statistics."""
    (seg,) = (root / "segments").iterdir()
    conn = sqlite3.connect(seg / "docs.sqlite")
    match = " OR ".join(f'"{t}"' for t in query_terms(text))
    rows = conn.execute(
        "SELECT d.ext_id, -bm25(docs_fts) FROM docs_fts JOIN docs AS d ON d.iid = docs_fts.rowid "
        "WHERE docs_fts MATCH ?",
        (match,),
    ).fetchall()
    conn.close()
    return dict(rows)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_add_delete_upsert_equals_a_fresh_build(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    root = tmp_path / "seg"
    live: dict[str, tuple[Record, np.ndarray]] = {}
    next_id = 0

    def new_rows(n: int) -> list[tuple[Record, np.ndarray]]:
        nonlocal next_id
        out = []
        for _ in range(n):
            out.append(synthetic_row(rng, f"d{next_id}"))
            next_id += 1
        return out

    first = new_rows(40)
    _write(root, "build", first, segment_rows=15)  # a build that writes three segments
    live.update({r.ext_id: (r, v) for r, v in first})  # type: ignore[misc]
    queries = [" ".join(rng.choice(VOCAB, size=2)) for _ in range(8)]
    qv = rng.standard_normal((8, DIM)).astype(np.float32)
    qv /= np.linalg.norm(qv, axis=1, keepdims=True)
    for step in range(10):
        op = rng.choice(["add", "upsert", "delete", "delete", "merge", "compact"], p=[0.3, 0.2, 0.15, 0.15, 0.1, 0.1])
        if op == "add":
            rows = new_rows(int(rng.integers(1, 12)))
            _write(root, f"add-{step}", rows)
        elif op == "upsert":
            ids = rng.choice(sorted(live), size=min(len(live), int(rng.integers(1, 6))), replace=False)
            rows = [synthetic_row(rng, str(i)) for i in ids] + new_rows(2)
            _write(root, f"add-{step}", rows)
        elif op == "delete":
            ids = [
                str(i)
                for i in rng.choice(sorted(live), size=min(len(live) - 5, int(rng.integers(1, 6))), replace=False)
            ]
            _delete(root, ids)
            rows = []
            for i in ids:
                del live[i]
        elif op == "merge":
            maybe_merge(IndexRoot(root), MergePolicy(merge_factor=2, max_deleted=0.1))
            rows = []
        else:
            run_compact(root)
            rows = []
        live.update({r.ext_id: (r, v) for r, v in rows})  # type: ignore[misc]

        assert verify(root) == [], (step, op)
        idx = SearchIndex.load(root)
        try:
            order = [str(d.id) for d in idx.iter_docs()]  # the fresh build keeps this order: same tie-breaks
            assert sorted(order) == sorted(live)
            assert all(d.text == live[str(d.id)][0].text for d in idx.iter_docs())
            fresh_root = _fresh(tmp_path, live, order)
            fresh = SearchIndex.load(fresh_root)
            try:
                m, f = idx.manifest, fresh.manifest
                assert (m.count, m.corpus_checksum) == (f.count, f.corpus_checksum)
                for mode in ("dense", "lexical", "hybrid"):
                    _assert_same(_results(idx, queries, qv, mode), _results(fresh, queries, qv, mode))
                _assert_same(
                    _results(idx, queries, qv, "dense", {"g": 1}), _results(fresh, queries, qv, "dense", {"g": 1})
                )
                lex = _results(idx, queries, None, "lexical", {"g": {"in": [0, 2]}})
                _assert_same(lex, _results(fresh, queries, None, "lexical", {"g": {"in": [0, 2]}}))
                for text, row in zip(queries, _results(idx, queries, qv, "lexical"), strict=True):
                    ref = _fts5_bm25(fresh_root, text)
                    assert all(abs(ref[i] - s) < 1e-6 for i, s in row), (text, row, ref)
                returned = {i for rows_ in _results(idx, queries, qv, "hybrid") for i, _ in rows_}
                assert returned <= set(live)  # tombstoned rows never come back
            finally:
                fresh.close()
        finally:
            idx.close()
        shutil.rmtree(fresh_root)


def test_tombstones_never_returned_even_when_k_exceeds_live_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    root = tmp_path / "idx"
    rows = [synthetic_row(rng, f"d{i}") for i in range(30)]
    _write(root, "build", rows)
    _delete(root, [f"d{i}" for i in range(0, 30, 2)])
    idx = SearchIndex.load(root)
    try:
        q = np.stack([v for _, v in rows[:4]])  # the deleted d0, d2 are exact matches of queries 0 and 2
        for hits in idx.search(q, 100):
            assert len(hits) == 15 and all(int(h.id[1:]) % 2 == 1 for h in hits)
        assert idx.iids_for_ext_ids(["d0", "d1"]).keys() == {"d1"}
        assert len(idx.matching_iids(compile_filter({"g": {"in": [0, 1, 2]}}))) == 15
        assert idx.manifest.tombstones == 15 and idx.count == 15
    finally:
        idx.close()


def test_merge_policy_merges_a_full_tier_and_rewrites_heavily_deleted_segments() -> None:
    policy = MergePolicy(merge_factor=3, max_deleted=0.2)
    assert policy.plan([("a", 500, 0), ("b", 20, 0), ("c", 30, 0)]) == []
    assert policy.plan([("a", 500, 0), ("b", 20, 0), ("c", 30, 0), ("d", 40, 0)]) == ["b", "c", "d"]
    assert policy.plan([("a", 500, 150), ("b", 20, 0)]) == ["a"]
    assert policy.plan([("a", 500, 0), ("b", 20, 5)]) == ["b"]


def _assert_finds_itself(root: Path, encoder, row: dict) -> None:
    """The current version's top hit for a row's own text is that row, at cosine 1."""
    idx = SearchIndex.load(root)
    try:
        hit = idx.search(encoder.encode([row["text"]]), 1)[0][0]
        assert hit.id == row["id"] and hit.score == pytest.approx(1.0, abs=1e-4)
    finally:
        idx.close()


def test_merges_never_make_a_segment_above_the_cap() -> None:
    """One segment is one ANN graph, whose recall falls with its size: merges stop at max_segment_rows."""
    policy = MergePolicy(merge_factor=3, max_deleted=0.2, max_segment_rows=100)
    # a full tier: its smallest members merge while they fit (40 + 45 = 85; 85 + 48 > 100)
    assert policy.plan([("a", 48, 0), ("b", 40, 0), ("c", 45, 0)]) == ["b", "c"]
    # segments of half the cap or more take part in tier merges no more
    assert policy.plan([("a", 50, 0), ("b", 60, 0), ("c", 70, 0), ("d", 5, 0)]) == []
    # heavily deleted segments are rewritten together while they fit, a lone one always
    assert policy.plan([("a", 300, 100), ("b", 90, 30)]) == ["a"]
    assert policy.plan([("a", 60, 20), ("b", 60, 20)]) == ["a", "b"]
    # compact: consecutive segments packed up to the cap; a lone segment without tombstones is left
    assert policy.pack([("a", 60, 0), ("b", 30, 0), ("c", 70, 0), ("d", 120, 0), ("e", 10, 5)]) == [["a", "b"], ["e"]]
    assert policy.pack([("a", 60, 0), ("b", 30, 0), ("c", 70, 1), ("d", 20, 0)]) == [["a", "b"], ["c", "d"]]
    assert MergePolicy().max_segment_rows == 2_000_000


def test_compact_packs_segments_up_to_the_cap(tmp_path: Path, encoder) -> None:
    root = tmp_path / "idx"
    rows = sample_rows(500)
    data = [write_jsonl(tmp_path / "a.jsonl", rows)]
    opts = BuildOptions(inputs=data, output=root, chunk_size=50, segment_rows=100, progress=False)
    run_build(opts)
    run_delete(root, [r["id"] for r in rows[:30]], merge=False)
    res = run_compact(root, max_segment_rows=220)
    assert res.count == 470 and res.tombstones == 0
    sizes = [e["count"] for e in Manifest.read(root / "current").segments]
    assert sum(sizes) == 470 and max(sizes) <= 220 and len(sizes) == 3, sizes
    assert verify(root) == []
    again = run_compact(root, max_segment_rows=220)  # already packed: nothing to do
    assert again.version == res.version
    _assert_finds_itself(root, encoder, rows[400])
    with pytest.raises(InvalidInputError, match="max_segment_rows"):
        run_compact(root, max_segment_rows=0)


def test_add_and_delete_apply_the_merge_policy(tmp_path: Path, encoder) -> None:
    root = tmp_path / "idx"
    rows = sample_rows(60)
    run_build(BuildOptions(inputs=[write_jsonl(tmp_path / "a.jsonl", rows[:40])], output=root, progress=False))
    for n in range(8):  # eight one-row segments fill the lowest tier: the eighth add merges it
        part = write_jsonl(tmp_path / f"p{n}.jsonl", rows[40 + n : 41 + n])
        res = run_build(BuildOptions(inputs=[part], output=root, progress=False), incremental=True)
    assert res.merged and res.segments == 2
    res = run_delete(root, [r["id"] for r in rows[:10]])  # 25% of the big segment: rewritten
    assert res.merged and res.tombstones == 0 and res.count == 38
    res = run_delete(root, [rows[20]["id"]], merge=False)
    assert not res.merged and res.tombstones == 1
    assert verify(root) == []
    _assert_finds_itself(root, encoder, rows[45])


def test_reload_reuses_loaded_segments(tmp_path: Path, small_index: Path) -> None:
    root = tmp_path / "idx"
    shutil.copytree(small_index, root, symlinks=True)
    pool = SegmentPool()
    old = SearchIndex.load(root, pool=pool)
    new_rows = write_jsonl(tmp_path / "n.jsonl", [{"id": "x1", "text": "a brand new sentence about ferries"}])
    run_build(BuildOptions(inputs=[new_rows], output=root, progress=False), incremental=True)
    new = SearchIndex.load(root, pool=pool)
    try:
        assert new.segments[0] is old.segments[0]  # the same loaded object: not read again
        assert len(new.segments) == 2 and len(pool.loaded()) == 2
        old.close()  # the retired version goes; its segment stays open for the new one
        assert len(pool.loaded()) == 2
        assert new.docs_for([0])[0].text == sample_rows(1)[0]["text"]
    finally:
        new.close()
    assert pool.loaded() == []


def test_segments_are_shared_between_versions_never_copied(tmp_path: Path, small_index: Path) -> None:
    root = tmp_path / "idx"
    shutil.copytree(small_index, root, symlinks=True)
    before = {p.name for p in (root / "segments").iterdir()}
    run_delete(root, [sample_rows(1)[0]["id"]], merge=False)
    assert {p.name for p in (root / "segments").iterdir()} == before  # delete wrote no segment
    v2 = root / "versions" / "v000002"
    assert sorted(p.name for p in v2.iterdir()) == ["manifest.json", TOMBSTONES_FILE]
    assert Manifest.read(v2).segments == Manifest.read(root / "versions" / "v000001").segments
    # pruning keeps what the remaining versions reference, and removes what none does
    run_compact(root, keep=1)
    assert IndexRoot(root).versions() == ["v000003"]
    assert {p.name for p in (root / "segments").iterdir()} == {
        s["name"] for s in Manifest.read(root / "current").segments
    }


def _tombstoned_copy(tmp_path: Path, small_index: Path) -> Path:
    root = tmp_path / "idx"
    shutil.copytree(small_index, root, symlinks=True)
    run_delete(root, [r["id"] for r in sample_rows(3)], merge=False)
    return root


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda p: p.unlink(), "tombstones.npy is missing"),
        (lambda p: np.save(p, np.array([2, 1, 0], dtype=np.int64)), "not sorted and unique"),
        (lambda p: np.save(p, np.array([0, 1, 99999], dtype=np.int64)), "tombstones name ids in no segment"),
        (lambda p: np.save(p, np.array([0, 1, 3], dtype=np.int64)), "tombstones.npy: sha256"),
        (lambda p: p.write_bytes(b"garbage"), "not a readable array"),
    ],
)
def test_verify_catches_a_bad_tombstone_file(tmp_path: Path, small_index: Path, corrupt, message: str) -> None:
    root = _tombstoned_copy(tmp_path, small_index)
    assert verify(root) == []
    corrupt(root / "versions" / "v000002" / TOMBSTONES_FILE)
    problems = verify(root)
    assert any(message in p for p in problems), problems


def test_format1_index_loads_and_is_upgraded_by_its_first_write(tmp_path: Path, encoder) -> None:
    root = tmp_path / "v1"
    shutil.copytree(FORMAT1, root, symlinks=True)
    assert Manifest.read(root / "current").format_version == 1
    assert verify(root) == []
    rows = sample_rows(40)
    idx = SearchIndex.load(root)
    try:
        hit = idx.search(encoder.encode([rows[7]["text"]]), 1)[0][0]
        assert hit.id == rows[7]["id"] and hit.score == pytest.approx(1.0, abs=1e-4)
        assert [h.id for h in search(idx, [rows[7]["text"]], None, 1, "lexical")[0]] == [rows[7]["id"]]
    finally:
        idx.close()
    res = run_delete(root, [rows[0]["id"]], merge=False)  # upgrade (v2, hard links) + delete (v3)
    assert res.version == "v000003" and res.count == 39
    up = Manifest.read(root / "versions" / "v000002")
    assert up.format_version == 2 and up.build["kind"] == "upgrade" and up.count == 40
    seg = root / "segments" / up.segments[0]["name"]
    assert os.path.samefile(seg / "vectors.npy", root / "versions" / "v000001" / "vectors.npy")  # no copy
    assert verify(root) == [] and verify(root / "versions" / "v000001") == []
    out = subprocess.run(
        [sys.executable, "-m", "indexer", "upgrade", "--index", str(root)], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0 and "v000003: 39 sentences" in out.stdout  # already format 2: nothing to do


def _start_compaction(root: Path) -> subprocess.Popen:
    """``indexer compact`` on ``root``; a killed run's leftover staging is marked stale first (the new run
    discards it and makes its own, which :func:`_wait_for_staging` waits for)."""
    for old in (root / "staging").glob("*"):
        (old / ".stale").touch()
    cmd = [sys.executable, "-m", "indexer", "compact", "--index", str(root)]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_for_staging(proc: subprocess.Popen, root: Path) -> None:
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if any(not (d / ".stale").exists() for d in (root / "staging").glob("*")):
            return
        time.sleep(0.002)


def _staging_to_exit_s(root: Path) -> float:
    proc = _start_compaction(root)
    _wait_for_staging(proc, root)
    started = time.monotonic()
    assert proc.wait(timeout=300) == 0
    return time.monotonic() - started


def test_killed_compaction_leaves_current_usable(tmp_path: Path, encoder) -> None:
    """kill -9 at random points of `indexer compact`: current always verifies and serves; a rerun completes."""
    root = tmp_path / "idx"
    rows = sample_rows(1500)
    run_build(
        BuildOptions(inputs=[write_jsonl(tmp_path / "a.jsonl", rows)], output=root, segment_rows=300, progress=False)
    )
    run_delete(root, [r["id"] for r in rows[:50]], merge=False)
    query = encoder.encode([rows[700]["text"]])
    # how long a compaction runs once its staging exists (a copy: the real one must stay uncompacted),
    # so the kills land inside it on a machine of any speed
    probe = tmp_path / "probe"
    shutil.copytree(root, probe, symlinks=True)
    window = _staging_to_exit_s(probe)
    rng = np.random.default_rng(5)
    kills = 0
    for trial in range(3):
        proc = _start_compaction(root)
        _wait_for_staging(proc, root)
        time.sleep(float(rng.uniform(0.05, 0.8)) * window)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        kills += proc.wait() == -signal.SIGKILL
        assert verify(root) == [], trial
        idx = SearchIndex.load(root)
        try:
            assert idx.count == 1450 and idx.search(query, 1)[0][0].id == rows[700]["id"]
        finally:
            idx.close()
        if Manifest.read(root / "current").build.get("kind") == "compact":
            break  # this trial finished before the kill landed
    assert kills >= 1, f"no kill landed inside a {window:.2f} s compaction"
    res = run_compact(root)
    assert res.count == 1450 and res.segments == 1 and res.tombstones == 0
    assert verify(root) == []
    assert not (root / "staging").exists()
    leftovers = {p.name for p in (root / "segments").iterdir()}
    referenced = IndexRoot(root).referenced_segments()
    assert leftovers == referenced  # a killed merge's segments were collected


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_full_disk_gives_one_error_line_and_cleans_staging(tmp_path: Path, small_index: Path) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        root = mount / "idx"
        shutil.copytree(small_index, root, symlinks=True)
        before = json.loads((root / "current" / "manifest.json").read_text())
        corpus = write_jsonl(tmp_path / "big.jsonl", sample_rows(3000))
        out = subprocess.run(
            [sys.executable, "-m", "indexer", "add", "--input", str(corpus), "--index", str(root), "--no-progress"],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 1, out.stderr
        errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "disk holding" in errors[0] and "is full" in errors[0], out.stderr
        assert "Traceback" not in out.stderr
        assert not (root / "staging").exists()
        assert json.loads((root / "current" / "manifest.json").read_text()) == before
        assert verify(root) == []
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_info_json_lists_segments_and_tombstones(tmp_path: Path, small_index: Path) -> None:
    root = _tombstoned_copy(tmp_path, small_index)
    out = subprocess.run(
        [sys.executable, "-m", "indexer", "info", "--index", str(root), "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    info = json.loads(out.stdout)
    assert (info["segments"], info["tombstones"], info["count"], info["format_version"]) == (1, 3, 297, 2)
    assert info["segment_list"][0]["count"] == 300


def test_load_refuses_a_version_whose_segment_changed(tmp_path: Path, small_index: Path) -> None:
    root = tmp_path / "idx"
    shutil.copytree(small_index, root, symlinks=True)
    (seg,) = (root / "segments").iterdir()
    meta = json.loads((seg / "segment.json").read_text())
    meta["count"] = 299
    (seg / "segment.json").write_text(json.dumps(meta))
    with pytest.raises(CorruptIndexError, match="differs from the one the version manifest lists"):
        SearchIndex.load(root)
