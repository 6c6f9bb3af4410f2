"""Rows at the edges of the ingest limits, built by the real indexer, answer every search route (#20.5).

The corpus mixes rows the readers must reject (NaN, Infinity, ``1e400``, a 5,000-digit integer,
nesting past 32 levels, a lone surrogate, 65 KiB of metadata: before the limits, one NaN row made
every filtered search a 500) with rows they must accept at the very edges (integers up to 2^63 - 1,
1e308, 32 levels, 64 KiB, any Unicode, keys a filter cannot name). A real server over that index
answers dense, lexical and hybrid searches with filters on every field, by POST, GET and batch,
with 200 and every row's metadata returned exactly as written.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from indexer.pipeline import BuildOptions, run_build

pytest_plugins = ["app_fixtures"]


def _nest(levels: int) -> Any:
    value: Any = "bottom"
    for _ in range(levels):
        value = [value]
    return value


ACCEPTED: list[dict[str, Any]] = [
    {"id": "big", "text": "a large wild cat", "n": 2**63 - 1, "neg": -(2**63), "safe": 2**53 + 1},
    {"id": "float", "text": "a small domestic cat", "f": 1e308, "tiny": 5e-324, "zero": -0.0, "n": 2**53},
    {"id": "deep", "text": "a tool for cutting wood", "d": _nest(31), "flag": True, "none": None},  # 32 levels
    {"id": "wide", "text": "a river flowing to the sea", "s": "y" * (64 * 1024 - 8 - 30)},
    {"id": "uni", "text": "caf\u00e9 au lait \U0001f600", "tag": "caf\u00e9 \u4e2d \U0001f600", "first name": "x"},
    {"id": 7, "text": "seven is a number", "a.b": 1, "a": {"b": 2}, "lst": [1, "2", [3.5]]},
]
ACCEPTED = [{**row, "row": n} for n, row in enumerate(ACCEPTED)]  # one filterable field each, at least
REJECTED_LINES = [
    '{"id": "nan", "text": "not a number", "n": NaN}',
    '{"id": "inf", "text": "infinite", "f": Infinity}',
    '{"id": "ovf", "text": "overflow", "f": 1e400}',
    '{"id": "int", "text": "too many digits", "n": 1' + "0" * 5000 + "}",
    '{"id": "int64", "text": "past 64 bits", "n": 9223372036854775808}',
    json.dumps({"id": "deeper", "text": "too deep", "d": _nest(32)}),
    '{"id": "sur", "text": "lone \\ud800 surrogate"}',
    '{"id": "surkey", "text": "surrogate key", "k\\udc00": 1}',
    json.dumps({"id": "huge", "text": "too big", "s": "y" * (64 * 1024)}),
]


@pytest.fixture(scope="module")
def edge_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    corpus = tmp_path_factory.mktemp("edges") / "edges.jsonl"
    lines = [json.dumps(r) for r in ACCEPTED] + REJECTED_LINES
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    root = corpus.parent / "index"
    run_build(BuildOptions(inputs=[corpus], output=root, progress=False, max_rejects=str(len(REJECTED_LINES))))
    rejects = [json.loads(line) for f in (root / "rejects").iterdir() for line in f.read_text().splitlines()]
    assert sorted(r["line"] for r in rejects) == list(range(len(ACCEPTED) + 1, len(lines) + 1))
    return root


def _filters(row: dict[str, Any]) -> list[dict[str, Any]]:
    """An equality filter on each top-level scalar field the filter language can name and bind."""
    out = []
    for key, value in row.items():
        if key in ("id", "text") or not key.isidentifier() or isinstance(value, dict | list) or value is None:
            continue
        if isinstance(value, int | float) and not isinstance(value, bool) and abs(value) > 2**53:
            continue  # outside the filter's documented number range: a 422 of the filter, tested below
        if isinstance(value, str) and len(value) > 1000:
            continue
        out.append({key: value})
    return out


def test_edge_rows_answer_every_search_route_with_200(
    edge_index: Path, launch_server: Callable[..., Any], check_error: Callable[..., Any]
) -> None:
    server = launch_server(edge_index)
    server.wait_started()
    expected = {r["id"]: {k: v for k, v in r.items() if k not in ("id", "text")} for r in ACCEPTED}
    with server.client() as client:
        info = client.get("/info").json()
        assert info["count"] == len(ACCEPTED)
        for row in ACCEPTED:
            for flt in _filters(row):
                for mode in ("dense", "lexical", "hybrid"):
                    r = client.post("/search", json={"query": row["text"], "k": 10, "mode": mode, "filter": flt})
                    assert r.status_code == 200, (flt, mode, r.text[:300])
                    assert row["id"] in [h["id"] for h in r.json()["results"]], (flt, mode)
                r = client.get("/search", params={"q": row["text"], "k": 10, "filter": json.dumps(flt)})
                assert r.status_code == 200 and row["id"] in [h["id"] for h in r.json()["results"]], flt
            r = client.post(
                "/search/batch", json={"queries": [row["text"], "cat"], "k": 10, "filter": _filters(row)[0]}
            )
            assert r.status_code == 200, r.text[:300]
        # every row returned, with its metadata exactly as written (2^63 - 1 as a JSON number, not a double)
        r = client.post("/search", json={"query": "cat", "k": 10})
        assert r.status_code == 200
        hits = json.loads(r.text)["results"]
        assert {h["id"]: h["metadata"] for h in hits} == expected
        assert '"n":9223372036854775807' in r.text.replace(" ", "")
        # beyond the filter's number bound: the filter is refused (422), never a 500
        check_error(client.post("/search", json={"query": "cat", "filter": {"n": 2**63 - 1}}), 422, "invalid_input")
