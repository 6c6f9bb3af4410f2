"""Scoped keys without a server (issue 23): the route -> scope map, the token bucket, the keys file and its
reload, the audit counts, and ``python -m app.keys`` (fast tier)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from app.audit import body_counts
from app.keys import KeyFileError, KeyRing, TokenBucket, hash_key, main, read_keys_file
from app.security import Access, required_access

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("method", "path", "access"),
    [
        ("GET", "/health", None),
        ("GET", "/static/app.js", None),
        ("GET", "/search", Access("read", "cat")),
        ("POST", "/search/batch", Access("read", "cat")),
        ("POST", "/embed", Access("read", "cat")),
        ("POST", "/rerank", Access("read", "cat")),
        ("POST", "/v1/embeddings", Access("read", "cat")),
        ("POST", "/v2/rerank", Access("read", "cat")),
        ("GET", "/info", Access("read", "cat")),
        ("GET", "/documents/a%2Fb", Access("read", "cat")),
        ("HEAD", "/documents/7", Access("read", "cat")),
        ("POST", "/documents", Access("write", "cat")),
        ("POST", "/documents/delete", Access("write", "cat")),
        ("DELETE", "/documents/7", Access("write", "cat")),
        ("POST", "/admin/reload", Access("admin", "cat")),
        ("GET", "/collections", Access(None, None)),
        ("GET", "/collections/help", Access("read", "help")),
        ("PUT", "/collections/help", Access("admin", "help")),
        ("DELETE", "/collections/help", Access("admin", "help")),
        ("POST", "/collections/help/snapshots", Access("admin", "help")),
        ("GET", "/collections/help/snapshots", Access("admin", "help")),
        ("GET", "/collections/help/snapshots/x.tar", Access("admin", "help")),
        ("POST", "/collections/help/search", Access("read", "help")),
        ("POST", "/collections/help/documents", Access("write", "help")),
        ("DELETE", "/collections/help/documents/1", Access("write", "help")),
        ("GET", "/collections/help/documents/1", Access("read", "help")),
        ("GET", "/no/such/route", Access("read", "cat")),
    ],
)
def test_every_route_maps_to_a_scope_and_a_collection(method: str, path: str, access: Access | None) -> None:
    assert required_access(method, path, "cat") == access


def test_the_token_bucket_allows_its_burst_then_its_rate() -> None:
    bucket = TokenBucket(rate=2.0, capacity=3, stamp=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) == pytest.approx(0.5)  # one token comes back in 1/rate s
    assert bucket.take(100.5) == 0.0
    assert bucket.take(100.5) > 0
    assert bucket.take(110.0) == 0.0 and bucket.tokens == pytest.approx(2.0)  # refilled to capacity, not beyond


def _keys(path: Path, *entries: dict[str, object]) -> Path:
    path.write_text(json.dumps({"keys": list(entries)}), encoding="utf-8")
    return path


def _entry(name: str, secret: str, **more: object) -> dict[str, object]:
    return {"name": name, "hash": hash_key(secret), "scopes": ["read"], "collections": ["*"], **more}


def test_the_keys_file_is_checked_strictly_with_one_line(tmp_path: Path) -> None:
    bad = {
        "not json": "{",
        "unknown field": json.dumps({"keys": [{**_entry("a", "s"), "scope": ["admin"]}]}),
        "bad scope": json.dumps({"keys": [_entry("a", "s", scopes=["root"])]}),
        "no collections": json.dumps({"keys": [_entry("a", "s", collections=[])]}),
        "a key, not a hash": json.dumps({"keys": [_entry("a", "s", hash="sk-plain-secret")]}),
        "same name": json.dumps({"keys": [_entry("a", "s"), _entry("a", "t")]}),
        "same hash": json.dumps({"keys": [_entry("a", "s"), _entry("b", "s")]}),
        "bad rate": json.dumps({"keys": [_entry("a", "s", rate_limit={"per_second": 0})]}),
    }
    for what, text in bad.items():
        path = tmp_path / "keys.json"
        path.write_text(text)
        with pytest.raises(KeyFileError) as caught:
            read_keys_file(path)
        message = str(caught.value)
        assert message.startswith(f"keys file {path}") and "\n" not in message, (what, message)
        assert "sk-plain-secret" not in message
    with pytest.raises(KeyFileError, match="No such file"):
        read_keys_file(tmp_path / "missing.json")


def test_a_reload_swaps_the_keys_and_a_broken_file_keeps_the_old_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _keys(tmp_path / "keys.json", _entry("a", "secret-a", rate_limit={"per_second": 1, "burst": 1}))
    ring = KeyRing(path)
    assert ring.match(b"secret-a") is not None and ring.match(b"secret-b") is None
    principal = ring.match(b"secret-a")
    assert principal is not None and ring.throttle(principal) == 0 and ring.throttle(principal) > 0
    _keys(path, _entry("a", "secret-a", rate_limit={"per_second": 1, "burst": 1}), _entry("b", "secret-b"))
    assert ring.reload()
    assert ring.match(b"secret-b") is not None
    assert ring.throttle(principal) > 0  # the same limit: its bucket was kept, a reload is no reset
    path.write_text("{ broken")
    with caplog.at_level(logging.ERROR, logger="app.keys"):
        assert not ring.reload()
        assert not ring.reload()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "still using the 2 keys" in errors[0].getMessage()
    assert ring.match(b"secret-a") is not None and ring.match(b"secret-b") is not None


def test_the_keys_cli_prints_the_secret_once_and_stores_its_hash(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    run = [sys.executable, "-m", "app.keys"]
    out = subprocess.run(
        [*run, "add", "--file", str(path), "--name", "ingest", "--scopes", "read,write", "--collections", "a,b"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    secret = out.stdout.strip()
    assert secret.startswith("sk-semsearch-") and len(secret) > 40 and "added key 'ingest'" in out.stderr
    text = path.read_text()
    assert secret not in text and hash_key(secret) in text
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    entry = json.loads(text)["keys"][0]
    assert entry["scopes"] == ["read", "write"] and entry["collections"] == ["a", "b"]
    ring = KeyRing(path)
    found = ring.match(secret.encode())
    assert found is not None and found.name == "ingest"
    # a second key, a duplicate name refused (exit 2, the file unchanged), list, remove
    assert main(["add", "--file", str(path), "--name", "admin", "--scopes", "admin", "--rate", "5"]) == 0
    before = path.read_text()
    dup = subprocess.run(
        [*run, "add", "--file", str(path), "--name", "admin", "--scopes", "read"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert dup.returncode == 2 and "same name admin" in dup.stderr and path.read_text() == before
    bad = subprocess.run(
        [*run, "add", "--file", str(path), "--name", "x", "--scopes", "root"], cwd=REPO, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "scopes" in bad.stderr
    listed = subprocess.run([*run, "list", "--file", str(path)], cwd=REPO, capture_output=True, text=True, check=True)
    assert listed.stdout.splitlines() == ["ingest\tread,write\ta,b\tno limit", "admin\tadmin\t*\t5/s burst 5"]
    assert "sha256" not in listed.stdout
    assert main(["remove", "--file", str(path), "--name", "ingest"]) == 0
    assert [e["name"] for e in json.loads(path.read_text())["keys"]] == ["admin"]


def test_audit_counts_are_list_lengths_never_text() -> None:
    assert body_counts(b'{"documents": [{"id": 1, "text": "secret"}, {"text": "x"}]}') == {"documents": 2}
    assert body_counts(b'{"ids": ["a", "b", "c"]}') == {"ids": 3}
    assert body_counts(b"[1, 2]") == {"items": 2}
    assert body_counts(b"not json") == {} and body_counts(b"") == {}
