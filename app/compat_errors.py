"""Errors on the compatible routes (``/v1/...``, ``/v2/...``) in the shape the OpenAI/Cohere SDKs parse.

Every error is first produced in the service's one shape, ``{"error": {"code", "message", "detail"}}``
(by the same handlers and guards as the native routes: auth, body limit, validation, overload, ...).
:class:`CompatErrorMiddleware` then rewrites the body of error responses on these paths to OpenAI's
``{"error": {"message", "type", "param", "code"}}``:

* ``code`` is the native code (``invalid_input``, ``model_not_found``, ``overloaded``, ...);
* ``type`` follows OpenAI's names (:data:`OPENAI_TYPES`);
* ``param`` is the request field at fault (``input``, ``model``, ``documents.3``...) or ``null``;
* a 422 becomes a 400, as OpenAI answers invalid requests; headers (``Retry-After``) are kept.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

COMPAT_PREFIXES = ("/v1/", "/v2/")

OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def openai_error(status: int, native: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI-style body for a native error object ``{"code", "message", "detail"}``."""
    detail = native.get("detail")
    param: str | None = None
    if isinstance(detail, dict) and isinstance(detail.get("param"), str):
        param = detail["param"]
    elif isinstance(detail, list) and detail and isinstance(detail[0], dict):
        loc = [str(p) for p in detail[0].get("loc", ())]
        if loc and loc[0] in ("body", "query", "path"):  # where in the request, not which field
            loc = loc[1:]
        param = ".".join(loc) or None
    kind = OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": native.get("message", ""), "type": kind, "param": param, "code": native.get("code")}}


def is_compat(path: str) -> bool:
    return path.startswith(COMPAT_PREFIXES)


class CompatErrorMiddleware:
    """Rewrites error bodies (status >= 400, JSON in the native shape) on the compatible paths."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_compat(scope["path"]):
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def send_wrapper(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                content_type = MutableHeaders(raw=list(message.get("headers", []))).get("content-type", "")
                if int(message["status"]) >= 400 and content_type.startswith("application/json"):
                    start = message  # hold it until the whole body is here
                    return
                await send(message)
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            await self._send_rewritten(start, b"".join(chunks), send)

        await self.app(scope, receive, send_wrapper)

    @staticmethod
    async def _send_rewritten(start: Message, body: bytes, send: Send) -> None:
        status = int(start["status"])
        try:
            data = json.loads(body)
            native = data["error"]
            if not isinstance(native, dict) or "code" not in native or "message" not in native:
                raise ValueError("not the native error shape")
        except (ValueError, KeyError, TypeError):
            new_body = body
        else:
            status = 400 if status == 422 else status
            new_body = json.dumps(openai_error(status, native)).encode()
        headers = MutableHeaders(raw=list(start.get("headers", [])))
        headers["content-length"] = str(len(new_body))
        await send({"type": "http.response.start", "status": status, "headers": headers.raw})
        await send({"type": "http.response.body", "body": new_body, "more_body": False})
