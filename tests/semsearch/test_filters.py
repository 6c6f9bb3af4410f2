"""Metadata filters (semsearch.search.filters) on what the issue-20 review found: list-valued fields, the one
string rule (exact code points, no folding; lexical search is the forgiving one), and strings the
service refuses everywhere else (lone surrogates, NUL). Synthetic index, no model."""

from __future__ import annotations

import json
import sqlite3
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from semsearch.errors import InvalidInputError
from semsearch.index.manifest import Manifest
from semsearch.index.segment import Segment, SegmentView, write_segment
from semsearch.search.filters import compile_filter
from semsearch.search.modes import search
from semsearch.search.reader import SearchIndex

DIM = 8
CAFE_NFC = "Caf\u00e9"
CAFE_NFD = unicodedata.normalize("NFD", CAFE_NFC)
ROWS: list[tuple[str, dict[str, Any]]] = [
    ("alpha bravo", {"tags": ["cat", "wild"], "years": [1999, 2005], "flags": [True], "name": CAFE_NFC}),
    ("charlie delta", {"tags": ["tool"], "years": [2010.0], "flags": [False, False], "name": CAFE_NFD}),
    ("echo foxtrot", {"tags": "cat", "years": 2005, "flags": True, "name": "cafe"}),
    ("golf hotel", {"tags": [["cat"]], "years": [], "name": "CAFÉ", "deep": {"tags": ["x", 3]}}),
    ("india juliet", {"tags": [{"t": "cat"}], "years": ["2005"], "name": " Café"}),
    ("kilo lima", {"tags": [], "name": "Cafe"}),
    ("mike cafe", {}),
]
IIDS = np.arange(len(ROWS), dtype=np.int64) * 2 + 1


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SearchIndex]:
    directory: Path = tmp_path_factory.mktemp("filters")
    vecs = np.random.default_rng(3).standard_normal((len(ROWS), DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    rows = [(int(i), f"d{n}", t, json.dumps(m)) for n, (i, (t, m)) in enumerate(zip(IIDS, ROWS, strict=True))]

    def fill(conn: sqlite3.Connection) -> None:
        conn.executemany("INSERT INTO docs(iid, ext_id, id_is_int, text, metadata) VALUES (?, ?, 0, ?, ?)", rows)

    seg_dir, meta = write_segment(
        directory, "s1", IIDS, vecs, fill, index_type="flat", index_params={}, model_fingerprint="0", origin={}
    )
    manifest = Manifest(
        model="synthetic",
        model_fingerprint="0",
        pooling="mean",
        backend="torch",
        max_seq_length=0,
        dimension=DIM,
        index_type="flat",
        index_params={},
        count=len(ROWS),
        corpus_checksum=meta.corpus_sum,
    )
    idx = SearchIndex(directory, manifest, [SegmentView(Segment.load(seg_dir), np.zeros(0, np.int64))])
    yield idx
    idx.close()


def rows_matching(index: SearchIndex, spec: dict[str, Any]) -> list[int]:
    """Row positions (in ROWS) that ``spec`` matches."""
    return [int((i - 1) // 2) for i in index.matching_iids(compile_filter(spec))]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"tags": "cat"}, [0, 2]),  # an element of a list, or the scalar itself; never [["cat"]] or [{"t": ...}]
        ({"tags": {"in": ["tool", "wild"]}}, [0, 1]),
        ({"years": 2005}, [0, 2]),  # typed: the string "2005" in row 4's list does not match the number
        ({"years": "2005"}, [4]),
        ({"years": 2010}, [1]),  # 2010.0 is the number 2010
        ({"years": {"gte": 2000, "lt": 2006}}, [0, 2]),  # a range matches when any element lies within it
        ({"years": {"gt": 2006}}, [1]),
        ({"tags": {"gte": "t", "lte": "u"}}, [1]),
        ({"flags": True}, [0, 2]),
        ({"flags": False}, [1]),
        ({"deep.tags": 3}, [3]),  # a dotted path into a list works the same
        ({"tags": "cat", "years": {"lte": 2000}}, [0]),  # each field on its own: 1999 is in row 0's list
        ({"tags": {"in": []}}, []),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else None,
)
def test_a_condition_on_a_list_matches_any_element(
    index: SearchIndex, spec: dict[str, Any], expected: list[int]
) -> None:
    """Before: a filter on a list-valued field matched nothing at all, silently."""
    assert rows_matching(index, spec) == expected


def test_strings_compare_exactly_code_point_for_code_point(index: SearchIndex) -> None:
    """The one rule for filter strings (as for ids): no case folding, no normalisation, no trimming."""
    assert rows_matching(index, {"name": CAFE_NFC}) == [0]
    assert rows_matching(index, {"name": CAFE_NFD}) == [1]  # NFD is another string, not the NFC one
    assert rows_matching(index, {"name": "cafe"}) == [2]
    assert rows_matching(index, {"name": "CAFÉ"}) == [3]
    assert rows_matching(index, {"name": "Cafe"}) == [5]
    assert rows_matching(index, {"name": {"in": [CAFE_NFC, "Cafe"]}}) == [0, 5]
    # lexical search is the forgiving one: FTS5's unicode61 folds case and diacritics
    assert {h.id for h in search(index, ["CAFÉ"], None, 10, "lexical")[0]} == {"d6"}
    assert {h.id for h in search(index, ["café"], None, 10, "lexical", {"name": "Cafe"})[0]} == set()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "\ud800"}, "lone surrogate U\\+D800 at position 0"),
        ({"name": {"in": ["ok", "a\udfffb"]}}, "lone surrogate U\\+DFFF at position 1"),
        ({"name": {"gte": "\ud800"}}, "lone surrogate"),
        ({"name": "a\x00"}, "NUL"),
        ({"name": {"in": ["\x00"]}}, "NUL"),
    ],
)
def test_values_that_are_not_text_are_refused(index: SearchIndex, spec: dict[str, Any], message: str) -> None:
    """A lone surrogate in a filter value reached SQLite (UnicodeEncodeError, a 500 in the service)."""
    with pytest.raises(InvalidInputError, match=message):
        compile_filter(spec)
    assert compile_filter({"name": ""}).where  # the empty string is a value like any other
