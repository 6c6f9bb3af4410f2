"""The indexer CLI as operators run it: exit codes 0/1/2, info --json, search, a clear one-line error."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from conftest import REPO


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "indexer", *args], cwd=REPO, capture_output=True, text=True)


def test_info_json_has_the_contract_fields(small_index):
    res = run("info", "--index", str(small_index), "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert {k: info[k] for k in ("count", "model", "pooling", "index_type", "version")} == {
        "count": 300,
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "pooling": "mean",
        "index_type": "flat",
        "version": "v000001",
    }


def test_search_prints_ranked_results(small_index):
    res = run("search", "a large wild cat", "--index", str(small_index), "-k", "3", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert len(out["results"]) == 3 and out["index_version"] == "v000001"
    scores = [r["score"] for r in out["results"]]
    assert scores == sorted(scores, reverse=True)


def test_search_uses_the_services_modes_and_filters(small_index):
    """`indexer search` goes through semsearch.search.modes.search: the same results as the core call."""
    from semsearch.search.modes import search
    from semsearch.search.reader import SearchIndex

    spec = {"lexname": "noun.act"}
    res = run("search", "the act of making", "--index", str(small_index), "-k", "5", "--mode", "lexical",
              "--filter", json.dumps(spec), "--json")  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    idx = SearchIndex.load(small_index)
    try:
        expected = search(idx, ["the act of making"], None, 5, "lexical", spec)[0]
    finally:
        idx.close()
    assert out["mode"] == "lexical" and expected
    assert [r["id"] for r in out["results"]] == [h.id for h in expected]
    assert all(r["metadata"]["lexname"] == "noun.act" and r["lexical_score"] == r["score"] for r in out["results"])
    bad = run("search", "x", "--index", str(small_index), "--filter", "{not json")
    assert bad.returncode == 2 and "not valid JSON" in bad.stderr


def test_usage_errors_exit_2(tmp_path):
    res = run("build", "--input", "x.txt", "--output", str(tmp_path), "--pooling", "max")
    assert res.returncode == 2
    message = " ".join(re.sub(r"[│╭╮╰╯─]", " ", res.stderr).split())  # typer draws the error in a box
    # (typer 0.29 passes pydantic's "Value error, " prefix through for Literal choices)
    assert re.search(r"Invalid value for '--pooling': (Value error, )?'max' is not one of 'mean', 'cls'\.", message), (
        res.stderr
    )


def test_data_errors_exit_1_with_one_clear_line(tmp_path):
    bad = tmp_path / "corpus.parquet"
    bad.write_text("x")
    res = run("build", "--input", str(bad), "--output", str(tmp_path / "idx"), "--no-progress")
    assert res.returncode == 1
    assert "error: cannot tell the format of" in res.stderr
    assert "Traceback" not in res.stderr
    res = run("info", "--index", str(tmp_path / "nothing-here"))
    assert res.returncode == 1 and "does not exist" in res.stderr
