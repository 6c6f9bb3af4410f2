"""`indexer build` and `indexer add` turn their flags into the pipeline's BuildOptions: every flag lands in
its field, and the defaults are the CLI's (not BuildOptions' own) where the two differ. In process, with
the pipeline's run replaced by a recorder: no model, no index."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import indexer.pipeline
from indexer.cli import app
from indexer.pipeline import BuildOptions, BuildResult


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[BuildOptions, bool]]:
    seen: list[tuple[BuildOptions, bool]] = []

    def record(opts: BuildOptions, incremental: bool = False, **_: Any) -> BuildResult:
        seen.append((opts, incremental))
        return BuildResult(version="v000001", count=1)

    monkeypatch.setattr(indexer.pipeline, "run_build", record)
    return seen


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": "a", "text": "a sentence"}\n', encoding="utf-8")
    return path


def invoke(*args: str) -> None:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    assert "published v000001" in result.output


def test_build_defaults(runs, corpus, tmp_path):
    invoke("build", "--input", str(corpus), "--output", str(tmp_path / "idx"))
    assert runs == [
        (
            BuildOptions(
                inputs=[corpus],
                output=tmp_path / "idx",
                backend="onnx-int8",  # the CLI's default; BuildOptions' own is torch
                max_chars=20_000,
                segment_rows=1_000_000,
            ),
            False,
        )
    ]


def test_build_every_flag_lands_in_its_field(runs, corpus, tmp_path):
    invoke(
        "build",
        *("--input", str(corpus), "--input", str(corpus), "--output", str(tmp_path / "idx")),
        *("--model", "some/model", "--pooling", "cls", "--backend", "torch", "--index-type", "hnsw"),
        *("--index-param", "M=8", "--index-param", "ef_search=32", "--batch-size", "7", "--max-seq-length", "64"),
        *("--text-field", "body", "--id-field", "key", "--split-sentences", "--max-chars", "500"),
        *("--max-rejects", "3", "--on-duplicate", "keep-last", "--resume", "--keep", "2", "--chunk-size", "9"),
        *("--segment-rows", "11", "--no-progress", "--shards", "4"),
    )
    assert runs == [
        (
            BuildOptions(
                inputs=[corpus, corpus],
                output=tmp_path / "idx",
                model="some/model",
                pooling="cls",
                backend="torch",
                index_type="hnsw",
                index_params={"M": "8", "ef_search": "32"},
                batch_size=7,
                max_seq_length=64,
                text_field="body",
                id_field="key",
                split_sentences=True,
                max_chars=500,
                max_rejects="3",
                on_duplicate="keep-last",
                resume=True,
                keep=2,
                chunk_size=9,
                segment_rows=11,
                progress=False,
                shards=4,
            ),
            False,
        )
    ]


def test_add_defaults(runs, corpus, tmp_path):
    invoke("add", "--input", str(corpus), "--index", str(tmp_path / "idx"))
    # model, pooling, backend and index type are the index's: add passes none of them
    assert runs == [
        (BuildOptions(inputs=[corpus], output=tmp_path / "idx", max_chars=20_000, on_duplicate="keep-last"), True)
    ]


def test_add_every_flag_lands_in_its_field(runs, corpus, tmp_path):
    invoke(
        "add",
        *("--input", str(corpus), "--index", str(tmp_path / "idx"), "--batch-size", "5", "--text-field", "body"),
        *("--id-field", "key", "--split-sentences", "--max-chars", "300", "--max-rejects", "2%"),
        *("--on-duplicate", "error", "--resume", "--keep", "3", "--no-merge", "--no-progress"),
    )
    assert runs == [
        (
            BuildOptions(
                inputs=[corpus],
                output=tmp_path / "idx",
                batch_size=5,
                text_field="body",
                id_field="key",
                split_sentences=True,
                max_chars=300,
                max_rejects="2%",
                on_duplicate="error",
                resume=True,
                keep=3,
                merge=False,
                progress=False,
            ),
            True,
        )
    ]


def test_a_missing_input_is_one_clear_error_before_any_run(runs, tmp_path):
    result = CliRunner().invoke(app, ["add", "--input", str(tmp_path / "nope.jsonl"), "--index", str(tmp_path)])
    assert result.exit_code != 0
    assert isinstance(result.exception, Exception) and "no such file" in str(result.exception)
    assert runs == []
