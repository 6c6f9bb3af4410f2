"""Security checks (issue 13): the API key on every route but the public ones, compared in constant
time; admin routes refused without it; no pickle anywhere; CORS off by default; a body size limit; the
container runs as a non-root user with a read-only root filesystem (checked statically: no docker here).
The key never appearing in a real server's log is checked in ``test_app_hostile.py``."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from app.main import create_app
from app.security import PUBLIC_PATHS, is_public
from app.settings import Settings

pytest_plugins = ["app_fixtures"]

REPO = Path(__file__).resolve().parents[2]
KEY = "security-key-0123456789"
Check = Callable[..., dict[str, Any]]


@pytest.fixture(scope="module")
def keyed(app_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    with TestClient(create_app(app_settings(api_key=KEY)), raise_server_exceptions=False) as client:
        yield client


def operations(client: TestClient) -> list[tuple[str, str]]:
    doc = client.get("/openapi.json").json()
    ops = [(m.upper(), p) for p, item in doc["paths"].items() for m in item]
    assert len(ops) >= 10
    return ops


def test_every_route_but_the_public_ones_needs_the_key(keyed: TestClient, check_error: Check) -> None:
    extra = [("GET", "/nope"), ("POST", "/nope"), ("DELETE", "/search"), ("GET", "/admin/anything")]
    for method, path in [*operations(keyed), *extra]:
        for headers in (
            {},
            {"Authorization": f"Bearer {KEY}x"},
            {"Authorization": f"Basic {KEY}"},
            {"Authorization": KEY},
        ):
            r = keyed.request(method, path, headers=headers, json={})
            if is_public(path):
                assert r.status_code != 401, (method, path)
                continue
            if path.startswith(("/v1/", "/v2/")):  # the compatible routes answer in OpenAI's error shape
                assert r.status_code == 401, (method, path)
                assert r.json()["error"]["code"] == "unauthorized"
                assert r.json()["error"]["type"] == "authentication_error"
            else:
                check_error(r, 401, "unauthorized")
            assert r.headers["www-authenticate"] == "Bearer"
        if not is_public(path):  # the right key gets past the guard (whatever the route then says)
            r = keyed.request(method, path, headers={"Authorization": f"Bearer {KEY}"}, json={})
            assert r.status_code != 401, (method, path, r.text[:200])


def test_only_health_the_page_and_the_docs_are_public(keyed: TestClient) -> None:
    assert {"/health", "/", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/favicon.ico"} == PUBLIC_PATHS
    for path in ("/health", "/", "/static/app.js", "/docs", "/openapi.json"):
        assert keyed.get(path).status_code == 200, path
    for path in ("/ready", "/info", "/metrics", "/search?q=cat"):
        assert keyed.get(path).status_code == 401, path


def test_the_key_is_compared_in_constant_time() -> None:
    """The only comparison of the presented token is ``hmac.compare_digest`` (no ``==`` on the key)."""
    tree = ast.parse((REPO / "app" / "security.py").read_text())
    digest_calls = [
        n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == "hmac.compare_digest"
    ]
    assert len(digest_calls) == 1 and "self.api_key" in ast.unparse(digest_calls[0])

    def names(node: ast.AST) -> set[str]:
        return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {
            n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)
        }

    key_compares = [n for n in ast.walk(tree) if isinstance(n, ast.Compare) and {"token", "api_key"} & names(n)]
    assert key_compares, "the checks below found no comparison of the key at all"
    for node in key_compares:  # only presence checks: `token is None`, `self.api_key is not None`
        assert all(isinstance(op, ast.Is | ast.IsNot) for op in node.ops), ast.unparse(node)
        assert all(isinstance(c, ast.Constant) and c.value is None for c in node.comparators), ast.unparse(node)


def test_admin_routes_are_refused_without_a_key(app_client: TestClient, keyed: TestClient, check_error: Check) -> None:
    check_error(app_client.post("/admin/reload"), 403, "admin_disabled")  # no key configured at all
    check_error(keyed.post("/admin/reload"), 401, "unauthorized")
    r = keyed.post("/admin/reload", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200 and r.json()["outcome"] == "unchanged"


def test_cors_is_off_by_default(app_client: TestClient, check_error: Check) -> None:
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    r = app_client.options("/search", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    check_error(r, 405, "method_not_allowed")
    r = app_client.post("/search", json={"query": "cat"}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_the_body_size_is_limited(app_settings: Callable[..., Settings], check_error: Check) -> None:
    with TestClient(create_app(app_settings(max_body_bytes=4096)), raise_server_exceptions=False) as client:
        check_error(client.post("/embed", json={"texts": ["x" * 5000]}), 413, "payload_too_large")
        chunked = (b"x" * 1024 for _ in range(8))
        check_error(client.post("/embed", content=chunked), 413, "payload_too_large")
        assert client.post("/embed", json={"texts": ["x" * 3000]}).status_code == 200


PICKLE_PATTERNS = [
    r"^\s*import (c?pickle|dill|cloudpickle|joblib|shelve)\b",
    r"^\s*from (c?pickle|dill|cloudpickle|joblib|shelve) import",
    r"\bpickle\.(loads?|dumps?)\(",
    r"allow_pickle\s*=\s*True",
    r"\btorch\.load\((?![^)]*weights_only\s*=\s*True)",
]


def test_no_pickle_anywhere() -> None:
    """Indexes are FAISS native files, .npy without pickles, SQLite and JSON; nothing unpickles."""
    offenders = []
    for folder in ("semsearch", "app", "indexer", "bench", "data"):
        for path in (REPO / folder).rglob("*.py"):
            for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if any(re.search(p, line) for p in PICKLE_PATTERNS):
                    offenders.append(f"{path.relative_to(REPO)}:{lineno}: {line.strip()}")
    assert not offenders, offenders


def test_an_index_directory_holds_no_pickles(app_index: Path) -> None:
    import numpy as np

    files = [p for p in app_index.rglob("*") if p.is_file()]
    assert files and not [p for p in files if p.suffix in (".pkl", ".pickle", ".joblib", ".pt", ".bin")]
    for npy in [p for p in files if p.suffix == ".npy"]:
        np.load(npy, allow_pickle=False)  # raises if an object array (a pickle) were inside


def test_container_runs_as_non_root_with_a_read_only_root_filesystem() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    runtime = dockerfile.split("AS runtime", 1)[1]
    users = re.findall(r"^USER\s+(\S+)", runtime, flags=re.M)
    assert users, "the runtime stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid not in ("0", "root") and uid.isdigit() and int(uid) >= 1000, users
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        assert service.get("user") in (None, "10001", "10001:10001"), (name, service.get("user"))
        assert "ALL" in service.get("cap_drop", []), name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
    api = compose["services"]["api"]
    assert api.get("read_only") is True
    assert all(v.get("read_only") is not False for v in api["volumes"])
    assert {v["target"]: v.get("read_only") for v in api["volumes"]}["/index"] is True  # serves, never writes
