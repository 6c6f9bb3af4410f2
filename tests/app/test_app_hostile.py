"""Hostile inputs (issue 13): every route answers bad input with the documented status in the one error
shape, quickly, and never a 500; one client's bad requests never fail another client's good ones.

The catalogue runs in process (``TestClient`` with the lifespan, a real reranker so ``/rerank`` gets past
its 503); the concurrency checks run against a real ``python -m app`` server.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from semsearch import filters
from semsearch.text import text_problem

pytest_plugins = ["app_fixtures"]

Check = Callable[..., dict[str, Any]]
MAX_SECONDS = 10.0  # generous: the machine is shared; a bad request takes milliseconds
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def client(app_settings: Callable[..., Settings], untrained_reranker: Path) -> Iterator[TestClient]:
    app = create_app(app_settings(reranker=str(untrained_reranker), max_body_bytes=200_000))
    with TestClient(app, raise_server_exceptions=False) as test_client:
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
