"""Request guards as ASGI middleware (so unknown routes and bad bodies are covered too).

API key:

* ``SEMSEARCH_API_KEY`` set: every route except the public ones needs ``Authorization: Bearer KEY``
  (compared with ``hmac.compare_digest``; the key is never logged) or gets 401.
* Admin routes (``/admin/...``) always need a key: without a configured key they answer 403.
* Public: ``/health`` and the static web page and API docs (``/``, ``/static/...``, ``/docs``,
  ``/openapi.json``), which hold no data; the page asks for the key when the API needs one.
"""

from __future__ import annotations

import hmac

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_response

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
