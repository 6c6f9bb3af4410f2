"""Any row the readers accept can be stored, returned, filtered on and serialised (#20.5).

Hypothesis writes hostile JSON lines to a real file (random metadata of every JSON type: floats
including NaN and infinities, integers far past 64 bits, any Unicode including lone surrogates and
NUL, nesting around the depth limit, lists, keys the filter language cannot name, overflowing
literals such as ``1e400``), :func:`read_inputs` reads it, and the accepted rows go through the core
writer into a real flat index (random unit vectors: no model). Then, for every accepted row: dense
search by its own vector returns it with exactly its id, text and metadata; an equality filter on
each top-level scalar field either evaluates and returns the row, or is refused as invalid input
for a documented filter bound (never an error of the index: one bad row used to make every filtered
search fail); and the hit serialises as the service does (strict JSON, UTF-8).
``INVARIANT_EXAMPLES=200`` for a longer run.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import DIM, META
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from semsearch.errors import InvalidInputError
from semsearch.index.layout import IndexRoot
from semsearch.index.store import Record
from semsearch.index.writer import BaseVersion, IndexWriter
from semsearch.ingest.readers import Reject, read_inputs
from semsearch.rows import MAX_METADATA_DEPTH
from semsearch.search.filters import FIELD_PATTERN, MAX_VALUE_CHARS, NUMBER_LIMIT
from semsearch.search.modes import search
from semsearch.search.reader import SearchIndex, verify

_FIELD_RE = re.compile(FIELD_PATTERN)
EDGE_INTS = [2**53 - 1, 2**53, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 10**30]

any_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=12)  # surrogates, NUL
texts = st.text(max_size=12) | st.sampled_from(["", " ", "2020", "a.b", "\u00e9", "e\u0301", "\U0001f600"]) | any_text
# mostly names a filter can address (so that filters run), some it cannot
names = (
    st.sampled_from(["a", "year", "tag", "n_1", "_"])
    | st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True)
    | texts
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.sampled_from(EDGE_INTS)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.floats(min_value=-1e300, max_value=1e300)
    | texts
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3), max_leaves=12
)


@st.composite
def rows(draw: st.DrawFn, n: int) -> dict[str, Any] | str:
    """Row ``n``: a JSON object with a unique id (or a raw JSON line with an overflowing literal)."""
    kind = draw(st.sampled_from(["plain", "plain", "plain", "deep", "literal"]))
    row_id: Any = n if draw(st.booleans()) else f"r{n}:{draw(any_text)}"  # ':' keeps str ids apart from ints
    text = draw(st.sampled_from(["alpha beta", " gamma\u00a0δέλτα ", "x"]) | any_text)
    metadata = draw(st.dictionaries(names, scalars | values, max_size=6))
    if kind == "deep":  # around the depth limit: the row's object is level 1
        levels = draw(st.integers(MAX_METADATA_DEPTH - 3, MAX_METADATA_DEPTH + 1))
        nested: Any = draw(scalars)
        for _ in range(levels - 1):
            nested = [nested]
        metadata["deep"] = nested
    row = {**metadata, "text": text, "id": row_id}
    if kind == "literal":
        literal = draw(st.sampled_from(["1e400", "-1e400", "NaN", "-Infinity", "1" + "0" * 5000, "1e-400", "-0"]))
        return json.dumps(row)[:-1] + f', "lit": {literal}}}'
    return row


def _build(root: Path, records: list[Record], vectors: np.ndarray) -> SearchIndex:
    index_root = IndexRoot(root)
    with index_root.lock():
        writer = IndexWriter(
            index_root, "build", META, {"type": "flat", "params": {}}, base=BaseVersion.read(index_root)
        )
        writer.add_chunk(records, vectors, [], len(records), "error")
        writer.commit({"kind": "build"})
    return SearchIndex.load(root)


def _canonical(value: Any) -> str:
    """Equal JSON texts = equal values with equal types (1 != 1.0 != True)."""
    return json.dumps(value, sort_keys=True, allow_nan=False)


def _filterable(key: str, value: Any) -> bool:
    """Whether ``{key: value}`` is within the filter language's documented bounds."""
    if not _FIELD_RE.match(key) or value is None:
        return False  # a key with a dot is accepted as a path into nested objects: it never names this key
    if isinstance(value, str):
        return len(value) <= MAX_VALUE_CHARS
    return isinstance(value, bool) or abs(value) <= NUMBER_LIMIT


EXAMPLES = int(os.environ.get("INVARIANT_EXAMPLES", "20"))


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_every_accepted_row_is_stored_returned_filtered_and_serialised(tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("invariant")
    drawn = [data.draw(rows(n)) for n in range(data.draw(st.integers(1, 14)))]
    path = tmp / "hostile.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in drawn), encoding="utf-8")
    items = list(read_inputs([path]))
    records = [r for r in items if isinstance(r, Record)]
    assert len(items) == len(drawn) and all(isinstance(r, Reject) or r.ext_id is not None for r in items)
    if not records:
        return
    rng = np.random.default_rng(len(records))
    vectors = rng.standard_normal((len(records), DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = _build(tmp / f"idx-{time.time_ns()}", records, vectors)
    try:
        assert verify(index.directory) == []
        for rec, vec in zip(records, vectors, strict=True):
            (hit,) = search(index, ["q"], vec[None, :], 1, "dense")[0]
            assert (hit.id, hit.text) == (rec.ext_id, rec.text)
            assert _canonical(hit.metadata) == _canonical(rec.metadata)
            json.dumps(hit.to_dict(), ensure_ascii=False, allow_nan=False).encode("utf-8")  # as the service does
            for key, value in rec.metadata.items():
                if isinstance(value, dict | list) or value is None:
                    continue
                spec = {key: value}
                try:
                    top = search(index, ["q"], vec[None, :], 1, "dense", spec)[0]
                except InvalidInputError:  # a 422 for the filter itself, only outside its documented bounds
                    assert not _filterable(key, value), spec
                    continue
                if "." not in key:
                    assert [h.id for h in top] == [rec.ext_id], spec
    finally:
        index.close()


def test_verify_flags_rows_whose_metadata_breaks_filters(tmp_path):
    """Indexes written before the ingest limits may hold NaN/Infinity metadata: verify names them."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    records = [
        Record(text="fine", ext_id="ok", metadata={"x": 1}),
        Record(text="nan", ext_id="n", metadata={"x": float("nan")}),  # what the old readers let through
        Record(text="inf", ext_id="i", metadata={"y": [float("inf")]}),
    ]
    index = _build(tmp_path / "old", records, vectors)
    try:
        with pytest.raises(Exception, match="malformed JSON"):  # why it matters: any filter fails
            search(index, ["q"], vectors[:1], 1, "dense", {"x": 1})
    finally:
        index.close()
    (problem,) = verify(tmp_path / "old")
    assert "2 row(s) hold metadata that SQLite's JSON functions refuse" in problem
    assert "'n': NaN is not a finite number" in problem and "'i': -Infinity" not in problem
    assert "'i': Infinity is not a finite number" in problem
    assert verify(tmp_path / "old", full=False) == []
