"""Request guards as ASGI middleware (so unknown routes and bad bodies are covered too).

Keys (:class:`ApiKeyMiddleware`):

* ``SEMSEARCH_API_KEY`` set: one all-powerful key (named ``api-key`` in the audit log). ``SEMSEARCH_KEYS_FILE``
  set: scoped keys (:mod:`app.keys`), each with scopes, collections and an optional rate limit. Both may be
  set. With either, every route except the public ones needs ``Authorization: Bearer KEY`` (the ``/v1``
  compatible routes too) or gets 401; the key is never logged, and compared in constant time.
* :func:`required_access` maps each request to a scope and a collection: a key without that scope or
  collection gets 403; a key over its rate limit gets 429 with ``Retry-After`` (that key alone).
* Admin routes (``/admin/...``, snapshots, creating collections) always need a key with the ``admin``
  scope: without any key configured they answer 403.
* Public: ``/health`` and the static web page and API docs (``/``, ``/static/...``, ``/docs``,
  ``/openapi.json``), which hold no data; the page asks for the key when the API needs one.

The URL, strictly (:class:`StrictUrlMiddleware`): the query string and the path are percent-decoded and
decoded as UTF-8 *strictly* (uvicorn and Starlette replace bad bytes with U+FFFD); invalid UTF-8, overlong
forms and encoded surrogates (``%ED%A0%80``) get the 422 a POST body gets, naming the parameter.

HEAD (:class:`HeadMiddleware`): every GET route answers HEAD with the GET's status and headers, no body.
"""

from __future__ import annotations

import hmac
import math
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote_to_bytes

from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_response, path_methods
from app.keys import ANONYMOUS, LEGACY, KeyRing, Principal

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


# a collection name: letters, digits, `_`, `-`, and dots between them (never `..`), at most 64 characters
COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$")
COLLECTION_NAME_MAX = 64
COLLECTIONS_PREFIX = "/collections/"
# the routes of the documents API (online writes): GET reads, every other method writes
DOCUMENTS_PREFIXES = ("/documents",)
PRINCIPAL_KEY = "semsearch.principal"  # scope entry: the request's Principal, for routes and the audit log
ACCESS_KEY = "semsearch.access"  # scope entry: the request's Access


@dataclass(frozen=True)
class Access:
    """What a request needs: a scope (None: any valid key) on a collection (None: none in particular)."""

    scope: str | None
    collection: str | None


def required_access(method: str, path: str, default_collection: str) -> Access | None:
    """The scope and collection a request needs, or None for a public route.

    ``/collections/{name}/...`` is the same route as the unprefixed one, on collection ``name``; the
    unprefixed routes act on the default (served) collection. GET ``/collections`` needs any valid key
    (it lists only what the key may see); ``PUT``/``DELETE /collections/{name}`` and every snapshot route
    are admin; ``/documents...``: GET and HEAD read, any other method writes (the online-write routes
    are covered by their path, whichever of them exist).
    """
    if is_public(path):
        return None
    collection = default_collection
    if path == "/collections" or path == "/collections/":
        return Access(None, None)
    if path.startswith(COLLECTIONS_PREFIX):
        name, _, rest = path[len(COLLECTIONS_PREFIX) :].partition("/")
        collection = name
        if not rest:
            return Access("read" if method in ("GET", "HEAD") else "admin", collection)
        if rest == "snapshots" or rest.startswith("snapshots/"):
            return Access("admin", collection)
        path = "/" + rest
    if path.startswith(ADMIN_PREFIX) or path == "/admin":
        return Access("admin", collection)
    if path.startswith(DOCUMENTS_PREFIXES):
        return Access("read" if method in ("GET", "HEAD") else "write", collection)
    return Access("read", collection)


class ApiKeyMiddleware:
    """401/403/429 before routing; CORS preflights pass (this middleware sits inside the CORS one).

    ``api_key`` is the single all-powerful key, ``keyring`` the scoped keys; with neither, requests are
    anonymous (read and write) and admin routes are refused. The request's :class:`Principal` and
    :class:`Access` are left in the ASGI scope for the routes and the audit log."""

    def __init__(
        self,
        app: ASGIApp,
        api_key: bytes | None,
        keyring: KeyRing | None = None,
        default_collection: str = "",
    ) -> None:
        self.app = app
        self.api_key = api_key
        self.keyring = keyring
        self.default_collection = default_collection

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        access = required_access(scope["method"], path, self.default_collection)
        scope[ACCESS_KEY] = access
        principal, response = self._authorize(scope, access)
        scope[PRINCIPAL_KEY] = principal
        if response is not None:
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _authenticate(self, token: bytes) -> Principal | None:
        if self.api_key is not None and hmac.compare_digest(token, self.api_key):
            return LEGACY
        return self.keyring.match(token) if self.keyring is not None else None

    def _authorize(self, scope: Scope, access: Access | None) -> tuple[Principal, Response | None]:
        if access is None:
            return ANONYMOUS, None
        if self.api_key is None and self.keyring is None:
            if access.scope == "admin":
                return ANONYMOUS, error_response(
                    403,
                    "admin_disabled",
                    "admin routes are disabled because no API key is configured; set SEMSEARCH_API_KEY "
                    "(or --api-key) or a keys file (SEMSEARCH_KEYS_FILE) and send `Authorization: Bearer <key>`",
                )
            return ANONYMOUS, None
        token = bearer_token(scope)
        principal = None if token is None else self._authenticate(token)
        if principal is None:
            return ANONYMOUS, error_response(
                401,
                "unauthorized",
                "missing API key: send `Authorization: Bearer <key>`" if token is None else "invalid API key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if access.scope is not None and not principal.may(access.scope):
            return principal, error_response(
                403,
                "forbidden",
                f"key {principal.name!r} does not have the {access.scope!r} scope needed for "
                f"{scope['method']} {scope['path']}",
                {"key": principal.name, "scope": access.scope},
            )
        if access.collection is not None and not principal.sees(access.collection):
            return principal, error_response(
                403,
                "forbidden",
                f"key {principal.name!r} may not use collection {access.collection!r}",
                {"key": principal.name, "collection": access.collection},
            )
        wait = self.keyring.throttle(principal) if self.keyring is not None else 0.0
        if wait > 0:
            retry = max(1, math.ceil(wait))
            return principal, error_response(
                429,
                "rate_limited",
                f"key {principal.name!r} is over its rate limit; retry after {retry} s",
                {"key": principal.name},
                {"Retry-After": str(retry)},
            )
        return principal, None


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
