"""One error shape for every failure: ``{"error": {"code", "message", "detail"}}``.

Core errors (:class:`semsearch.errors.SemsearchError`) keep their stable ``code`` and get an HTTP
status here; service-only conditions (overload, not ready, auth) are :class:`ApiError`. Anything
unexpected becomes a 500 with a generic message; the traceback goes to the log only.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from semsearch.errors import (
    CorruptIndexError,
    IndexNotFoundError,
    InvalidInputError,
    ModelLoadError,
    ModelMismatchError,
    SemsearchError,
)

log = logging.getLogger(__name__)

# most specific first: the first isinstance match wins
_CORE_STATUS: tuple[tuple[type[SemsearchError], int], ...] = (
    (InvalidInputError, 422),
    (IndexNotFoundError, 503),
    (ModelLoadError, 503),
    (ModelMismatchError, 409),
    (CorruptIndexError, 500),
)

_HTTP_CODES = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "overloaded",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(Exception):
    """A service-level error with its HTTP status (and headers such as ``Retry-After``)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        detail: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail
        self.headers = dict(headers or {})


class OverloadedError(ApiError):
    """The bounded queue is full: 429 with ``Retry-After``."""

    def __init__(self, what: str, limit: int, retry_after_s: int) -> None:
        super().__init__(
            429,
            "overloaded",
            f"the {what} queue is full ({limit} waiting); retry after {retry_after_s} s",
            {"queue": what, "max_queue": limit},
            {"Retry-After": str(retry_after_s)},
        )


def error_body(code: str, message: str, detail: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "detail": detail}}


def error_response(
    status: int, code: str, message: str, detail: Any = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message, detail), status_code=status, headers=dict(headers or {}))


def core_status(error: SemsearchError) -> int:
    """The HTTP status of a core error."""
    for cls, status in _CORE_STATUS:
        if isinstance(error, cls):
            return status
    return 500


# pydantic names a union member with a validator "function-after[valid_text(), str]": say "str"
_VALIDATED_MEMBER = re.compile(r"^function-(?:after|before|wrap|plain)\[.*, (\w+)\]$")


MAX_LOC_CHARS = 100  # a location part is a field name the client chose (an unknown key can be 1 MB)


def safe_loc_part(part: Any) -> str:
    """A location part as JSON-safe text of bounded length: a lone surrogate in a key the client sent
    (which the UTF-8 encoder of the response would refuse) is escaped, a long key cut."""
    text = _VALIDATED_MEMBER.sub(r"\1", str(part))
    if len(text) > MAX_LOC_CHARS:
        text = text[: MAX_LOC_CHARS - 3] + "..."
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def validation_detail(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Pydantic/FastAPI errors reduced to JSON-safe ``{loc, msg, type}`` (no echoed input)."""
    out = []
    for e in errors:
        kind = str(e.get("type", ""))
        loc = [safe_loc_part(p) for p in e.get("loc", ())]
        msg = str(e.get("msg", "")).removeprefix("Value error, ")
        if kind == "json_invalid" and loc[:1] == [
            "body"
        ]:  # FastAPI puts the byte offset in loc; say what happened instead
            offset = loc[1] if len(loc) > 1 else "?"
            loc, msg = (
                ["body"],
                f"is not valid JSON ({e.get('ctx', {}).get('error', msg)} at position {offset})",
            )
        out.append({"loc": loc, "msg": msg, "type": kind})
    return out


def invalid(loc: Sequence[str], msg: str, type_: str = "value_error") -> RequestValidationError:
    """A 422 in exactly the shape of FastAPI's own validation errors (for limits known at run time)."""
    return RequestValidationError([{"loc": tuple(loc), "msg": msg, "type": type_}])


async def _on_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.detail, exc.headers)


async def _on_core_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SemsearchError)
    status = core_status(exc)
    if status >= 500:
        log.error("%s %s failed: %s: %s", request.method, request.url.path, exc.code, exc.message)
    return error_response(status, exc.code, exc.message, exc.detail)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    detail = validation_detail(exc.errors())
    first = detail[0] if detail else {"loc": [], "msg": "invalid request"}
    where = ".".join(p for p in first["loc"] if p != "body") or "request body"
    message = f"{where}: {first['msg']}"
    if len(detail) > 1:
        message += f" (and {len(detail) - 1} more)"
    return error_response(422, "invalid_input", message, detail)


def unparsable_body_reason(error: BaseException) -> str:
    """Why a request body could not be parsed (FastAPI only says "There was an error parsing the body")."""
    if isinstance(error, UnicodeDecodeError):
        return f"is not valid UTF-8 ({error.reason} at byte {error.start})"
    if isinstance(error, RecursionError):
        return "is nested too deeply to parse"
    if isinstance(error, ValueError) and "digits" in str(error):
        return f"holds an integer with too many digits (at most {sys.get_int_max_str_digits()})"
    return f"could not be parsed ({type(error).__name__})"


def _leaf_routes(routes: Sequence[Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(prefix, route) of every route, looking into included routers."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            context = getattr(route, "include_context", None)
            yield from _leaf_routes(inner.routes, prefix + (getattr(context, "prefix", "") or ""))
        else:
            yield prefix, route


def path_methods(app: Any, path: str) -> set[str]:
    """Every method some route of ``app`` accepts on ``path`` (HEAD wherever GET is)."""
    methods: set[str] = set()
    for prefix, route in _leaf_routes(app.router.routes):
        regex, route_methods = getattr(route, "path_regex", None), getattr(route, "methods", None)
        if regex is None or not route_methods:
            continue
        # a prefix may hold parameters (/collections/{name}): matched as one path segment each
        head = re.match(re.sub(r"\\\{[^}]*\\\}", "[^/]+", re.escape(prefix)), path)
        if head is not None and regex.match(path[head.end() :]):
            methods |= set(route_methods)
    if "GET" in methods:
        methods.add("HEAD")
    return methods


def allowed_methods(request: Request) -> list[str]:
    """Every method some route accepts on this path (Starlette's 405 names only the first route's)."""
    return sorted(path_methods(request.app, request.url.path))


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    if status == 400 and exc.__cause__ is not None:  # FastAPI could not parse the body: a 422 like bad JSON
        msg = unparsable_body_reason(exc.__cause__)
        return error_response(
            422, "invalid_input", f"request body: {msg}", [{"loc": ["body"], "msg": msg, "type": "json_invalid"}]
        )
    headers = dict(exc.headers or {})
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "error"
    code = _HTTP_CODES.get(status, phrase.lower().replace(" ", "_"))
    message = exc.detail if isinstance(exc.detail, str) and exc.detail != phrase else phrase
    if status == 404:
        message = f"no route {request.url.path}; see /docs for the API"
    elif status == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
        headers["Allow"] = ", ".join(allowed_methods(request)) or headers.get("Allow", "")
    return error_response(status, code, message, None, headers)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error in %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal server error; the details are in the server log")


def install_error_handlers(app: FastAPI) -> None:
    """Route every error through the one JSON shape."""
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(SemsearchError, _on_core_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
