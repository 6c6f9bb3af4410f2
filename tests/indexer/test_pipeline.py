"""The batch indexer end to end: real model, real FAISS, real SQLite, real files."""

from __future__ import annotations

import gzip
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
from conftest import REPO, sample_rows, write_jsonl

from indexer.pipeline import BuildOptions, run_build, run_delete
from semsearch.errors import DuplicateIdError, InvalidInputError, TooManyRejectsError
from semsearch.index.layout import IndexRoot
from semsearch.models.encoder import Encoder
from semsearch.search.reader import SearchIndex, verify


def _build(inputs, out, **kw):
    return run_build(BuildOptions(inputs=list(inputs), output=out, progress=False, **kw))


def _search(root: Path, encoder: Encoder, query: str, k: int = 5):
    idx = SearchIndex.load(root)
    try:
        return idx.search(encoder.encode([query]), k)[0]
    finally:
        idx.close()


def test_build_publishes_a_verified_self_describing_version(small_index, encoder):
    root = IndexRoot(small_index)
    assert root.current_version() == "v000001"
    assert verify(small_index) == []
    idx = SearchIndex.load(small_index)
    m = idx.manifest
    assert (m.count, m.dimension, m.pooling, m.index_type, m.metric, m.normalized) == (
        300,
        384,
        "mean",
        "flat",
        "inner_product",
        True,
    )
    assert m.model == "sentence-transformers/all-MiniLM-L6-v2" and len(m.model_fingerprint) == 16
    assert m.format_version == 2 and m.files == {} and m.tombstones == 0 and len(m.segments) == 1
    assert set(idx.segments[0].meta.files) == {"index.faiss", "vectors.npy", "ids.npy", "docs.sqlite"}
    assert {"torch", "faiss-cpu", "sentence-transformers"} <= set(m.libraries)
    hits = idx.search(encoder.encode([sample_rows(300)[17]["text"]]), 3)[0]
    assert hits[0].id == sample_rows(300)[17]["id"] and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert hits[0].metadata.keys() == {"lemma", "pos", "lexname"}
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_user_ids_keep_their_type_and_survive_add_and_delete(tmp_path, encoder):
    rows = [
        {"id": 10, "text": "a dog barks at the mailman"},
        {"id": "cat-1", "text": "a cat sleeps on the sofa"},
        {"id": 99, "text": "the stock market crashed today"},
    ]
    root = tmp_path / "idx"
    _build([write_jsonl(tmp_path / "a.jsonl", rows)], root)
    first = SearchIndex.load(root)
    iids_before = {d.id: d.iid for d in first.iter_docs()}
    hit = _search(root, encoder, "puppy barking")[0]
    assert hit.id == 10 and isinstance(hit.id, int)
    assert _search(root, encoder, "kitten napping")[0].id == "cat-1"

    # add: one new row, one upsert of an existing id
    extra = [
        {"id": "new", "text": "an airplane takes off from the runway"},
        {"id": 99, "text": "the bond market rallied strongly"},
    ]
    res = run_build(
        BuildOptions(
            inputs=[write_jsonl(tmp_path / "b.jsonl", extra)],
            output=root,
            progress=False,
            on_duplicate="keep-last",
            merge=False,  # the merge policy is tested on its own (tests/semsearch/test_segments.py)
        ),
        incremental=True,
    )
    assert res.version == "v000002" and res.count == 4
    idx = SearchIndex.load(root)
    docs = {d.id: d for d in idx.iter_docs()}
    assert docs[99].text == "the bond market rallied strongly"
    assert docs[10].iid == iids_before[10] and docs["cat-1"].iid == iids_before["cat-1"]  # untouched rows keep ids
    assert _search(root, encoder, "jet departing")[0].id == "new"
    assert verify(root) == []

    res = run_delete(root, ["10", "cat-1"], merge=False)
    assert res.count == 2 and res.deleted == 2
    assert {h.id for h in _search(root, encoder, "dog", k=10)} == {"new", 99}
    assert verify(root) == []
    with pytest.raises(InvalidInputError, match="not in the index: 'nope'"):
        run_delete(root, ["nope"])
    assert IndexRoot(root).current_version() == "v000003"
    first.close()


def test_each_input_format_round_trips(tmp_path):
    rows = sample_rows(6)
    files = []
    txt = tmp_path / "a.txt"
    txt.write_text("\n".join(r["text"] for r in rows[:2]) + "\n", encoding="utf-8")
    files.append(txt)
    files.append(write_jsonl(tmp_path / "b.jsonl", rows[2:3]))
    csv_path = tmp_path / "c.csv"
    csv_path.write_text("id,text,pos\n" + f'{rows[3]["id"]},"{rows[3]["text"]}",{rows[3]["pos"]}\n', encoding="utf-8")
    files.append(csv_path)
    tsv_gz = tmp_path / "d.tsv.gz"
    with gzip.open(tsv_gz, "wt", encoding="utf-8") as fh:
        fh.write("id\ttext\n" + "".join(f"{r['id']}\t{r['text']}\n" for r in rows[4:6]))
    files.append(tsv_gz)
    root = tmp_path / "idx"
    res = _build(files, root)
    assert res.count == 6 and res.rejects == 0
    idx = SearchIndex.load(root)
    stored = {str(d.id): (d.text, d.metadata) for d in idx.iter_docs()}
    assert stored[rows[3]["id"]] == (rows[3]["text"], {"pos": rows[3]["pos"]})
    assert stored[rows[5]["id"]][0] == rows[5]["text"]
    assert sorted(t for t, _ in stored.values()) == sorted(r["text"] for r in rows)


def test_rejects_under_threshold_are_reported(tmp_path):
    good = sample_rows(120)
    path = tmp_path / "c.jsonl"
    path.write_text(
        "".join(json.dumps(r) + "\n" for r in good[:60])
        + "{broken\n"
        + "".join(json.dumps(r) + "\n" for r in good[60:]),
        encoding="utf-8",
    )
    res = _build([path], tmp_path / "idx")
    assert (res.count, res.rejects) == (120, 1)
    lines = [json.loads(x) for x in Path(res.rejects_file).read_text().splitlines()]
    assert lines == [{"source": str(path), "line": 61, "reason": lines[0]["reason"], "raw": "{broken"}]
    assert lines[0]["reason"].startswith("invalid JSON")


def test_too_many_rejects_publish_nothing(tmp_path, small_index):
    root = tmp_path / "idx"
    shutil.copytree(small_index, root, symlinks=True)
    bogus = tmp_path / "binary.jsonl"
    bogus.write_bytes(os.urandom(4000).replace(b"\n", b"\n\x00"))
    published_nothing = r"nothing was published \(pass --max-rejects \d+ to publish without them\)\. First: "
    with pytest.raises(TooManyRejectsError, match=published_nothing + r".*binary.jsonl:1"):
        _build([bogus], root)
    assert IndexRoot(root).current_version() == "v000001"
    assert verify(root) == []
    assert list((root / "rejects").glob("*.jsonl"))


def test_duplicate_ids_error_by_default_or_keep_last(tmp_path):
    rows = [{"id": "a", "text": "first text"}, {"id": "b", "text": "other"}, {"id": "a", "text": "second text"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DuplicateIdError, match=r"duplicate id 'a' at d.jsonl:3 \(first seen at d.jsonl:1\)"):
        _build([path], tmp_path / "x")
    assert IndexRoot(tmp_path / "x").current_version() is None
    res = _build([path], tmp_path / "y", on_duplicate="keep-last")
    assert res.count == 2
    idx = SearchIndex.load(tmp_path / "y")
    assert {d.id: d.text for d in idx.iter_docs()} == {"a": "second text", "b": "other"}


def test_split_sentences_keeps_document_and_offsets(tmp_path, encoder):
    doc = {"id": "doc-1", "text": "Cats purr when content. Stock prices fell on Monday. Rain is expected.", "src": "x"}
    res = _build([write_jsonl(tmp_path / "docs.jsonl", [doc])], tmp_path / "idx", split_sentences=True)
    assert res.count == 3
    hit = _search(tmp_path / "idx", encoder, "share prices dropped")[0]
    assert hit.id == "doc-1#1" and hit.doc_id == "doc-1"
    assert doc["text"][hit.start : hit.end] == hit.text == "Stock prices fell on Monday."
    assert hit.to_dict()["source"] == {"doc_id": "doc-1", "start": hit.start, "end": hit.end}


def test_keep_prunes_old_versions(tmp_path, small_corpus):
    root = tmp_path / "idx"
    for _ in range(3):
        _build([small_corpus], root, keep=2)
    assert IndexRoot(root).versions() == ["v000002", "v000003"]
    assert IndexRoot(root).current_version() == "v000003"


def test_index_types_build_and_find_exact_matches(tmp_path, small_corpus, encoder):
    rows = sample_rows(300)
    queries = encoder.encode([rows[i]["text"] for i in (3, 150, 299)])
    for index_type in ("hnsw", "ivf", "sq8", "pq", "hnsw-sq8", "binary"):
        root = tmp_path / index_type
        res = _build([small_corpus], root, index_type=index_type)
        idx = SearchIndex.load(root)
        assert idx.manifest.index_type == index_type and idx.manifest.index_params
        assert idx.segments[0].meta.index_type == index_type
        top = [h[0].id for h in idx.search(queries, 1)]
        assert top == [rows[i]["id"] for i in (3, 150, 299)], index_type
        assert verify(root) == [], index_type
        assert res.count == 300


def _committed_chunks(root: Path) -> int:
    for db in (root / "staging").glob("*/build.sqlite"):
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1)
            row = conn.execute("SELECT value FROM build_state WHERE key='chunks'").fetchone()
            conn.close()
        except sqlite3.Error:
            return 0
        return int(row[0]) if row else 0
    return 0


def test_killed_build_leaves_current_usable_and_resume_continues(tmp_path, small_index, encoder):
    root = tmp_path / "idx"
    shutil.copytree(small_index, root, symlinks=True)
    corpus = write_jsonl(tmp_path / "big.jsonl", sample_rows(900))
    cmd = [
        sys.executable,
        "-m",
        "indexer",
        "build",
        "--input",
        str(corpus),
        "--output",
        str(root),
        "--chunk-size",
        "100",
        "--batch-size",
        "16",
        "--backend",
        "torch",  # resumed below through run_build, whose default backend is torch
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while _committed_chunks(root) < 2:
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        assert time.monotonic() < deadline, "build made no progress"
        time.sleep(0.02)  # kill soon after the 2nd of 9 chunks: a fast machine must not finish first
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # The previous version is untouched and still serves; the half-built one is invisible.
    assert IndexRoot(root).current_version() == "v000001"
    assert IndexRoot(root).versions() == ["v000001"]
    assert verify(root) == []
    assert len(_search(root, encoder, "a dog")) == 5
    done = _committed_chunks(root)
    assert done >= 2
    res = run_build(
        BuildOptions(inputs=[corpus], output=root, chunk_size=100, batch_size=16, resume=True, progress=False)
    )
    assert res.resumed_rows >= 200 and res.count == 900
    assert IndexRoot(root).current_version() == "v000002"
    assert verify(root) == []
    idx = SearchIndex.load(root)
    assert sorted(str(d.id) for d in idx.iter_docs()) == sorted(r["id"] for r in sample_rows(900))
    ids = np.load(idx.segments[0].directory / "ids.npy")
    np.testing.assert_array_equal(ids, np.arange(900))
    assert not (root / "staging").exists()
