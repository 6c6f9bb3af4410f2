"""Passages (``--chunk-tokens``): the real tokenizer, real builds; offsets slice the stored document."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from conftest import write_jsonl

from indexer.pipeline import BuildOptions, run_build
from semsearch.errors import InvalidInputError
from semsearch.index.manifest import Manifest
from semsearch.ingest import Chunker, Chunking
from semsearch.search import SearchIndex

pytestmark = pytest.mark.slow  # real model, real builds

LONG_WORD_RUN = " ".join(["extraordinarily"] * 120)
DOCS = [
    {"id": "a", "text": "Cats purr. Dogs bark loudly at night. Birds sing in the morning. Fish swim.", "topic": "pets"},
    {"text": "An untitled note. It has two sentences.", "topic": "misc"},
    {"id": "long", "text": f"Short start. {LONG_WORD_RUN}. Short end.", "topic": "misc"},
]


def test_chunker_packs_whole_sentences_and_cuts_long_ones(encoder):
    chunker = Chunker(Chunking(16, 1), encoder.token_lengths, encoder.token_offsets)
    text = DOCS[2]["text"]
    spans = chunker.spans(text)
    covered = "".join(text[s:e] for s, e in spans)
    assert covered.count("extraordinarily") >= 120  # nothing truncated away (overlap may repeat some)
    for s, e in spans:
        assert encoder.token_lengths([text[s:e]])[0] <= 16
    # overlap: one sentence shared between consecutive passages of whole sentences
    spans = Chunker(Chunking(20, 1), encoder.token_lengths, encoder.token_offsets).spans(DOCS[0]["text"])
    assert len(spans) >= 2 and all(b[0] < a[1] for a, b in itertools.pairwise(spans))
    assert Chunker(Chunking(64), encoder.token_lengths, encoder.token_offsets).spans(DOCS[0]["text"]) == [
        (0, len(DOCS[0]["text"]))
    ]


def test_build_and_add_with_chunk_tokens(tmp_path: Path):
    src = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    out = tmp_path / "idx"
    run_build(BuildOptions(inputs=[src], output=out, chunk_tokens=24, chunk_overlap=0, progress=False))
    manifest = Manifest.read(out / "current")
    assert manifest.chunking == {"tokens": 24, "overlap": 0}
    assert manifest.prompts is None  # the packaged MiniLM declares none
    index = SearchIndex.load(out)
    docs = list(index.iter_docs())
    index.close()
    by_doc: dict[str, list] = {}
    for d in docs:
        by_doc.setdefault(d.doc_id, []).append(d)
    assert set(by_doc) >= {"a", "long"} and len(by_doc) == 3
    assert next(d.id for d in by_doc["a"]) == "a#0"
    for passages in by_doc.values():
        stored = [p.document for p in passages if p.document is not None]
        assert len(stored) == 1  # the document text, once
        for p in passages:
            assert stored[0][p.start : p.end] == p.text
            assert "topic" in p.metadata and not any(k.startswith("_semsearch") for k in p.metadata)
    # add applies the index's chunking; contradicting flags are refused
    more = write_jsonl(tmp_path / "more.jsonl", [{"id": "b", "text": "Another doc. " * 20}])
    run_build(BuildOptions(inputs=[more], output=out, progress=False), incremental=True)
    after = Manifest.read(out / "current")
    assert after.chunking == {"tokens": 24, "overlap": 0}
    index = SearchIndex.load(out)
    assert max(encoder_len for encoder_len in [len([d for d in index.iter_docs() if d.doc_id == "b"])]) > 1
    index.close()
    with pytest.raises(InvalidInputError, match="differ from the index's chunking"):
        run_build(BuildOptions(inputs=[more], output=out, chunk_tokens=32, progress=False), incremental=True)
    with pytest.raises(InvalidInputError, match="--split-sentences"):
        run_build(BuildOptions(inputs=[more], output=out, split_sentences=True, progress=False), incremental=True)
    with pytest.raises(InvalidInputError, match="more than the model reads"):
        run_build(BuildOptions(inputs=[src], output=tmp_path / "x", chunk_tokens=100_000, progress=False))
    assert json.loads(json.dumps(after.summary()))["chunking"]["tokens"] == 24


def test_an_upserted_document_replaces_all_of_its_passages(tmp_path: Path):
    long_doc = {"id": "d", "text": " ".join(f"Sentence number {i} is here." for i in range(30))}
    out = tmp_path / "idx"
    run_build(
        BuildOptions(
            inputs=[write_jsonl(tmp_path / "a.jsonl", [long_doc])], output=out, chunk_tokens=16, progress=False
        )
    )
    index = SearchIndex.load(out)
    before = {d.id for d in index.iter_docs()}
    index.close()
    short = {"id": "d", "text": "Now it is one short sentence."}
    run_build(
        BuildOptions(
            inputs=[write_jsonl(tmp_path / "b.jsonl", [short])], output=out, progress=False, on_duplicate="keep-last"
        ),
        incremental=True,
    )
    index = SearchIndex.load(out)
    after = [(d.id, d.text) for d in index.iter_docs()]
    index.close()
    assert len(before) > 3 and after == [("d#0", short["text"])]
