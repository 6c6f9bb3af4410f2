"""Input formats round-trip; bad rows become rejects with line numbers; sentence splitting keeps offsets."""

from __future__ import annotations

import gzip
import json
import random
import re
from pathlib import Path

import pytest
from conftest import write_jsonl

from semsearch.errors import InvalidInputError
from semsearch.index.store import Record
from semsearch.ingest.readers import Reject, detect_format, read_inputs, split_sentences


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
    assert reasons[7] == "not valid UTF-8 (invalid start byte: byte 0xFF at byte 21 of the line)"
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


# ------------------------------------------------------------------ decoding: one bad row, never the rest


def _row(fmt: str, n: int, text: bytes) -> bytes:
    """Row ``n`` (also its id) of a file of format ``fmt`` with ``text`` as raw bytes."""
    if fmt == "txt":
        return text
    if fmt == "jsonl":
        return b'{"id": %d, "text": "%s"}' % (n, text)
    return b"%d%s%s" % (n, b"," if fmt == "csv" else b"\t", text)


def _write_rows(path: Path, fmt: str, rows: list[bytes]) -> Path:
    header = {"csv": b"id,text\n", "tsv": b"id\ttext\n"}.get(fmt, b"")
    data = header + b"".join(r + b"\n" for r in rows)
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


FORMATS_GZ = [(f, gz) for f in ("txt", "jsonl", "csv", "tsv") for gz in (False, True)]


@pytest.mark.parametrize("fmt,gz", FORMATS_GZ)
def test_a_bad_byte_rejects_its_row_only_with_its_true_line(tmp_path, fmt, gz):
    """Bad bytes in the first data row, in row 2 and far past any read-ahead buffer (8 KB, 64 KB):
    exactly those rows are rejected, at their own line numbers, and every other row is read."""
    n = 4000  # ~170 KB
    bad = {1, 2, 3500}
    rows = [_row(fmt, i, b"row %d caf\xe9 %s" % (i, b"x" * 30) if i in bad else b"row %d ok" % i) for i in range(1, n)]
    path = _write_rows(tmp_path / f"c.{fmt}{'.gz' if gz else ''}", fmt, rows)
    recs, rejects = _read(path)
    offset = 1 if fmt in ("csv", "tsv") else 0  # the header is line 1
    expected = [(i + offset, "not valid UTF-8") for i in sorted(bad)]
    assert [(r.line, r.reason.split(" (")[0]) for r in rejects] == expected
    assert "byte 0xE9" in rejects[0].reason and "\\xe9" in rejects[0].raw
    assert len(recs) == n - 1 - len(bad)
    assert recs[-1].text == f"row {n - 1} ok" and recs[-1].source == f"{path.name}:{n - 1 + offset}"
    json.dumps([r.raw for r in rejects], ensure_ascii=False).encode("utf-8")  # a reject is always valid text


@pytest.mark.parametrize("fmt,gz", [(f, gz) for f, gz in FORMATS_GZ if f in ("csv", "tsv")])
def test_a_bad_byte_in_the_header_is_one_error_naming_line_1(tmp_path, fmt, gz):
    rows = [_row(fmt, i, b"fine") for i in range(1, 5000)]
    path = tmp_path / f"c.{fmt}{'.gz' if gz else ''}"
    sep = b"," if fmt == "csv" else b"\t"
    data = b"id" + sep + b"text" + sep + b"caf\xe9\n" + b"".join(r + sep + b"m\n" for r in rows)
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(InvalidInputError, match=r"c\.\w+(\.gz)?:1: the header is not valid UTF-8 \(invalid cont"):
        _read(path)


@pytest.mark.parametrize("fmt,gz", [(f, gz) for f, gz in FORMATS_GZ if f in ("csv", "tsv")])
def test_multiline_quoted_fields_keep_line_numbers_and_a_bad_byte_rejects_that_record(tmp_path, fmt, gz):
    sep = b"," if fmt == "csv" else b"\t"
    data = (
        b"id" + sep + b"text\n"  # 1
        b"a" + sep + b'"spans\nthree\nlines"\n'  # 2-4
        b"b"
        + sep
        + b'"bad \xff\xfe\non its second line"\n'  # 5-6
        + b"".join(b"f%d" % i + sep + b"filler %d\n" % i for i in range(3000))  # 7-3006: past 64 KB
        + b"c"
        + sep
        + b'"first\r\nsecond \xc3\r\nthird"\r\n'  # 3007-3009 (CRLF inside and after)
        b"d" + sep + b"after\n"  # 3010
    )
    path = tmp_path / f"c.{fmt}{'.gz' if gz else ''}"
    path.write_bytes(gzip.compress(data) if gz else data)
    recs, rejects = _read(path)
    by_id = {r.ext_id: r for r in recs}
    assert by_id["a"].text == "spans\nthree\nlines" and by_id["a"].source == f"{path.name}:2"
    assert by_id["f0"].source == f"{path.name}:7" and by_id["f2999"].source == f"{path.name}:3006"
    assert by_id["d"].source == f"{path.name}:3010"
    assert [(r.line, r.reason) for r in rejects] == [
        (5, "not valid UTF-8 (invalid start byte: byte 0xFF at byte 8 of the line) (the record spans lines 5-6)"),
        (
            3007,
            "not valid UTF-8 (invalid continuation byte: byte 0xC3 at byte 8 of the line on line 3008) "
            "(the record spans lines 3007-3009)",
        ),
    ]
    assert len(recs) == 3002


def test_csv_lone_cr_line_ends_are_lines(tmp_path):
    p = tmp_path / "mac.csv"
    p.write_bytes(b'id,text\r1,first\r2,"two\rlines"\r3,third\r')
    recs, rejects = _read(p)
    assert [(r.ext_id, r.text, r.source) for r in recs] == [
        ("1", "first", "mac.csv:2"),
        ("2", "two\rlines", "mac.csv:3"),
        ("3", "third", "mac.csv:5"),
    ]
    assert rejects == []


# ------------------------------------------------------------------ corrupt and truncated .gz: one error


def _big_gz(fmt: str, n: int = 20_000) -> tuple[bytes, int]:
    """A gzip member of ``n`` rows of seeded random words (hardly compressible), and its row count."""
    rng = random.Random(7)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(5000)]
    rows = [_row(fmt, i, " ".join(rng.choice(words) for _ in range(8)).encode()) for i in range(1, n + 1)]
    header = {"csv": b"id,text\n", "tsv": b"id\ttext\n"}.get(fmt, b"")
    return gzip.compress(header + b"".join(r + b"\n" for r in rows)), n


def _lines_then_error(path: Path) -> tuple[list[int], InvalidInputError]:
    seen: list[int] = []
    with pytest.raises(InvalidInputError) as info:
        for item in read_inputs([path]):
            seen.append(item.line if isinstance(item, Reject) else int(str(item.source).rsplit(":", 1)[1]))
    return seen, info.value


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "csv", "tsv"])
def test_truncated_gz_is_one_error_naming_file_and_last_good_line(tmp_path, fmt):
    data, n = _big_gz(fmt)
    path = tmp_path / f"cut.{fmt}.gz"
    path.write_bytes(data[: len(data) // 2])
    seen, error = _lines_then_error(path)
    last = int(re.search(r"after line (\d+)", error.message).group(1))  # type: ignore[union-attr]
    first = 2 if fmt in ("csv", "tsv") else 1
    assert 1000 < last < n and seen == list(range(first, last + 1)), "every line up to the last good one, in order"
    assert str(path) in error.message and "is truncated" in error.message and "\n" not in error.message


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "csv", "tsv"])
def test_corrupt_gz_is_one_error_naming_file_and_last_good_line(tmp_path, fmt):
    data, _ = _big_gz(fmt)
    mid = len(data) // 2
    path = tmp_path / f"bad.{fmt}.gz"
    path.write_bytes(data[:mid] + bytes(b ^ 0xFF for b in data[mid : mid + 64]) + data[mid + 64 :])
    seen, error = _lines_then_error(path)
    last = int(re.search(r"after line (\d+)", error.message).group(1))  # type: ignore[union-attr]
    assert "holds corrupt gzip data" in error.message and str(path) in error.message
    first = 2 if fmt in ("csv", "tsv") else 1
    assert last > 1000 and seen[-1] <= last and seen[0] == first  # garbage may decode before the CRC fails


def test_gz_cut_inside_its_header_is_an_error(tmp_path):
    path = tmp_path / "tiny.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"text": "a"}\n')[:12])
    with pytest.raises(InvalidInputError, match=r"tiny\.jsonl\.gz is truncated"):
        _read(path)


# ------------------------------------------------------------------ rows that would break search


def _nest(levels: int) -> object:
    value: object = 1
    for _ in range(levels):
        value = [value]
    return value


def _x(value: object) -> str:
    """A row whose metadata field ``x`` is ``value``, as JSON text."""
    return '{"text": "t", "x": ' + str(value) + "}"


JSONL_LIMIT_CASES = [
    # (the raw JSON line, the reason's expected fragment or None when the row is accepted)
    ('{"text": "t", "x": NaN}', "NaN is not a finite number"),
    ('{"text": "t", "x": Infinity}', "Infinity is not a finite number"),
    ('{"text": "t", "x": {"y": [-Infinity]}}', "-Infinity is not a finite number"),
    ('{"text": "t", "x": 1e400}', "too large for a double"),
    ('{"text": "t", "x": -1e400}', "too large for a double"),
    ('{"text": "t", "x": 1e308}', None),
    (_x(2**63), "integer outside the 64-bit range"),
    (_x(-(2**63) - 1), "integer outside the 64-bit range"),
    (_x(2**63 - 1), None),
    (_x(-(2**63)), None),
    (_x(2**53 + 1), None),
    (_x("1" + "0" * 4999), "an integer with 5000 digits"),
    (_x(json.dumps(_nest(31))), None),  # 32 levels with the row's object
    (_x(json.dumps(_nest(32))), "nested more than 32 levels deep (at x[0][0]"),
    (_x("[" * 1000 + "]" * 1000), "nested far deeper"),
    (_x("[" * 100_000 + "]" * 100_000), "nested far deeper"),
    ('{"text": "t \\ud800"}', "text is not valid Unicode text: lone surrogate U+D800"),
    ('{"text": "t", "k\\udfff": 1}', "metadata key 'k\\udfff' is not valid Unicode"),
    ('{"text": "t", "x": {"y": ["ok", "\\udbff"]}}', "metadata field 'x.y[1]' is not valid Unicode"),
    ('{"text": "t", "x": "a\\u0000b"}', "metadata field 'x' must not contain NUL"),
    ('{"text": "t", "id": "i\\ud800"}', "'id' is not valid Unicode text"),
    ('{"text": "t", "id": ""}', "'id' must not be empty"),
    ('{"text": "t", "id": 1.5}', "'id' must be a string or an integer, got a number with a fraction"),
    ('{"text": "t", "id": 9007199254740992}', "'id' integer ids must be within"),
    ('{"text": "t", "id": "' + "i" * 1025 + '"}', "'id' has 1025 characters"),
    ('{"text": "t", "id": " 1 "}', None),  # ids are exact text: kept as written
    ('{"text": "t", "first name": "a", "é": "b", "a.b": 1, "": 2}', None),  # keys filters cannot name: kept
    (_x(json.dumps("y" * (64 * 1024 - 8))), None),  # exactly 64 KiB: {"x":"…"}
    (_x(json.dumps("y" * (64 * 1024 - 7))), "metadata is 65,537 bytes of JSON, over the limit of 65,536"),
]


@pytest.mark.parametrize("line,expected", JSONL_LIMIT_CASES, ids=range(len(JSONL_LIMIT_CASES)))
def test_jsonl_limits_are_per_row_rejects(tmp_path, line, expected):
    p = tmp_path / "c.jsonl"
    p.write_text('{"text": "before"}\n' + line + '\n{"text": "after"}\n', encoding="utf-8")
    recs, rejects = _read(p)
    assert [r.text for r in recs][:1] == ["before"] and recs[-1].text == "after"
    if expected is None:
        assert rejects == [] and len(recs) == 3
        assert json.loads(line, parse_constant=None) == {"text": recs[1].text, **recs[1].metadata} | (
            {"id": recs[1].ext_id} if recs[1].ext_id is not None else {}
        )
    else:
        assert len(recs) == 2 and [r.line for r in rejects] == [2]
        assert expected in rejects[0].reason, rejects[0].reason
        assert len(rejects[0].reason) < 300 and len(rejects[0].raw) <= 200
        rejects[0].raw.encode("utf-8")  # storable


def test_metadata_limit_is_a_parameter(tmp_path):
    p = write_jsonl(tmp_path / "c.jsonl", [{"text": "t", "x": "y" * 100}, {"text": "u"}])
    recs, rejects = _read(p, max_metadata_bytes=50)
    assert [r.text for r in recs] == ["u"] and "over the limit of 50 bytes" in rejects[0].reason


def test_csv_ids_are_exact_and_limits_apply(tmp_path):
    p = tmp_path / "c.csv"
    p.write_bytes(
        b"id,text,tag\n"
        b" 1 ,padded id,a\n"  # 2: kept as " 1 "
        b"1,plain id,b\n"  # 3
        b"  ,blank id,c\n"  # 4: reject
        b"x\x00y,nul id,d\n"  # 5: reject
        b"z,nul in metadata,e\x00f\n"  # 6: reject
        b"w,big metadata," + b"g" * 70_000 + b"\n"  # 7: reject
        b"v,fine,h\n"  # 8
    )
    recs, rejects = _read(p)
    assert [(r.ext_id, r.metadata) for r in recs] == [(" 1 ", {"tag": "a"}), ("1", {"tag": "b"}), ("v", {"tag": "h"})]
    reasons = {r.line: r.reason for r in rejects}
    assert reasons[4] == "empty id in column 'id'"
    assert reasons[5] == "'id' must not contain NUL characters (U+0000)"
    assert reasons[6] == "metadata field 'tag' must not contain NUL characters (U+0000)"
    assert reasons[7].startswith("metadata is 70,010 bytes of JSON, over the limit")
    assert set(reasons) == {4, 5, 6, 7}


def test_csv_duplicate_column_names_are_refused(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("id,text,tag,tag\n1,hello,a,b\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match="names column\\(s\\) 'tag' more than once"):
        _read(p)


def test_split_sentence_ids_respect_the_id_limit(tmp_path):
    long_id = "d" * 1024  # a valid id; "#0" makes it 1026 characters
    p = write_jsonl(tmp_path / "c.jsonl", [{"id": long_id, "text": "One. Two."}, {"id": "ok", "text": "Three. Four."}])
    recs, rejects = _read(p, split=True)
    assert [r.ext_id for r in recs] == ["ok#0", "ok#1"]
    assert [(r.line, r.reason) for r in rejects] == [(1, "sentence id has 1026 characters, over the limit of 1024")]


def test_an_unclosed_quote_refuses_the_file_instead_of_swallowing_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text('id,text\n1,"good one"\n2,"never closed\n3,a row it would swallow\n4,and another\n')
    with pytest.raises(InvalidInputError, match=r"c\.csv:3: a quoted field opened on line 3 is never closed"):
        list(read_inputs([path]))


def test_a_stray_quote_rejects_its_row_only(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text('id,text\n1,"a"b\n2,fine\n3,"multi\nline"\n')
    rows = list(read_inputs([path]))
    assert [(type(r).__name__, r.line if isinstance(r, Reject) else r.ext_id) for r in rows] == [
        ("Reject", 2),
        ("Record", "2"),
        ("Record", "3"),
    ]
    assert rows[2].text == "multi\nline"


def test_an_integral_float_id_is_that_integer(tmp_path: Path) -> None:
    """JSON Schema's `integer` admits 5.0 and some encoders write integers that way: it is the id 5."""
    path = write_jsonl(tmp_path / "f.jsonl", [{"id": 5.0, "text": "five"}, {"id": 5.5, "text": "five and a half"}])
    rows = list(read_inputs([path]))
    assert isinstance(rows[0], Record) and rows[0].ext_id == 5 and isinstance(rows[0].ext_id, int)
    assert isinstance(rows[1], Reject) and "fraction" in rows[1].reason
