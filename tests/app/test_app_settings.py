"""Settings (one pydantic-settings class, SEMSEARCH_* env), the CLI built from it, and startup refusals."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from app.__main__ import build_parser, main, parse_settings
from app.main import create_app
from app.settings import ConfigError, Settings, get_settings, load_settings
from semsearch.models.source import resolve_model

pytest_plugins = ["app_fixtures"]
pytestmark = pytest.mark.usefixtures("app_clean_env")


def test_environment_variables_configure_everything(app_index: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEMSEARCH_INDEX", str(app_index))
    monkeypatch.setenv("SEMSEARCH_MAX_K", "7")
    monkeypatch.setenv("SEMSEARCH_API_KEY", "s3cret-key")
    monkeypatch.setenv("SEMSEARCH_CORS_ORIGINS", "http://a.example, https://b.example")
    monkeypatch.setenv("SEMSEARCH_BATCH_WINDOW_MS", "0")
    monkeypatch.setenv("SEMSEARCH_BACKEND", "torch")
    s = Settings()  # type: ignore[call-arg]
    assert s.index == app_index.resolve() and s.max_k == 7 and s.batch_window_ms == 0
    assert s.cors_origins == ["http://a.example", "https://b.example"]
    assert s.api_key_bytes() == b"s3cret-key"
    assert "s3cret" not in repr(s) and "s3cret" not in str(s.model_dump())
    get_settings.cache_clear()
    try:
        assert get_settings() is get_settings()
        assert create_app().state.settings.max_k == 7  # what `uvicorn --factory app.main:create_app` does
    finally:
        get_settings.cache_clear()


def test_defaults(app_index: Path) -> None:
    s = Settings(index=app_index)
    assert (s.host, s.port, s.max_k, s.max_batch, s.batch_window_ms, s.reload_poll_s) == (
        "127.0.0.1",
        8000,
        100,
        32,
        0.0,
        2.0,
    )
    assert s.api_key is None and s.reranker is None and s.cors_origins == [] and s.threads >= 1
    assert (s.onnx_spinning, s.reranker_backend, s.retrieval_weight) == (False, "auto", None)
    assert Settings(index=app_index, api_key="").api_key is None  # empty means unset (compose's ${VAR:-})


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"index": None}, ["SEMSEARCH_INDEX / --index", "required"]),
        ({"index": "/does/not/exist"}, ["SEMSEARCH_INDEX", "does not exist", "python -m indexer build"]),
        ({"max_k": 0}, ["SEMSEARCH_MAX_K / --max-k"]),
        ({"backend": "tensorflow"}, ["SEMSEARCH_BACKEND", "onnx-int8"]),
        ({"cors_origins": "ftp://x"}, ["SEMSEARCH_CORS_ORIGINS", "http://"]),
        ({"reranker": "./no/such/folder"}, ["SEMSEARCH_RERANKER", "make reranker"]),
        ({"batch_window_ms": -1}, ["SEMSEARCH_BATCH_WINDOW_MS"]),
    ],
)
def test_invalid_settings_fail_fast_with_a_helpful_message(
    app_index: Path, overrides: dict[str, object], expected: list[str]
) -> None:
    values = {k: v for k, v in {"index": app_index, **overrides}.items() if v is not None}
    with pytest.raises(ConfigError) as info:
        load_settings(**values)
    for text in expected:
        assert text in str(info.value)


def test_an_empty_directory_is_not_an_index(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no published index"):
        load_settings(index=tmp_path)


def test_cli_flags_map_to_settings_and_win_over_env(app_index: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEMSEARCH_MAX_K", "9")
    monkeypatch.setenv("SEMSEARCH_PORT", "9999")
    s = parse_settings(["--index", str(app_index), "--threads", "3", "--max-k", "5", "--no-access-log"])
    assert (s.threads, s.max_k, s.port, s.access_log) == (3, 5, 9999, False)
    help_text = build_parser().format_help()
    for flag in (
        "--index",
        "--threads",
        "--reranker",
        "SEMSEARCH_MAX_QUEUE",
        "--api-key",
        "--cors-origins",
    ):
        assert flag in help_text


FORMAT1_INDEX = Path(__file__).resolve().parents[1] / "fixtures" / "format1_index"


@pytest.fixture
def renames_unwarned(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each deprecated name warns once per process: start these tests with none warned yet."""
    from semsearch import runtime

    monkeypatch.setattr(runtime, "_warned_renames", set())


RENAMES = [
    pytest.param("reranker_weight", "retrieval_weight", "0.7", 0.7, id="reranker_weight"),
    pytest.param("workers_threads", "threads", "3", 3, id="workers_threads"),
]


@pytest.mark.usefixtures("renames_unwarned")
@pytest.mark.parametrize(("old", "new", "raw", "value"), RENAMES)
def test_deprecated_variable_still_sets_the_renamed_setting(
    old: str, new: str, raw: str, value: object, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(f"SEMSEARCH_{old.upper()}", raw)
    with caplog.at_level(logging.WARNING):
        assert getattr(Settings(index=FORMAT1_INDEX), new) == value
    assert f"SEMSEARCH_{old.upper()} is deprecated" in caplog.text and f"SEMSEARCH_{new.upper()}" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert getattr(Settings(index=FORMAT1_INDEX), new) == value
    assert "deprecated" not in caplog.text  # once per process
    monkeypatch.setenv(f"SEMSEARCH_{new.upper()}", "1")
    assert getattr(Settings(index=FORMAT1_INDEX), new) == 1  # the new name wins


@pytest.mark.usefixtures("renames_unwarned")
@pytest.mark.parametrize(("old", "new", "raw", "value"), RENAMES)
def test_deprecated_flag_still_sets_the_renamed_setting(
    old: str, new: str, raw: str, value: object, caplog: pytest.LogCaptureFixture
) -> None:
    old_flag, new_flag = "--" + old.replace("_", "-"), "--" + new.replace("_", "-")
    with caplog.at_level(logging.WARNING):
        s = parse_settings(["--index", str(FORMAT1_INDEX), old_flag, raw])
    assert getattr(s, new) == value
    assert f"{old_flag} is deprecated" in caplog.text and new_flag in caplog.text
    assert getattr(parse_settings(["--index", str(FORMAT1_INDEX), new_flag, raw]), new) == value
    help_text = build_parser().format_help()
    assert new_flag in help_text and old_flag not in help_text


def test_cli_bad_arguments_exit_2(app_index: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_settings(["--index", str(app_index), "--max-k", "lots"])
    assert info.value.code == 2
    assert "SEMSEARCH_MAX_K / --max-k" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        parse_settings(["--index", str(app_index), "--backend", "jax"])
    assert info.value.code == 2


@pytest.mark.parametrize(
    ("key", "why"),
    [
        (" ", "is blank (only whitespace), which would serve without authentication"),
        ("\t \n", "is blank"),
        (" s3cret-key", "holds whitespace at position 0"),
        ("s3cret key", "holds whitespace at position 6"),
        ("cl\u00e9-secr\u00e8te", "holds a non-ASCII character at position 2"),
        ("s3cret\x7f", "holds a non-ASCII character at position 6"),
    ],
)
def test_a_blank_or_unsendable_api_key_refuses_to_start(app_index: Path, key: str, why: str) -> None:
    """Before: `--api-key " "` served without authentication and without a word, and a non-ASCII key
    started a service that no HTTP client could authenticate to. Now `python -m app` exits 2 before
    loading anything, with one error line naming the variable, the flag and why (never the key)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("SEMSEARCH_")}
    for args, extra_env in (
        (["--api-key", key], {}),
        ([], {"SEMSEARCH_API_KEY": key}),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "app", "--index", str(app_index), "--port", "0", *args],
            env={**env, **extra_env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        errors = [line for line in done.stderr.splitlines() if "SEMSEARCH_API_KEY" in line]
        assert len(errors) == 1 and errors[0].strip().startswith("SEMSEARCH_API_KEY / --api-key: " + why), done.stderr
        assert "Traceback" not in done.stderr and "semsearch serving" not in done.stdout + done.stderr
        if key.strip():
            assert key.strip() not in done.stderr  # the key itself is never printed
    assert Settings(index=app_index, api_key="s3cret-key_0123~!").api_key is not None  # printable ASCII is fine


def test_startup_refuses_a_model_that_is_not_the_index_model(
    app_index: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SEMSEARCH_MODEL naming another model: `python -m app` exits 1 naming both models."""
    packaged = resolve_model(None).path
    other = tmp_path / "other-model"
    other.mkdir()
    for f in packaged.iterdir():
        if f.name != "config.json":
            (other / f.name).symlink_to(f)
    config = json.loads((packaged / "config.json").read_text())
    config["semsearch_test_variant"] = True  # a different fingerprint, same architecture
    (other / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.ERROR):
        status = main(["--index", str(app_index), "--model", str(other), "--port", "0"])
    assert status == 1
    assert "sentence-transformers/all-MiniLM-L6-v2" in caplog.text and str(other) in caplog.text
