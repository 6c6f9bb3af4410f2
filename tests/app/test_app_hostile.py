"""Hostile inputs (issue 13): every route answers bad input with the documented status in the one error
shape, quickly, and never a 500; one client's bad requests never fail another client's good ones.

The catalogue runs in process (``TestClient`` with the lifespan, a real reranker so ``/rerank`` gets past
its 503); the concurrency checks run against a real ``python -m app`` server.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.errors import _leaf_routes
from app.main import create_app
from app.settings import Settings
from semsearch.search import filters
from semsearch.text import text_problem

pytest_plugins = ["app_fixtures"]

Check = Callable[..., dict[str, Any]]
HOSTILE_KEY = "hostile-catalogue-key"
MAX_SECONDS = 10.0  # generous: the machine is shared; a bad request takes milliseconds
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def client(
    app_settings: Callable[..., Settings], untrained_reranker: Path, app_index: Path, tmp_path_factory: Any
) -> Iterator[TestClient]:
    import shutil

    root = tmp_path_factory.mktemp("hostile") / "root"  # writable: the write routes are poisoned too
    shutil.copytree(app_index, root, symlinks=True)
    settings = app_settings(
        reranker=str(untrained_reranker), max_body_bytes=200_000, index=root, writable=True, api_key=HOSTILE_KEY
    )
    app = create_app(settings)  # with a key, so the admin and snapshot routes are poisoned too
    auth = {"Authorization": f"Bearer {HOSTILE_KEY}"}
    with TestClient(app, raise_server_exceptions=False, headers=auth) as test_client:
        made = test_client.post("/collections/root/snapshots")
        assert made.status_code == 201, made.text
        GOOD_REQUESTS[("GET", "/collections/{name}/snapshots/{file}")]["path"]["file"] = made.json()["name"]
        yield test_client


# --------------------------------------------------------------------------------------- the catalogue

# route -> (good body, the text fields to poison: (field, is a list))
BODY_ROUTES: dict[str, tuple[dict[str, Any], list[tuple[str, bool]]]] = {
    "/search": ({"query": "a large wild cat", "k": 2}, [("query", False)]),
    "/search/batch": ({"queries": ["a large wild cat", "a tool"], "k": 2}, [("queries", True)]),
    "/embed": ({"texts": ["a large wild cat", "a tool"]}, [("texts", True)]),
    "/rerank": ({"query": "a large wild cat", "texts": ["a lion", "a spoon"]}, [("query", False), ("texts", True)]),
}
BAD_TEXTS = {
    "lone_high_surrogate": '"\\ud800"',
    "lone_low_surrogate": '"ok \\udfff ok"',
    "reversed_pair": '"\\udc00\\ud800"',
    "nul": '"a\\u0000b"',
    "only_nul": '"\\u0000"',
}


def raw_with_text(route: str, field: str, is_list: bool, literal: str) -> bytes:
    """The good body with ``field`` (or its last item) replaced by a raw JSON string literal."""
    body = dict(BODY_ROUTES[route][0])
    marker = "__POISON__"
    body[field] = [*body[field][:-1], marker] if is_list else marker
    return json.dumps(body).replace(f'"{marker}"', literal).encode()


TEXT_CASES = [
    pytest.param(route, field, is_list, literal, id=f"{route}-{field}-{name}")
    for route, (_, fields) in BODY_ROUTES.items()
    for field, is_list in fields
    for name, literal in BAD_TEXTS.items()
]


def timed(call: Callable[[], httpx.Response]) -> httpx.Response:
    started = time.perf_counter()
    response = call()
    assert time.perf_counter() - started < MAX_SECONDS
    return response


@pytest.mark.parametrize(("route", "field", "is_list", "literal"), TEXT_CASES)
def test_invalid_text_is_422_at_the_schema(
    client: TestClient, check_error: Check, route: str, field: str, is_list: bool, literal: str
) -> None:
    r = timed(lambda: client.post(route, content=raw_with_text(route, field, is_list, literal), headers=JSON))
    error = check_error(r, 422, "invalid_input")
    assert error["detail"][0]["loc"][:2] == ["body", field], error
    problem = text_problem(json.loads(literal))  # what the core says of this text: NUL, or which surrogate where
    assert problem is not None and error["detail"][0]["msg"] == problem, error
    assert error["message"].endswith(f": {problem}"), error


def _deep(n: int) -> str:
    return "[" * n + "]" * n


# (name, raw body or a callable(good body) -> raw body, expected status)
BODY_CASES: list[tuple[str, Callable[[dict[str, Any]], bytes], int]] = [
    ("not_utf8", lambda b: json.dumps(b).encode()[:-1] + b' , "x": "\xff\xfe"}', 422),
    ("latin1_text", lambda b: json.dumps(b).replace('"a', '"\xe9').encode("latin-1"), 422),
    ("not_json", lambda b: b"{not json", 422),
    ("truncated", lambda b: json.dumps(b).encode()[:-3], 422),
    ("empty", lambda b: b"", 422),
    ("null", lambda b: b"null", 422),
    ("list", lambda b: b"[]", 422),
    ("string", lambda b: b'"a large wild cat"', 422),
    ("number", lambda b: b"12", 422),
    ("deep_5000", lambda b: _deep(5000).encode(), 422),
    ("deep_in_field_5000", lambda b: json.dumps({**b, "extra": "X"}).replace('"X"', _deep(5000)).encode(), 422),
    ("deep_in_field_800", lambda b: json.dumps({**b, "extra": "X"}).replace('"X"', _deep(800)).encode(), 422),
    ("huge_int_5000_digits", lambda b: json.dumps({**b, "extra": "X"}).replace('"X"', "9" * 5000).encode(), 422),
    ("huge_int_4000_digits", lambda b: json.dumps({**b, "extra": "X"}).replace('"X"', "9" * 4000).encode(), 422),
    ("nan", lambda b: json.dumps({**b, "extra": "X"}).replace('"X"', "NaN").encode(), 422),
    ("infinity", lambda b: json.dumps({**b, "extra": "X"}).replace('"X"', "-Infinity").encode(), 422),
    ("unknown_field", lambda b: json.dumps({**b, "surprise": 1}).encode(), 422),
    ("oversized", lambda b: json.dumps({**b, "pad": "x" * 300_000}).encode(), 413),
    ("many_keys", lambda b: json.dumps({**b, **{f"k{i}": i for i in range(10_000)}}).encode(), 422),
    ("long_array", lambda b: json.dumps({**b, "pad": list(range(25_000))}).encode(), 422),
]
TYPE_CASES: dict[str, list[tuple[str, Any]]] = {
    "/search": [("query", 5), ("query", None), ("query", ["a"]), ("k", "5"), ("k", 2.5), ("k", True), ("k", 0),
                ("k", 10**30), ("k", -1), ("mode", "fuzzy"), ("rerank", "yes"), ("candidates", 10**6), ("query", "")],
    "/search/batch": [("queries", "a"), ("queries", []), ("queries", [1]), ("queries", [""]), ("queries", ["a"] * 65)],
    "/embed": [("texts", "a"), ("texts", []), ("texts", [None]), ("texts", ["   "]), ("texts", ["x" * 4001])],
    "/rerank": [("texts", "a"), ("texts", []), ("top_k", 0), ("top_k", "1"), ("query", " "), ("texts", [{"a": 1}])],
}  # fmt: skip


@pytest.mark.parametrize("route", list(BODY_ROUTES))
@pytest.mark.parametrize(("name", "make", "status"), BODY_CASES, ids=[c[0] for c in BODY_CASES])
def test_hostile_bodies(
    client: TestClient, check_error: Check, route: str, name: str, make: Callable[..., bytes], status: int
) -> None:
    r = timed(lambda: client.post(route, content=make(BODY_ROUTES[route][0]), headers=JSON))
    check_error(r, status, "invalid_input" if status == 422 else "payload_too_large")


@pytest.mark.parametrize(("route", "field", "value"), [(r, f, v) for r, cases in TYPE_CASES.items() for f, v in cases])
def test_wrong_types_and_out_of_range(
    client: TestClient, check_error: Check, route: str, field: str, value: Any
) -> None:
    r = timed(lambda: client.post(route, json={**BODY_ROUTES[route][0], field: value}))
    error = check_error(r, 422, "invalid_input")
    assert error["detail"][0]["loc"][:2] == ["body", field], error


@pytest.mark.parametrize("route", list(BODY_ROUTES))
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_wrong_content_type(client: TestClient, check_error: Check, route: str, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    r = timed(lambda: client.post(route, content=json.dumps(BODY_ROUTES[route][0]).encode(), headers=headers))
    check_error(r, 422, "invalid_input")


def test_chunked_oversized_body_is_413(client: TestClient, check_error: Check) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"query": "cat", "pad": "'
        for _ in range(40):
            yield b"x" * 10_000
        yield b'"}'

    check_error(client.post("/search", content=chunks(), headers=JSON), 413, "payload_too_large")


# filters of every wrong shape: POST /search, POST /search/batch and GET /search?filter= alike
BAD_FILTERS: list[tuple[str, Any]] = [
    ("list", ["pos", "noun"]),
    ("string", "pos=noun"),
    ("number", 5),
    ("bad_field_name", {"pos;drop": "noun"}),
    ("field_with_quote", {"a'b": 1}),
    ("empty_field", {"": 1}),
    ("dot_only", {".": 1}),
    ("field_too_long", {"a" * (filters.MAX_FIELD_CHARS + 1): 1}),
    ("field_1_9_mb", {"a" * 190_000: 1}),  # scaled to the test body limit; 1.9 MB in the report
    ("path_too_deep", {".".join(["a"] * (filters.MAX_PATH_DEPTH + 1)): 1}),
    ("too_many_fields", {f"f{i}": 1 for i in range(filters.MAX_FIELDS + 1)}),
    ("unknown_operator", {"pos": {"ne": "noun"}}),
    ("empty_condition", {"pos": {}}),
    ("in_not_list", {"pos": {"in": "noun"}}),
    ("in_too_long", {"pos": {"in": list(range(filters.MAX_IN_VALUES + 1))}}),
    ("in_with_object", {"pos": {"in": [{"a": 1}]}}),
    ("in_with_null", {"pos": {"in": [None]}}),
    ("in_and_range", {"pos": {"in": [1], "gte": 0}}),
    ("mixed_range", {"year": {"gte": 1, "lte": "z"}}),
    ("bool_range", {"year": {"gte": True}}),
    ("null_value", {"pos": None}),
    ("list_value", {"pos": [1, 2]}),
    ("nested_condition", {"pos": {"in": [[1]]}}),
    ("int_beyond_int64", {"pos": 10**21}),
    ("int_below_int64", {"pos": {"gte": -(2**63) - 1}}),
    ("in_int_beyond_int64", {"pos": {"in": [1, 2**64]}}),
    ("int_beyond_2_53", {"pos": 2**53 + 1}),
    ("float_beyond_2_53", {"pos": 1e300}),
    ("string_value_too_long", {"pos": "x" * (filters.MAX_VALUE_CHARS + 1)}),
]
RAW_BAD_FILTERS: list[tuple[str, str]] = [
    ("nan", '{"pos": NaN}'),
    ("infinity", '{"pos": {"lte": Infinity}}'),
    ("in_nan", '{"pos": {"in": [1, NaN]}}'),
    ("deep_2000", '{"a": ' * 2000 + "1" + "}" * 2000),
    ("deep_list_2000", "[" * 2000 + "]" * 2000),
    ("digits_5000", '{"pos": ' + "9" * 5000 + "}"),
]


def _filter_requests(client: TestClient, literal: str) -> list[tuple[str, Callable[[], httpx.Response]]]:
    post = '{"query": "a large wild cat", "k": 2, "filter": ' + literal + "}"
    batch = '{"queries": ["a large wild cat"], "k": 2, "filter": ' + literal + "}"
    calls = [
        ("POST /search", lambda: client.post("/search", content=post.encode(), headers=JSON)),
        ("POST /search/batch", lambda: client.post("/search/batch", content=batch.encode(), headers=JSON)),
    ]
    if len(literal) < 30_000:  # longer URLs are refused by the HTTP client and server themselves
        calls.append(
            ("GET /search", lambda: client.get("/search", params={"q": "a large wild cat", "filter": literal}))
        )
    return calls


@pytest.mark.parametrize(
    "literal",
    [pytest.param(json.dumps(f), id=name) for name, f in BAD_FILTERS]
    + [pytest.param(raw, id=name) for name, raw in RAW_BAD_FILTERS],
)
def test_bad_filters_are_422_on_every_search_route(client: TestClient, check_error: Check, literal: str) -> None:
    for label, call in _filter_requests(client, literal):
        r = timed(call)
        error = check_error(r, 422, "invalid_input")
        assert len(error["message"]) < 1000, (label, error["message"][:200])  # never echoes a huge input
        where = error["detail"][0]["loc"]
        assert where[:2] in (["body", "filter"], ["query", "filter"], ["body"]), (label, where)


def test_good_filters_at_the_bounds_are_accepted(client: TestClient) -> None:
    at_bounds = {
        **{f"f{i}": {"in": list(range(filters.MAX_IN_VALUES))} for i in range(filters.MAX_FIELDS - 3)},
        "pos": {"in": ["noun", *[f"v{i}" for i in range(filters.MAX_IN_VALUES - 1)]]},
        "a" * filters.MAX_FIELD_CHARS: {"gte": -filters.NUMBER_LIMIT, "lte": filters.NUMBER_LIMIT},
        ".".join(["b"] * filters.MAX_PATH_DEPTH): "x" * filters.MAX_VALUE_CHARS,
    }
    for label, call in _filter_requests(client, json.dumps(at_bounds))[:2]:  # POST
        r = timed(call)
        assert r.status_code == 200, (label, r.text[:300])
    # GET carries the filter in the URL: smaller `in` lists and strings (app.schemas.GET_MAX_*)
    get_bounds = {
        **{f"f{i}": {"in": ["\U0001f600" * 50] * 5} for i in range(filters.MAX_FIELDS - 1)},
        "a" * filters.MAX_FIELD_CHARS: {"gte": -filters.NUMBER_LIMIT, "lte": filters.NUMBER_LIMIT},
    }
    r = timed(lambda: client.get("/search", params={"q": "a large wild cat", "filter": json.dumps(get_bounds)}))
    assert r.status_code == 200, r.text[:300]


BAD_GET_PARAMS: list[dict[str, str]] = [
    {},
    {"q": ""},
    {"q": "   "},
    {"q": "a\x00b"},
    {"q": "x" * 1001},
    {"q": "cat", "k": "0"},
    {"q": "cat", "k": "9" * 50},
    {"q": "cat", "k": "1e3"},
    {"q": "cat", "k": "NaN"},
    {"q": "cat", "mode": "fuzzy"},
    {"q": "cat", "rerank": "maybe"},
    {"q": "cat", "candidates": "100000"},
    {"q": "cat", "filter": "x" * 32_001},
    {"q": "cat", "filter": '{"pos": {"in": [1, 2, 3, 4, 5, 6]}}'},
    {"q": "cat", "filter": '{"pos": "' + "x" * 51 + '"}'},
    {"q": "cat", "filter": ""},
]


@pytest.mark.parametrize("params", BAD_GET_PARAMS, ids=lambda p: ",".join(f"{k}={v[:8]!r}" for k, v in p.items()))
def test_hostile_get_search_params(client: TestClient, check_error: Check, params: dict[str, str]) -> None:
    check_error(timed(lambda: client.get("/search", params=params)), 422, "invalid_input")


def test_status_routes_ignore_hostile_query_strings(client: TestClient) -> None:
    for path in ("/health", "/ready", "/info", "/metrics"):
        r = timed(lambda path=path: client.get(path, params={"q": "\x00" * 100, "filter": "[" * 5000}))
        assert r.status_code == 200, (path, r.text[:200])


@pytest.mark.parametrize("method", ["OPTIONS", "PUT", "DELETE", "PATCH"])
def test_other_methods_are_405_and_allow_lists_every_method(
    client: TestClient, check_error: Check, method: str
) -> None:
    r = client.request(method, "/search")
    check_error(r, 405, "method_not_allowed")
    assert {m.strip() for m in r.headers["allow"].split(",")} == {"GET", "HEAD", "POST"}
    r = client.request(method, "/embed")
    check_error(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "POST"


# ------------------------------------------------------------------- cost bounds (finding 4) and 500s


def test_a_huge_filter_field_name_is_refused_before_any_work(client: TestClient, check_error: Check) -> None:
    """1.9 MB field name (under a 2 MB body limit) held the worker for 13.8 s: now a 422 at the schema."""
    r = client.post("/search", json={"query": "a large wild cat", "filter": {"a" * 190_000: 1}})
    error = check_error(r, 422, "invalid_input")
    assert error["detail"][0]["loc"] == ["body", "filter"]
    assert f"the limit is {filters.MAX_FIELD_CHARS}" in error["message"]


def test_no_input_makes_a_500(client: TestClient) -> None:
    """The inputs that made 500s in the report (OverflowError from SQLite, RecursionError in the route)."""
    cases = [
        lambda: client.post("/search", json={"query": "cat", "filter": {"pos": 1000000000000000000000}}),
        lambda: client.post("/search/batch", json={"queries": ["cat"], "filter": {"pos": {"in": [2**70]}}}),
        lambda: client.get("/search", params={"q": "cat", "filter": '{"a":' * 2000 + "1" + "}" * 2000}),
        lambda: client.post("/search", content=b'{"query": "\\ud800"}', headers=JSON),
        lambda: client.post("/embed", content=b'{"texts": ["ok", "\\ud800"]}', headers=JSON),
    ]
    for call in cases:
        r = call()
        assert r.status_code == 422, r.text[:300]


# ------------------------------------------------------------------------ a real server, many clients


@pytest.fixture(scope="module")
def server(launch_server: Callable[..., Any], app_index: Path) -> Any:
    from app_fixtures import API_KEY

    s = launch_server(app_index, batch_window_ms=5, api_key=API_KEY, access_log="true", log_level="debug")
    s.wait_started()
    return s


def test_hostile_clients_never_fail_good_requests(server: Any) -> None:
    """Good clients search while a hostile client fires the whole catalogue (invalid text in batches,
    bad filters, deep JSON, huge numbers): every good request gets 200 and the same answer as alone,
    every hostile one a 4xx, none a 5xx. Before the fix one lone surrogate failed its batchmates."""
    from app_fixtures import API_KEY

    headers = {"Authorization": f"Bearer {API_KEY}"}
    good_body = {"query": "a large wild cat", "k": 3}
    with server.client(headers=headers) as c:
        expected = [h["id"] for h in c.post("/search", json=good_body).json()["results"]]
    hostile: list[tuple[str, bytes]] = []
    for route, (_, fields) in BODY_ROUTES.items():
        if route == "/rerank":  # this server has no reranker: 503 before the body is read
            continue
        for field, is_list in fields:
            for literal in BAD_TEXTS.values():
                hostile.append((route, raw_with_text(route, field, is_list, literal)))
    for _name, raw in RAW_BAD_FILTERS:
        hostile.append(("/search", b'{"query": "cat", "filter": %s}' % raw.encode()))
    for _name, f in BAD_FILTERS[:12]:
        hostile.append(("/search/batch", json.dumps({"queries": ["cat", "dog"], "filter": f}).encode()))
    hostile = hostile * 3

    stop = threading.Event()
    good_statuses: list[int] = []
    wrong_answers: list[Any] = []

    def good_client() -> None:
        with server.client(headers=headers) as c:
            while not stop.is_set():
                r = c.post("/search", json=good_body)
                good_statuses.append(r.status_code)
                if r.status_code == 200 and [h["id"] for h in r.json()["results"]] != expected:
                    wrong_answers.append(r.json())
            r = c.post("/embed", json={"texts": ["a large wild cat"]})
            good_statuses.append(r.status_code)

    def hostile_client(items: list[tuple[str, bytes]]) -> list[int]:
        with server.client(headers={**headers, **JSON}) as c:
            return [c.post(route, content=raw).status_code for route, raw in items]

    with ThreadPoolExecutor(6) as pool:
        goods = [pool.submit(good_client) for _ in range(4)]
        time.sleep(0.5)
        bad = [pool.submit(hostile_client, hostile[i::2]) for i in range(2)]
        bad_statuses = [s for f in bad for s in f.result(timeout=300)]
        stop.set()
        for f in goods:
            f.result(timeout=120)
    print(f"good requests: {len(good_statuses)}, hostile requests: {len(bad_statuses)}")  # docs/reliability.md
    assert len(good_statuses) >= 20
    assert set(good_statuses) == {200}, sorted(set(good_statuses))
    assert not wrong_answers
    assert all(400 <= s < 500 for s in bad_statuses), sorted(set(bad_statuses))
    metrics = httpx.get(f"{server.url}/metrics", headers=headers).text
    assert 'status="500"' not in metrics


def test_the_api_key_is_never_logged(server: Any) -> None:
    """Debug log level and access log on, good, refused and hostile requests (its own, so it does not
    depend on running after the test above): the key appears nowhere in the log."""
    from app_fixtures import API_KEY

    with server.client() as c:
        for route, (_, fields) in BODY_ROUTES.items():  # invalid text on every route, with the key
            raw = raw_with_text(route, fields[0][0], fields[0][1], BAD_TEXTS["lone_high_surrogate"])
            c.post(route, content=raw, headers={"Authorization": f"Bearer {API_KEY}", **JSON})
        c.get("/info", headers={"Authorization": f"Bearer {API_KEY}"})
        c.get("/info", headers={"Authorization": f"Bearer {API_KEY}-wrong"})
        c.get(f"/info?key={API_KEY[:4]}", headers={"Authorization": "Basic abc"})
        server.sync_log(c)
    assert "GET /info" in server.log  # the access log is on, so the check means something
    assert API_KEY not in server.log


# ------------------------------------------------------------------------------ OpenAPI accuracy (finding 8)


def test_openapi_carries_the_limits_so_bad_bodies_are_schema_invalid(app_settings: Callable[..., Settings]) -> None:
    import jsonschema_rs

    app = create_app(app_settings(max_query_chars=50, max_k=7, max_batch_queries=3))
    doc = app.openapi()

    def validator(model: str) -> Any:
        return jsonschema_rs.validator_for({**doc["components"]["schemas"][model], "components": doc["components"]})

    search, batch, embed = validator("SearchRequest"), validator("BatchSearchRequest"), validator("EmbedRequest")
    for body in ({"query": ""}, {"query": "   "}, {"query": "a\x00"}, {"query": "x" * 51}, {"query": "a", "k": 8},
                 {"query": "a", "filter": {"a" * 129: 1}}, {"query": "a", "filter": {"pos": 2**60}}):  # fmt: skip
        assert not search.is_valid(body), body
    assert search.is_valid({"query": "a large wild cat", "k": 7, "filter": {"pos": {"in": ["noun", 1]}}})
    assert not batch.is_valid({"queries": [""]}) and not batch.is_valid({"queries": ["a"] * 4})
    assert not embed.is_valid({"texts": [" "]})
    get = {p["name"]: p for p in doc["paths"]["/search"]["get"]["parameters"]}
    assert get["q"]["schema"]["maxLength"] == 50 and get["k"]["schema"]["maximum"] == 7
    assert "application/json" in get["filter"]["content"]


# ------------------------------------------------- every string position of every route (issue 20, item 9)

# A good request per operation; the positions are derived from the OpenAPI document below, so a new
# route or field that carries text is poisoned automatically (and a route with no example fails the test).
GOOD_REQUESTS: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/search"): {"json": {"query": "a large wild cat", "k": 2}},
    ("GET", "/search"): {"params": {"q": "a large wild cat", "k": "2", "mode": "dense", "filter": "{}",
                                    "rerank": "false", "candidates": "5"}},
    ("POST", "/search/batch"): {"json": {"queries": ["a large wild cat", "a tool"], "k": 2}},
    ("POST", "/embed"): {"json": {"texts": ["a large wild cat", "a tool"]}},
    ("POST", "/rerank"): {"json": {"query": "a large wild cat", "texts": ["a lion", "a spoon"]}},
    ("POST", "/v1/embeddings"): {"json": {"input": ["a large wild cat"], "model": "all-MiniLM-L6-v2"}},
    ("POST", "/v1/rerank"): {"json": {"query": "a large wild cat", "documents": ["a lion", {"text": "a spoon"}]}},
    ("POST", "/v2/rerank"): {"json": {"query": "a large wild cat", "documents": ["a lion", {"text": "a spoon"}]}},
    ("GET", "/v1/models/{model_id}"): {"path": {"model_id": "all-MiniLM-L6-v2"}},
    ("POST", "/documents"): {"json": {"documents": [{"id": "hostile-1", "text": "a large wild cat",
                                                     "metadata": {"pos": "noun"}}], "wait": False}},
    ("GET", "/documents/{id}"): {"path": {"id": "hostile-1"}},
    ("POST", "/documents/delete"): {"json": {"ids": ["hostile-2", 3]}},
    ("DELETE", "/documents/{id}"): {"path": {"id": "hostile-1"}},
    ("GET", "/collections/{name}"): {"path": {"name": "root"}},  # the served index directory's name
    ("GET", "/collections/{name}/snapshots"): {"path": {"name": "root"}},
    ("POST", "/collections/{name}/snapshots"): {"path": {"name": "root"}},
    ("GET", "/collections/{name}/snapshots/{file}"): {"path": {"name": "root", "file": "(set by the fixture)"}},
}  # fmt: skip
# every collection route is also served as /collections/{name}/... with the same shapes (issue 23)
COLLECTION_ROUTES = ("/search", "/embed", "/rerank", "/documents", "/admin/reload")
GOOD_REQUESTS.update(
    {
        (method, "/collections/{name}" + path): {**good, "path": {"name": "root", **good.get("path", {})}}
        for (method, path), good in list(GOOD_REQUESTS.items())
        if path.startswith(COLLECTION_ROUTES)
    }
)
GOOD_REQUESTS[("POST", "/collections/{name}/admin/reload")] = {"path": {"name": "root"}}
MAX_POSITION_DEPTH = 7  # ("body", "documents", "[]", "metadata", then three levels)
LIST, VALUE, KEY = "[]", "*", "<key>"  # wildcards of a position: a list item, an object value, an object key


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = doc
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def _strings(doc: dict[str, Any], schema: dict[str, Any], loc: tuple[str, ...], out: set[tuple[str, ...]]) -> None:
    """Every position under ``schema`` where the client sends a string (keys it chooses included), down to
    :data:`MAX_POSITION_DEPTH` steps: the documents' metadata schema nests 32 levels of objects and arrays,
    whose positions would double at every level; three levels of it are poisoned."""
    if len(loc) > MAX_POSITION_DEPTH:
        return
    schema = _resolve(doc, schema)
    for branch in (*schema.get("anyOf", ()), *schema.get("oneOf", ()), *schema.get("allOf", ())):
        _strings(doc, branch, loc, out)
    kind = schema.get("type")
    if kind == "string":
        out.add(loc)
    if kind == "array" and isinstance(schema.get("items"), dict):
        _strings(doc, schema["items"], (*loc, LIST), out)
    for name, sub in schema.get("properties", {}).items():
        _strings(doc, sub, (*loc, name), out)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        out.add((*loc, KEY))
        _strings(doc, extra, (*loc, VALUE), out)


def string_positions(doc: dict[str, Any]) -> dict[tuple[str, str], set[tuple[str, ...]]]:
    """(METHOD, path) -> positions such as ("body", "filter", "*", "in", "[]") or ("query", "k"): every query
    and path parameter is text in the URL whatever its type; JSON inside a parameter or body is walked."""
    found: dict[tuple[str, str], set[tuple[str, ...]]] = {}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            out: set[tuple[str, ...]] = set()
            for param in op.get("parameters", []):
                loc = (param["in"], param["name"])
                out.add(loc)
                for media in param.get("content", {}).values():
                    _strings(doc, media["schema"], loc, out)
            for media in op.get("requestBody", {}).get("content", {}).values():
                _strings(doc, media["schema"], ("body",), out)
            found[(method.upper(), path)] = out
    return found


def _place(container: Any, rest: tuple[str, ...], bad: Any) -> Any:
    """``container`` with ``bad`` at the position ``rest`` (last list item, a filter field ``pos``, a key)."""
    if not rest:
        return bad
    head, tail = rest[0], rest[1:]
    if head == LIST:
        items = list(container) if isinstance(container, list) and container else [None]
        return [*items[:-1], _place(items[-1], tail, bad)]
    if head == KEY:
        return {bad: 1}
    current = container if isinstance(container, dict) else {}
    key = "pos" if head == VALUE else head
    value = _place(current.get(key), tail, bad)
    if tail[:1] in (("in",),) and isinstance(value, dict):
        value = {"in": value["in"]}
    return {**current, key: value}


def poisoned(op: tuple[str, str], position: tuple[str, ...], bad: str) -> dict[str, Any]:
    """The operation's good request with the string ``bad`` at ``position`` (JSON-escaped where JSON)."""
    good = GOOD_REQUESTS[op]
    where, name = position[0], position[1] if len(position) > 1 else None
    if where == "body":
        return {"content": json.dumps(_place(good["json"], position[1:], bad)).encode(), "headers": JSON}
    params = dict(good.get("params", {}))
    if where == "query" and len(position) > 2:  # inside the JSON of a parameter (filter)
        assert name is not None
        params[name] = json.dumps(_place({}, position[2:], bad))
        return {"params": params}
    raise AssertionError(position)


# JSON strings that are not text (already in BAD_TEXTS, as Python strings)
BAD_STRINGS = {"lone_high_surrogate": "\ud800", "lone_low_surrogate": "ok \udfff ok", "nul": "a\x00b"}
# bytes in a URL that are not UTF-8 once percent-decoded, and NUL
BAD_URL_BYTES = {
    "encoded_surrogate": "%ED%A0%80",
    "overlong_slash": "%C0%AF",
    "overlong_nul": "%C0%80",
    "invalid_byte": "%FF",
    "beyond_u10ffff": "%F4%90%80%80",
    "truncated": "%E2%82",
    "nul": "%00",
}


def assert_refused(r: httpx.Response, path: str, loc: list[str]) -> None:
    """422 in the one shape (400 in OpenAI's on the compatible routes), naming the position."""
    from app_fixtures import assert_error

    if path.startswith(("/v1/", "/v2/")):
        assert r.status_code == 400, r.text[:300]
        error = r.json()["error"]
        assert error["code"] == "invalid_input" and error["type"] == "invalid_request_error", error
        param = ".".join(loc[1:])
        assert (error["param"] or "").startswith(param) if param else True, (loc, error)
        return
    error = assert_error(r, 422, "invalid_input")
    assert error["detail"][0]["loc"][: len(loc)] == loc, (loc, error)


@pytest.fixture(scope="module")
def positions(client: TestClient) -> dict[tuple[str, str], set[tuple[str, ...]]]:
    return string_positions(client.app.openapi())  # type: ignore[attr-defined]


def test_every_route_is_in_the_catalogue(client: TestClient, positions: dict[Any, set[Any]]) -> None:
    """Every operation that takes text has a good example here (so its positions are poisoned below), and
    every route outside the OpenAPI document takes no input (a new hidden route fails this test)."""
    from fastapi.routing import APIRoute

    missing = sorted(op for op, found in positions.items() if found and op not in GOOD_REQUESTS)
    assert not missing, f"add a good request to GOOD_REQUESTS for {missing}"
    assert len(positions) >= 15 and sum(len(p) for p in positions.values()) >= 40, positions
    routes = [(prefix, r) for prefix, r in _leaf_routes(client.app.routes) if isinstance(r, APIRoute)]  # type: ignore[attr-defined]
    hidden = {(m, prefix + r.path) for prefix, r in routes if not r.include_in_schema for m in r.methods}
    assert hidden == {("GET", "/"), ("GET", "/favicon.ico")}, hidden  # the page and its icon: no parameters
    for op, request in GOOD_REQUESTS.items():  # the examples themselves are good (so a 4xx below means the poison)
        r = _send(client, op, request)
        assert r.status_code in (200, 201), (op, r.text[:300])


def _send(
    client: TestClient, op: tuple[str, str], request: dict[str, Any], raw_query: str | None = None
) -> httpx.Response:
    method, path = op
    url = path.format(**request.get("path", {}))
    kwargs = {k: v for k, v in request.items() if k != "path"}
    if raw_query is not None:
        kwargs.pop("params", None)
        url += "?" + raw_query
    return timed(lambda: client.request(method, url, **kwargs))


def _expected_loc(position: tuple[str, ...]) -> list[str]:
    """Where the error must point: the field or parameter (a filter's inside is reported as the filter)."""
    return list(position[:2])


def test_every_string_position_refuses_what_is_not_text(
    client: TestClient, positions: dict[tuple[str, str], set[tuple[str, ...]]]
) -> None:
    """A lone surrogate or NUL at ANY string position of ANY route (bodies, filters at every depth, field
    names, the JSON inside GET's filter, model names, enum fields) is a 422 (400 on /v1, /v2) naming the
    position. Before: a lone surrogate in a filter value reached SQLite (500) and NUL matched nothing."""
    failures: list[str] = []
    count = 0
    for op, found in sorted(positions.items()):
        for position in sorted(found):
            if position[0] != "body" and len(position) <= 2:
                continue  # the URL's own bytes: the next test
            for name, bad in BAD_STRINGS.items():
                count += 1
                r = _send(client, op, {**GOOD_REQUESTS[op], **poisoned(op, position, bad)})
                try:
                    assert_refused(r, op[1], _expected_loc(position))
                except AssertionError as e:
                    failures.append(f"{op} {position} {name}: {str(e)[:300]}")
    assert count >= 100, count
    assert not failures, "\n".join(failures)


def test_every_url_parameter_is_decoded_strictly(
    client: TestClient, positions: dict[tuple[str, str], set[tuple[str, ...]]]
) -> None:
    """Invalid UTF-8, overlong forms and encoded surrogates in any query or path parameter were replaced
    with U+FFFD and answered 200 (GET /search?q=cat%ED%A0%80); now 422 naming the parameter, on every
    route, also for a parameter the route does not read."""
    from urllib.parse import urlencode

    failures: list[str] = []
    for op, found in sorted(positions.items()):
        if op[1].startswith("/admin/"):  # refused (403, no key configured) before the URL is looked at
            continue
        request = GOOD_REQUESTS.get(op, {})
        url_params = [p for p in sorted(found) if p[0] in ("query", "path") and len(p) == 2] + [("query", "junk")]
        for position in url_params:
            for name, bad in BAD_URL_BYTES.items():
                where, param = position
                if where == "path":
                    r = _send(client, op, {**request, "path": {**request.get("path", {}), param: "x" + bad}})
                    loc = ["path"]
                else:
                    others = {k: v for k, v in request.get("params", {}).items() if k != param}
                    r = _send(
                        client, op, request, raw_query="&".join(filter(None, [urlencode(others), f"{param}={bad}"]))
                    )
                    loc = ["query", param]
                if name == "nul" and param == "junk":
                    if r.status_code >= 500:  # NUL is valid UTF-8: a parameter nobody reads is ignored
                        failures.append(f"{op} {position} {name}: {r.status_code}")
                    continue
                try:
                    assert_refused(r, op[1], loc)
                except AssertionError as e:
                    failures.append(f"{op} {position} {name}: {str(e)[:300]}")
    assert not failures, "\n".join(failures)


def test_a_strictly_decoded_query_string_reads_as_utf8(client: TestClient) -> None:
    """Raw (unescaped) UTF-8 bytes and %-escapes decode the same, as UTF-8 (Starlette read raw bytes as Latin-1)."""
    from app.security import strict_query

    assert strict_query(b"q=caf\xc3\xa9+au+lait&k=3&&flag") == ([("q", "café au lait"), ("k", "3"), ("flag", "")], None)
    assert strict_query(b"q=caf%C3%A9&x=%ED%A0%80")[1] == (["query", "x"], "is not valid UTF-8 once percent-decoded "
                                                           "(invalid continuation byte at byte 0)")  # fmt: skip
    escaped = client.get("/search?q=caf%C3%A9+au+lait&k=3").json()
    plain = client.get("/search", params={"q": "café au lait", "k": 3}).json()
    assert [h["id"] for h in plain["results"]] == [h["id"] for h in escaped["results"]]
    plus = client.get("/search?q=a+large+wild+cat&k=3").json()
    spaces = client.get("/search", params={"q": "a large wild cat", "k": 3}).json()
    assert [h["id"] for h in plus["results"]] == [h["id"] for h in spaces["results"]]


def test_error_locations_are_bounded_and_json_safe(client: TestClient) -> None:
    """An unknown field is named in the error; a 1 MB or non-text name must not be echoed as is."""
    from app_fixtures import assert_error

    r = client.post("/search", json={"query": "cat", "x" * 100_000: 1})
    error = assert_error(r, 422, "invalid_input")
    assert len(r.content) < 2000 and error["detail"][0]["loc"][1].endswith("..."), error


def test_blank_rerank_texts_are_refused_like_embed_texts(client: TestClient) -> None:
    """`/embed` refused blank texts while `/rerank` (and the compatible rerank routes) scored them."""
    from app_fixtures import assert_error

    for texts in (["a lion", ""], ["a lion", "   "], ["\u3000"]):
        r = client.post("/rerank", json={"query": "a large wild cat", "texts": texts})
        error = assert_error(r, 422, "invalid_input")
        assert error["detail"][0]["loc"][:2] == ["body", "texts"], error
        assert error["detail"][0]["msg"] == "must not be empty or only whitespace", error
    for documents in (["a lion", " "], [{"text": ""}]):
        for route in ("/v1/rerank", "/v2/rerank"):
            r = client.post(route, json={"query": "a large wild cat", "documents": documents})
            assert r.status_code == 400 and r.json()["error"]["param"].startswith("documents"), r.text[:300]


# ------------------------------------------------------------------------------ HEAD (issue 20, item 10)


def test_every_get_route_answers_head(client: TestClient) -> None:
    """HEAD answered 405 on every GET route (while `Allow` listed it); now the GET's status and headers,
    no body. Routes enumerated from the route table (the OpenAPI ones and the hidden page)."""
    from fastapi.routing import APIRoute

    routes = _leaf_routes(client.app.routes)  # type: ignore[attr-defined]
    gets = sorted({prefix + r.path for prefix, r in routes if isinstance(r, APIRoute) and "GET" in r.methods})
    assert {"/health", "/search", "/info", "/ready", "/metrics", "/v1/models", "/"} <= set(gets), gets
    doc = {"id": "all-MiniLM-L6-v2", "text": "a document whose id fills every path parameter below"}
    assert client.post("/documents", json={"documents": [doc]}).status_code == 200  # GET /documents/{id} finds it
    for path in [*gets, "/static/app.css", "/docs", "/openapi.json"]:
        known = GOOD_REQUESTS.get(("GET", re.sub(r"\{(\w+):\w+\}", r"{\1}", path)), {}).get("path", {})
        url = re.sub(r"\{([^}]*)\}", lambda m, known=known: known.get(m.group(1), "all-MiniLM-L6-v2"), path)
        url += "?q=a+large+wild+cat" if path.endswith("/search") else ""
        get, head = client.get(url), client.head(url)
        assert get.status_code == 200, (url, get.text[:200])
        assert head.status_code == 200 and head.content == b"", (url, head.status_code, head.content[:100])
        assert head.headers["content-type"] == get.headers["content-type"], url
        assert int(head.headers["content-length"]) > 0, url
    # errors keep their status, without a body; POST-only routes still refuse HEAD
    head = client.head("/search?q=%20")
    assert head.status_code == 422 and head.content == b""
    head = client.head("/embed")
    assert head.status_code == 405 and head.headers["allow"] == "POST" and head.content == b""
    assert client.head("/nope").status_code == 404


def test_head_through_a_real_server(server: Any) -> None:
    from app_fixtures import API_KEY

    with server.client(headers={"Authorization": f"Bearer {API_KEY}"}) as c:
        for url in ("/health", "/search?q=cat", "/info", "/ready", "/metrics", "/v1/models", "/"):
            r = c.head(url)
            assert r.status_code == 200 and r.content == b"", (url, r.status_code)
        assert c.get("/health").json() == {"status": "ok"}  # the connection is still in step after HEADs
        r = c.get("/search?q=cat%ED%A0%80")
        assert r.status_code == 422 and r.json()["error"]["detail"][0]["loc"] == ["query", "q"], r.text


# ------------------------------------------------------- filters on lists and exact strings, over HTTP


def test_filters_match_list_elements_and_compare_strings_exactly_over_http(
    tmp_path: Path, app_settings: Callable[..., Settings]
) -> None:
    """A filter on a list-valued field matched nothing (silently); now any element matches, on POST, batch and
    GET alike. Strings compare exactly (NFC and NFD differ, no case folding) while lexical search folds."""
    from indexer.pipeline import BuildOptions, run_build

    rows = [
        {"id": 1, "text": "a large wild cat", "tags": ["cat", "wild"], "years": [1999, 2005], "name": "Caf\u00e9"},
        {"id": 2, "text": "a tool for cutting", "tags": ["tool"], "years": [2010], "name": "Cafe\u0301"},
        {"id": 3, "text": "a cafe selling coffee", "tags": "cat", "years": 2005, "name": "cafe"},
    ]
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    run_build(BuildOptions(inputs=[source], output=tmp_path / "idx", progress=False))
    with TestClient(create_app(app_settings(index=tmp_path / "idx")), raise_server_exceptions=False) as c:

        def ids(spec: dict[str, Any], mode: str = "dense", query: str = "cat") -> list[set[int]]:
            post = c.post("/search", json={"query": query, "k": 10, "mode": mode, "filter": spec})
            batch = c.post("/search/batch", json={"queries": [query], "k": 10, "mode": mode, "filter": spec})
            get = c.get("/search", params={"q": query, "k": 10, "mode": mode, "filter": json.dumps(spec)})
            assert post.status_code == batch.status_code == get.status_code == 200, (post.text, get.text)
            return [
                {h["id"] for h in post.json()["results"]},
                {h["id"] for h in batch.json()["results"][0]},
                {h["id"] for h in get.json()["results"]},
            ]

        assert ids({"tags": "cat"}) == [{1, 3}] * 3
        assert ids({"tags": {"in": ["tool", "wild"]}}) == [{1, 2}] * 3
        assert ids({"years": {"gte": 2000, "lte": 2006}}) == [{1, 3}] * 3
        assert ids({"name": "Caf\u00e9"}) == [{1}] * 3  # NFC only
        assert ids({"name": "Cafe\u0301"}) == [{2}] * 3  # NFD only
        assert ids({"name": "CAFE"}) == [set()] * 3  # no case folding
        assert ids({}, "lexical", "CAFÉ") == [{3}] * 3  # lexical search folds case and diacritics
