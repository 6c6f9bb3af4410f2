"""Request guards as ASGI middleware (so unknown routes and bad bodies are covered too).

API key:

* ``SEMSEARCH_API_KEY`` set: every route except the public ones needs ``Authorization: Bearer KEY``
  (compared with ``hmac.compare_digest``; the key is never logged) or gets 401.
* Admin routes (``/admin/...``) always need a key: without a configured key they answer 403.
* Public: ``/health`` and the static web page and API docs (``/``, ``/static/...``, ``/docs``,
  ``/openapi.json``), which hold no data; the page asks for the key when the API needs one.

The URL, strictly (:class:`StrictUrlMiddleware`): the query string and the path are percent-decoded and
decoded as UTF-8 *strictly* (uvicorn and Starlette replace bad bytes with U+FFFD); invalid UTF-8, overlong
forms and encoded surrogates (``%ED%A0%80``) get the 422 a POST body gets, naming the parameter.

HEAD (:class:`HeadMiddleware`): every GET route answers HEAD with the GET's status and headers, no body.
"""

from __future__ import annotations

import hmac
from urllib.parse import quote, unquote_to_bytes

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_response, path_methods

PUBLIC_PATHS = frozenset({"/health", "/", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/favicon.ico"})
PUBLIC_PREFIXES = ("/static/",)
ADMIN_PREFIX = "/admin/"


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def bearer_token(scope: Scope) -> bytes | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" and token.strip() else None
    return None


class ApiKeyMiddleware:
    """401/403 before routing; CORS preflights pass (this middleware sits inside the CORS one)."""

    def __init__(self, app: ASGIApp, api_key: bytes | None) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        admin = path.startswith(ADMIN_PREFIX)
        if self.api_key is None:
            if admin:
                response = error_response(
                    403,
                    "admin_disabled",
                    "admin routes are disabled because no API key is configured; set SEMSEARCH_API_KEY "
                    "(or --api-key) and send `Authorization: Bearer <key>`",
                )
                await response(scope, receive, send)
                return
        elif admin or not is_public(path):
            token = bearer_token(scope)
            if token is None or not hmac.compare_digest(token, self.api_key):
                response = error_response(
                    401,
                    "unauthorized",
                    "missing API key: send `Authorization: Bearer <key>`" if token is None else "invalid API key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """413 for request bodies over ``limit`` bytes: by ``Content-Length`` at once, else while reading."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                response = error_response(
                    413,
                    "payload_too_large",
                    f"the request body is over {self.limit} bytes (SEMSEARCH_MAX_BODY_BYTES)",
                )
                await response(scope, receive, send)
                return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:  # a chunked body without Content-Length
                raise HTTPException(413, f"the request body is over {self.limit} bytes (SEMSEARCH_MAX_BODY_BYTES)")
            return message

        await self.app(scope, limited, send)


def _strict_utf8(raw: bytes) -> tuple[str | None, str | None]:
    """(text, None) for percent-encoded UTF-8, else (None, why) in the words used for bodies."""
    try:
        return unquote_to_bytes(raw).decode("utf-8"), None
    except UnicodeDecodeError as e:
        return None, f"is not valid UTF-8 once percent-decoded ({e.reason} at byte {e.start})"


def strict_query(query_string: bytes) -> tuple[list[tuple[str, str]], tuple[list[str], str] | None]:
    """The query string's parameters decoded strictly (``+`` is a space, as in forms), or the location
    (``["query", name]``) and the reason of the first one that is not UTF-8."""
    params: list[tuple[str, str]] = []
    for piece in query_string.split(b"&"):
        if not piece:
            continue
        raw_name, _, raw_value = piece.replace(b"+", b" ").partition(b"=")
        name, why = _strict_utf8(raw_name)
        if name is None:
            return [], (["query"], f"a parameter name {why}")
        value, why = _strict_utf8(raw_value)
        if value is None:
            return [], (["query", name[:100]], str(why))
        params.append((name, value))
    return params, None


class StrictUrlMiddleware:
    """422 (``invalid_input``, the body's wording) for a path or query string that is not UTF-8 once
    percent-decoded; otherwise the query string is handed on re-encoded from its strict decoding, so that
    what the routes read is exactly that (raw UTF-8 bytes included, which Starlette reads as Latin-1)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem: tuple[list[str], str] | None = None
        raw_path = scope.get("raw_path")
        if raw_path is not None:
            _, why = _strict_utf8(raw_path)
            problem = (["path"], why) if why is not None else None
        query_string: bytes = scope.get("query_string", b"")
        if problem is None and query_string:
            params, problem = strict_query(query_string)
            if problem is None:
                canonical = "&".join(f"{quote(n, safe='')}={quote(v, safe='')}" for n, v in params)
                scope = {**scope, "query_string": canonical.encode("ascii")}
        if problem is not None:
            loc, msg = problem
            where = ".".join(loc)  # as the routes' own errors name parameters: query.q, path
            response = error_response(
                422, "invalid_input", f"{where}: {msg}", [{"loc": loc, "msg": msg, "type": "string_unicode"}]
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class HeadMiddleware:
    """HEAD on a path with a GET route runs the GET and sends its status and headers (``Content-Length``
    included) without the body; on other paths HEAD gets the 404/405 it would get, also without a body.
    FastAPI's GET routes do not answer HEAD by themselves (405 while ``Allow`` lists HEAD)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        if "GET" in path_methods(scope["app"], scope["path"]):
            scope = {**scope, "method": "GET"}

        async def no_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app(scope, receive, no_body)
