"""Input formats round-trip; bad rows become rejects with line numbers; sentence splitting keeps offsets."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from semsearch.errors import InvalidInputError
from semsearch.readers import Reject, detect_format, read_inputs, split_sentences
from semsearch.store import Record


def _read(path: Path, **kw) -> tuple[list[Record], list[Reject]]:
    items = list(read_inputs([path], **kw))
    return [i for i in items if isinstance(i, Record)], [i for i in items if isinstance(i, Reject)]


def test_txt_one_sentence_per_line_skips_blank(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("first sentence\n\n  second sentence  \r\nthird\n", encoding="utf-8")
    recs, rejects = _read(p)
    assert [r.text for r in recs] == ["first sentence", "second sentence", "third"]
    assert [r.source for r in recs] == ["c.txt:1", "c.txt:3", "c.txt:4"]
    assert rejects == [] and all(r.ext_id is None for r in recs)


def test_jsonl_ids_types_and_metadata(tmp_path):
    p = tmp_path / "c.jsonl"
    rows = [
        {"id": 7, "text": "int id", "lang": "en"},
        {"id": "x-1", "text": "str id", "tags": ["a", "b"]},
        {"text": "no id", "score": 1.5},
    ]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    recs, rejects = _read(p)
    assert [(r.ext_id, r.text, r.metadata) for r in recs] == [
        (7, "int id", {"lang": "en"}),
        ("x-1", "str id", {"tags": ["a", "b"]}),
        (None, "no id", {"score": 1.5}),
    ]
    assert rejects == []


@pytest.mark.parametrize("ext,delim", [("csv", ","), ("tsv", "\t")])
def test_delimited_with_fields(tmp_path, ext, delim):
    p = tmp_path / f"c.{ext}"
    p.write_text(
        delim.join(["key", "body", "lang"])
        + "\n"
        + delim.join(["k1", "hello world", "en"])
        + "\n"
        + delim.join(["k2", "bonjour", "fr"])
        + "\n",
        encoding="utf-8",
    )
    recs, _ = _read(p, text_field="body", id_field="key")
    assert [(r.ext_id, r.text, r.metadata) for r in recs] == [
        ("k1", "hello world", {"lang": "en"}),
        ("k2", "bonjour", {"lang": "fr"}),
    ]
    with pytest.raises(InvalidInputError, match="no column 'text'"):
        _read(p)


def test_gzip_variants(tmp_path):
    p = tmp_path / "c.jsonl.gz"
    with gzip.open(p, "wt", encoding="utf-8") as fh:
        fh.write(json.dumps({"id": "a", "text": "zipped"}) + "\n")
    recs, _ = _read(p)
    assert recs[0].text == "zipped" and recs[0].ext_id == "a"
    fake = tmp_path / "fake.txt.gz"
    fake.write_text("not gzip at all\n")
    with pytest.raises(InvalidInputError, match="not gzip"):
        _read(fake)


def test_jsonl_rejects_row_by_row(tmp_path):
    p = tmp_path / "bad.jsonl"
    lines = [
        b'{"text": "good one"}',
        b'{"text": "broken',
        b'["not", "an", "object"]',
        b'{"title": "no text field"}',
        b'{"text": "   "}',
        b'{"text": 42}',
        b'{"text": "bad bytes \xff\xfe"}',
        b'{"text": "' + b"x" * 50 + b'"}',
        b'{"id": true, "text": "bool id"}',
        b'{"text": "good two"}',
    ]
    p.write_bytes(b"\n".join(lines) + b"\n")
    recs, rejects = _read(p, max_chars=40)
    assert [r.text for r in recs] == ["good one", "good two"]
    reasons = {r.line: r.reason for r in rejects}
    assert set(reasons) == {2, 3, 4, 5, 6, 7, 8, 9}
    assert "invalid JSON" in reasons[2]
    assert "expected a JSON object" in reasons[3]
    assert "missing field 'text'" in reasons[4]
    assert reasons[5] == "empty text"
    assert "must be a string" in reasons[6]
    assert reasons[7] == "not valid UTF-8"
    assert "over the limit of 40" in reasons[8]
    assert "'id' must be" in reasons[9]


def test_csv_wrong_field_count_is_rejected(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text('id,text\n1,"fine, with comma"\n2,too,many\n3,ok\n', encoding="utf-8")
    recs, rejects = _read(p)
    assert [r.text for r in recs] == ["fine, with comma", "ok"]
    assert [(r.line, r.reason) for r in rejects] == [(3, "expected 2 fields, got 3")]


def test_unknown_extension():
    with pytest.raises(InvalidInputError, match="cannot tell the format"):
        detect_format(Path("corpus.parquet"))


def test_split_sentences_keeps_offsets(tmp_path):
    text = "Dr. Smith went home. He said hello! Then 3 dogs ran.  Was it late? Yes."
    spans = list(split_sentences(text))
    assert [text[a:b] for a, b in spans] == [
        "Dr. Smith went home.",
        "He said hello!",
        "Then 3 dogs ran.",
        "Was it late?",
        "Yes.",
    ]
    p = tmp_path / "docs.jsonl"
    p.write_text(json.dumps({"id": "d1", "text": text, "year": 2020}) + "\n", encoding="utf-8")
    recs, _ = _read(p, split=True)
    assert [r.ext_id for r in recs] == [f"d1#{i}" for i in range(5)]
    assert all(r.doc_id == "d1" and r.metadata == {"year": 2020} for r in recs)
    assert all(text[r.start : r.end] == r.text for r in recs)
