"""Issue 20 through the real CLI: ids are exact and automatic ids never collide with a user's (items 1
and 4), `build --output` never touches a directory that is not an index and garbage collection only
removes the writer's own segments (item 3), and an error mid-operation is one `error:` line with the
staging removed and the current version untouched (item 6)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, write_jsonl

from semsearch.index.layout import IndexRoot
from semsearch.search.reader import SearchIndex

BASE_ROWS = [
    {"id": 3, "text": "user row three about a lion"},
    {"id": 4, "text": "user row four about a spoon"},
    {"text": "a row without an id about rivers"},  # internal id 2: automatic id 2
    {"id": " 3", "text": "a string id with a leading space"},
]


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "indexer", *args], cwd=REPO, capture_output=True, text=True, input=stdin
    )


def assert_one_error_line(res: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert res.returncode == 1, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr and "Aborted" not in res.stderr, res.stderr
    lines = [line for line in res.stderr.split("\n") if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr[-800:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def live(root: Path) -> dict[int | str, str]:
    idx = SearchIndex.load(root)
    try:
        return {d.id: d.text for d in idx.iter_docs()}
    finally:
        idx.close()


def rejects(root: Path) -> list[dict]:
    return [json.loads(line) for f in sorted((root / "rejects").glob("*.jsonl")) for line in f.open()]


@pytest.fixture(scope="module")
def base_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("ids")
    root = tmp / "idx"
    res = run("build", "--input", str(write_jsonl(tmp / "base.jsonl", BASE_ROWS)), "--output", str(root),
              "--backend", "torch", "--no-progress")  # fmt: skip
    assert res.returncode == 0, res.stderr
    return root


@pytest.fixture
def index(base_index: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "idx"
    shutil.copytree(base_index, copy, symlinks=True)
    return copy


def test_base_index_keeps_each_ids_type_and_text(base_index: Path) -> None:
    assert live(base_index) == {3: BASE_ROWS[0]["text"], 4: BASE_ROWS[1]["text"], 2: BASE_ROWS[2]["text"],
                                " 3": BASE_ROWS[3]["text"]}  # fmt: skip


def test_build_of_a_mixed_file_rejects_the_collision_naming_the_real_id(tmp_path: Path) -> None:
    """Was: `error: duplicate id None` (the second row's automatic id 1 equals the first row's id). Now the
    row without an id gets a spare number, and a user's row that names a live automatic id is rejected
    with that id in the reason."""
    rows = [{"id": 1, "text": "a user row about cats"}, {"text": "a row without an id about dogs"},
            {"text": "a third row about birds"}, {"id": 2, "text": "names the automatic id 2"}]  # fmt: skip
    root = tmp_path / "idx"
    res = run("build", "--input", str(write_jsonl(tmp_path / "mixed.jsonl", rows)), "--output", str(root),
              "--backend", "torch", "--no-progress")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "1 rows rejected" in res.stdout, res.stdout
    assert live(root) == {1: rows[0]["text"], 4: rows[1]["text"], 2: rows[2]["text"]}
    (reject,) = rejects(root)
    assert reject["line"] == 4 and "id 2 is the automatic id of a row given without an id" in reject["reason"]


def test_add_never_lets_an_automatic_id_replace_a_user_row_or_change_an_ids_type(index: Path, tmp_path: Path) -> None:
    """Was: exit 0 and the user's rows 3 and 4 silently replaced (add is keep-last)."""
    rows = [
        {"text": "a new row without an id"},  # internal id 4, but 4 is the user's id: a spare number instead
        {"id": 2, "text": "tries to replace the automatic id 2"},
        {"id": "3", "text": "the id 3 written as a string"},  # the user's 3 is an integer
        {"id": 7, "text": "a plain new user row"},
    ]
    res = run("add", "--input", str(write_jsonl(tmp_path / "add.jsonl", rows)), "--index", str(index),
              "--max-rejects", "10", "--no-progress")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "2 rows rejected" in res.stdout and "removed" not in res.stdout, res.stdout
    after = live(index)
    (auto,) = [i for i, text in after.items() if text == rows[0]["text"]]
    assert isinstance(auto, int) and auto not in (2, 3, 4, 7)  # internal ids 4..7 are taken: 8
    assert after == {3: BASE_ROWS[0]["text"], 4: BASE_ROWS[1]["text"], 2: BASE_ROWS[2]["text"],
                     " 3": BASE_ROWS[3]["text"], 7: rows[3]["text"], auto: rows[0]["text"]}  # fmt: skip
    reasons = {r["line"]: r["reason"] for r in rejects(index)}
    assert 1 not in reasons
    assert "id 2 is the automatic id of a row given without an id" in reasons[2]
    assert "id '3' is a string here but an integer" in reasons[3]


def test_split_sentences_without_ids_never_replace_an_earlier_adds_sentences(index: Path, tmp_path: Path) -> None:
    """Was: every add numbered id-less documents doc1, doc2, ... again, so the second add replaced the first's."""
    texts = ["First add opens here. First add closes here.", "Second add opens here. Second add closes here."]
    for n, text in enumerate(texts):
        path = write_jsonl(tmp_path / f"doc{n}.jsonl", [{"text": text}])
        res = run("add", "--input", str(path), "--index", str(index), "--split-sentences", "--no-progress")
        assert res.returncode == 0, res.stderr
        assert "removed" not in res.stdout, res.stdout
    idx = SearchIndex.load(index)
    try:
        docs = [d for d in idx.iter_docs() if "add" in d.text]
    finally:
        idx.close()
    assert sorted(d.text for d in docs) == sorted(
        ["First add opens here.", "First add closes here.", "Second add opens here.", "Second add closes here."]
    )
    by_doc: dict[str | None, list] = {}
    for d in docs:
        by_doc.setdefault(d.doc_id, []).append(d)
    assert len(by_doc) == 2  # each document has its own doc_id (a number unique in the index)
    assert all(len(sentences) == 2 and isinstance(s.id, int) for sentences in by_doc.values() for s in sentences)
    # the first add's first sentence would have had the automatic id 4: the user's row 4 keeps it
    assert live(index)[4] == BASE_ROWS[1]["text"]


def test_delete_ids_are_exact(index: Path) -> None:
    """Was: `--ids " 3"` was stripped and deleted the row whose id is 3."""
    res = run("delete", "--index", str(index), "--ids", " 3")
    assert res.returncode == 0, res.stderr
    after = live(index)
    assert " 3" not in after and after[3] == BASE_ROWS[0]["text"]
    res = run("delete", "--index", str(index), "--ids", "4")  # the integer 4, written on the command line
    assert res.returncode == 0, res.stderr
    assert 4 not in live(index)


def test_delete_with_no_ids_publishes_nothing(index: Path, tmp_path: Path) -> None:
    """Was: `delete --ids ''` published an empty new version."""
    before = IndexRoot(index).versions()
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    for args in (["--ids", ""], ["--ids", "3,,4"], ["--ids-file", str(empty)]):
        res = run("delete", "--index", str(index), *args)
        assert_one_error_line(res, "nothing was changed")
    res = run("delete", "--index", str(index), "--ids", "nope", "--missing-ok")
    assert res.returncode == 0 and "nothing to delete" in res.stdout, res.stdout + res.stderr
    assert IndexRoot(index).versions() == before
    assert not (index / "staging").exists()


def test_delete_ids_file_takes_100k_exact_ids(index: Path, tmp_path: Path) -> None:
    ids = [f"missing-{n}" for n in range(99_998)] + ["4", " 3"]
    path = tmp_path / "ids.txt"
    path.write_bytes(b"".join(i.encode() + (b"\r\n" if n % 2 else b"\n") for n, i in enumerate(ids)))
    missing = run("delete", "--index", str(index), "--ids-file", str(path))
    assert_one_error_line(missing, "99998 id(s) not in the index", "'missing-0'", "nothing was changed")
    res = run("delete", "--index", str(index), "--ids-file", str(path), "--missing-ok")
    assert res.returncode == 0, res.stderr
    assert live(index) == {3: BASE_ROWS[0]["text"], 2: BASE_ROWS[2]["text"]}
    res = run("delete", "--index", str(index), "--ids-file", "-", stdin="3\n")
    assert res.returncode == 0, res.stderr
    assert live(index) == {2: BASE_ROWS[2]["text"]}
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"2\n\xff\n")
    assert_one_error_line(run("delete", "--index", str(index), "--ids-file", str(bad)), f"{bad}:2", "UTF-8")


def test_build_refuses_a_directory_that_is_not_an_index(tmp_path: Path) -> None:
    """Was: the build went ahead and its garbage collection deleted the user's files under segments/."""
    out = tmp_path / "mine"
    (out / "segments" / "photos").mkdir(parents=True)
    (out / "segments" / "photos" / "cat.jpg").write_bytes(b"jpeg")
    (out / "segments" / "notes.txt").write_text("mine")
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": "a lion"}])
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    res = run("build", "--input", str(corpus), "--output", str(out), "--backend", "torch", "--no-progress")
    assert_one_error_line(res, str(out), "not a semsearch index")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before


def test_garbage_collection_removes_only_the_writers_own_segments(index: Path) -> None:
    """Was: every entry of segments/ that no version listed was deleted, a user's file or folder included."""
    segments = index / "segments"
    (segments / "notes.txt").write_text("mine")
    (segments / "photos").mkdir()
    (segments / "photos" / "cat.jpg").write_bytes(b"jpeg")
    (segments / "s20200101000000-deadbeef").mkdir()  # named like a segment, but not one (no segment.json)
    (segments / "s20200101000000-deadbeef" / "data.bin").write_bytes(b"x")
    real = next(p for p in segments.iterdir() if (p / "segment.json").is_file())
    orphan = segments / "s20200101000001-0badf00d"  # a crash left a real segment no version lists
    shutil.copytree(real, orphan)
    res = run("delete", "--index", str(index), "--ids", "4", "--keep", "1")
    assert res.returncode == 0, res.stderr
    assert (segments / "notes.txt").read_text() == "mine"
    assert (segments / "photos" / "cat.jpg").read_bytes() == b"jpeg"
    assert (segments / "s20200101000000-deadbeef" / "data.bin").is_file()
    assert not orphan.exists()


def _truncated_gz(tmp_path: Path) -> Path:
    rows = [{"id": f"r{n}", "text": f"row {n} " + os.urandom(24).hex()} for n in range(3000)]
    path = tmp_path / "cut.jsonl.gz"
    data = gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())
    path.write_bytes(data[: len(data) // 2])
    return path


def _corrupt_gz(tmp_path: Path) -> Path:
    rows = [{"id": f"c{n}", "text": f"row {n} " + os.urandom(24).hex()} for n in range(3000)]
    data = bytearray(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    data[len(data) // 2 : len(data) // 2 + 64] = b"\x00" * 64
    path = tmp_path / "corrupt.jsonl.gz"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("make", [_truncated_gz, _corrupt_gz])
def test_a_broken_gz_mid_add_is_one_error_line_and_no_staging(index: Path, tmp_path: Path, make) -> None:
    """Was: a truncated .gz printed only `Aborted!` (a corrupt one a zlib traceback) and left staging/."""
    path = make(tmp_path)
    version = IndexRoot(index).current_version()
    res = run("add", "--input", str(path), "--index", str(index), "--no-progress")
    assert_one_error_line(res, str(path))
    assert not (index / "staging").exists()
    assert IndexRoot(index).current_version() == version and len(live(index)) == len(BASE_ROWS)


def test_a_broken_gz_mid_build_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "idx"
    res = run("build", "--input", str(_truncated_gz(tmp_path)), "--output", str(root), "--backend", "torch",
              "--no-progress")  # fmt: skip
    assert_one_error_line(res, "cut.jsonl.gz", "is truncated", "after line")
    assert not (root / "staging").exists() and IndexRoot(root).current_version() is None


@pytest.mark.parametrize(
    "spec",
    [
        '{"a": ' * 1000 + "1" + "}" * 1000,  # 1,000 levels
        '{"a": {"in": [' + "[" * 1000 + "]" * 1000 + "]}}",
        '{"a": ' + "9" * 5000 + "}",  # beyond Python's 4300-digit int parsing limit
    ],
)
def test_search_filter_deep_or_odd_json_is_a_usage_error_not_a_traceback(base_index: Path, spec: str) -> None:
    res = run("search", "lion", "--index", str(base_index), "--mode", "lexical", "--filter", spec)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and "--filter" in res.stderr


def test_search_filter_of_100kb_is_one_error_line(base_index: Path) -> None:
    spec = json.dumps({"a": {"in": list(range(20_000))}})  # ~120 KB: about the most one argv string holds
    res = run("search", "lion", "--index", str(base_index), "--mode", "lexical", "--filter", spec)
    assert_one_error_line(res)
