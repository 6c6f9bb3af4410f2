"""The indexer CLI as a newcomer meets it (issue 13, finding 7): one `error:` line on its own line and
never a traceback, a default reject budget that lets a small file skip a bad row, a blank query refused
as the service refuses it, and a one-off search that prints only its answer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO, write_jsonl


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "indexer", *args], cwd=REPO, capture_output=True, text=True)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.replace("\r", "\n").split("\n") if "error:" in line]


def assert_one_error_line(res: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    # the error starts its own line: a progress bar never leaves the cursor before it
    raw_lines = [line for line in res.stderr.split("\n") if "error:" in line]
    assert len(raw_lines) == 1 and raw_lines[0].startswith("error:"), repr(res.stderr[-600:])
    for needle in needles:
        assert needle in raw_lines[0], raw_lines[0]
    return raw_lines[0]


def test_missing_or_unreadable_input_is_one_error_line(tmp_path: Path) -> None:
    missing = tmp_path / "missing.jsonl"
    for command in (["build", "--output", str(tmp_path / "idx")], ["add", "--index", str(tmp_path / "idx")]):
        res = run(*command, "--input", str(missing))
        assert_one_error_line(res, str(missing), "no such file")
    res = run("build", "--input", str(tmp_path), "--output", str(tmp_path / "idx"))  # a directory
    assert_one_error_line(res, "not a file")


def test_default_max_rejects_lets_a_small_file_skip_one_bad_row(tmp_path: Path) -> None:
    rows = [{"id": str(i), "text": f"sentence number {i} about cats"} for i in range(9)] + [{"id": "x", "text": ""}]
    res = run(
        "build", "--input", str(write_jsonl(tmp_path / "ten.jsonl", rows)), "--output", str(tmp_path / "a"),
        "--backend", "torch", "--no-progress",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "9 rows indexed" in res.stdout and "1 rows rejected" in res.stdout, res.stdout


def test_too_many_rejects_names_the_flag_to_pass(tmp_path: Path) -> None:
    rows = [{"id": str(i), "text": f"sentence {i}"} for i in range(8)] + [{"id": "x", "text": ""}, {"text": 5}]
    res = run(
        "build", "--input", str(write_jsonl(tmp_path / "ten.jsonl", rows)), "--output", str(tmp_path / "a"),
        "--backend", "torch",
    )  # fmt: skip
    assert_one_error_line(res, "2 of 10 rows rejected", "pass --max-rejects 2")
    assert not (tmp_path / "a" / "current").exists()


def test_error_is_not_printed_onto_the_progress_bar_line(tmp_path: Path) -> None:
    dup = tmp_path / "dup.jsonl"
    dup.write_text(json.dumps({"id": "a", "text": "one"}) + "\n" + json.dumps({"id": "a", "text": "two"}) + "\n")
    res = run("build", "--input", str(dup), "--output", str(tmp_path / "idx"), "--backend", "torch", "--progress")
    assert "indexing" in res.stderr  # the bar was drawn
    assert_one_error_line(res, "duplicate id 'a'")


def test_search_refuses_a_blank_query_like_the_service(small_index: Path) -> None:
    for query in ("", "   ", "\t\n"):
        res = run("search", query, "--index", str(small_index))
        assert res.returncode == 2, (query, res.stdout, res.stderr)
        assert "must not be empty or only whitespace" in res.stderr
        assert res.stdout == ""


def test_search_refuses_undecodable_argv_bytes(small_index: Path) -> None:
    """Bytes that are not UTF-8 arrive as lone surrogates (surrogateescape): refused, not a traceback."""
    res = subprocess.run(
        [sys.executable.encode(), b"-m", b"indexer", b"search", b"caf\xe9", b"--index", str(small_index).encode()],
        cwd=REPO,
        capture_output=True,
    )
    assert res.returncode == 2, res.stderr
    assert b"lone surrogate" in res.stderr and b"Traceback" not in res.stderr


def test_one_off_search_is_quiet_on_stderr(small_index: Path) -> None:
    res = run("search", "a large wild cat", "--index", str(small_index), "-k", "2")
    assert res.returncode == 0, res.stderr
    assert len(res.stdout.strip().splitlines()) == 2
    assert res.stderr == "", res.stderr  # no INFO lines, no "Loading weights" bar
    verbose = run("-v", "search", "a large wild cat", "--index", str(small_index), "-k", "1")
    assert "loaded index" in verbose.stderr  # -v still shows them
