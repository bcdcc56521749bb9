"""The one error shape of the HTTP API and the middleware that guarantees it.

Every non-2xx answer is ``{"error": {"code": "<stable_snake_case>", "message": "...",
"details": {...}}}`` with ``Content-Type: application/json``: routing errors (404, 405),
aiohttp's own refusals (413), domain errors and unexpected failures alike. A traceback or an
HTML page never reaches a client; unexpected failures are logged with their traceback and
answered with ``internal_error``.

aiohttp's own protocol errors (a malformed request line, a header too long, a NUL in a
header) are answered by aiohttp's low-level server before any application code runs: its
public API lets us choose the logger (:func:`protocol_logger` turns each into one
``http.protocol_error`` line, without traceback and without the request's bytes) but not the
answer, which stays aiohttp's ``400`` in ``text/plain`` (see docs/HTTP_API.md, "Limits").
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from aiohttp.http import HttpProcessingError
from aiohttp.typedefs import Handler

from lifecycled.domain.cluster import WrongNode
from lifecycled.errors import (
    InvalidTransition,
    JournalError,
    JournalUnavailable,
    NotFound,
    OwnershipUnavailable,
    PolicyRefused,
    ValidationError,
)

log = logging.getLogger("lifecycled.web")

#: The logger handed to aiohttp's protocol (``AppRunner(logger=...)``).
PROTOCOL_LOGGER = "lifecycled.web.protocol"

#: Seconds a client should wait before retrying a 503.
RETRY_AFTER_SECONDS = 5

#: Codes for statuses aiohttp raises on its own (routing, body size, …).
_HTTP_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    411: "length_required",
    413: "body_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    431: "headers_too_large",
}


class ApiError(Exception):
    """An HTTP error answer: raised by handlers, turned into JSON by :func:`error_middleware`."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = dict(details or {})
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        return error_response(
            self.status, self.code, self.message, details=self.details, headers=self.headers
        )


def error_body(code: str, message: str, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON body of every error answer."""
    return {"error": {"code": code, "message": message, "details": dict(details or {})}}


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    details: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    return web.json_response(
        error_body(code, message, details), status=status, headers=dict(headers or {})
    )


def unavailable(code: str, message: str, **details: Any) -> ApiError:
    """A 503 with ``Retry-After``."""
    return ApiError(
        503,
        code,
        message,
        details=details,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def from_http_exception(exc: web.HTTPException) -> web.Response:
    """aiohttp's own HTTP errors (unknown route, wrong method, body too large) as JSON."""
    status = exc.status
    code = _HTTP_CODES.get(status, "http_error")
    headers: dict[str, str] = {}
    details: dict[str, Any] = {}
    message = exc.reason
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = sorted(exc.allowed_methods)
        headers["Allow"] = ", ".join(allowed)
        details["allowed_methods"] = allowed
        message = f"method {exc.method} is not allowed here; use {', '.join(allowed)}"
    elif status == 404:
        message = "no such endpoint; see /openapi.json for the routes"
    elif status == 413:
        message = "the request body is too large"
    return error_response(status, code, message, details=details, headers=headers)


def from_domain_error(exc: Exception) -> web.Response | None:
    """The answer for a domain error a handler did not map itself; ``None`` if not one."""
    if isinstance(exc, ValidationError):
        return error_response(422, exc.code, str(exc), details=exc.details)
    if isinstance(exc, NotFound):
        return error_response(404, "not_found", str(exc))
    if isinstance(exc, WrongNode):  # SPEC §7: another daemon serves the guest's node
        return error_response(421, exc.code, str(exc), details={"node": exc.node})
    if isinstance(exc, OwnershipUnavailable):  # no quorum, pmxcfs read-only, config locked
        return unavailable("ownership_unavailable", str(exc)).response()
    if isinstance(exc, PolicyRefused):
        # The target's state refuses the request (guest_not_managed, vmid_in_use,
        # unsupported_action): a conflict, not a malformed request. Nothing was written.
        return error_response(409, exc.code, str(exc))
    if isinstance(exc, InvalidTransition):
        return error_response(409, "invalid_state", str(exc))
    if isinstance(exc, JournalUnavailable):
        log.warning("web.journal_unavailable", extra={"error": str(exc)})
        return unavailable(
            "journal_unavailable", "the journal cannot write right now; retry later"
        ).response()
    if isinstance(exc, JournalError):
        log.error("web.journal_error", extra={"error": str(exc)})
        return error_response(500, "journal_error", "the journal failed; see the daemon log")
    return None


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure of ``handler`` into the JSON error shape."""
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return from_http_exception(exc)
    except Exception as exc:
        mapped = from_domain_error(exc)
        if mapped is not None:
            return mapped
        log.exception(
            "http.unhandled_error", extra={"method": request.method, "path": _template(request)}
        )
        return error_response(500, "internal_error", "internal error; see the daemon log")


def _template(request: web.Request) -> str:
    """The matched route's path template (never the raw path, which holds ids)."""
    route = request.match_info.route
    resource = route.resource
    if resource is None:
        return "<unmatched>"
    return resource.canonical


async def drop_server_header(_request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: no ``Server`` header (it names aiohttp's and Python's version)."""
    response.headers.pop("Server", None)


class _ProtocolErrorFilter(logging.Filter):
    """Turns aiohttp's "Error handling request" records of protocol errors into one line.

    The record's traceback and message (which quotes the offending request bytes) are
    dropped; what is kept is the error's class and status and the peer's address.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else None
        record.msg = "http.protocol_error"
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.error = type(exc).__name__
        record.status = exc.code
        record.remote = remote
        return True


def protocol_logger() -> logging.Logger:
    """The logger for aiohttp's protocol handler: protocol errors become one line each."""
    logger = logging.getLogger(PROTOCOL_LOGGER)
    if not any(isinstance(f, _ProtocolErrorFilter) for f in logger.filters):
        logger.addFilter(_ProtocolErrorFilter())
    return logger
