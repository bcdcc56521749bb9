"""The wire format (reference §2, §6): envelopes, error answers, request parameters."""

from __future__ import annotations

import json
from collections.abc import Mapping
from email.utils import formatdate
from typing import Any

from aiohttp import web
from multidict import MultiMapping

from lifecycled.sim.errors import SimError

CONTENT_TYPE = "application/json;charset=UTF-8"


def _headers() -> dict[str, str]:
    return {
        "Server": "pve-api-daemon/3.0",
        "Cache-Control": "max-age=0",
        "Pragma": "no-cache",
        "Expires": formatdate(usegmt=True),
    }


def ok(data: Any, total: int | None = None) -> web.Response:
    """HTTP 200 ``{"data": …}`` (+ ``total`` only when non-zero, §12.2)."""
    body: dict[str, Any] = {"data": data}
    if total:
        body["total"] = total
    headers = _headers()
    headers["Content-Type"] = CONTENT_TYPE
    return web.Response(body=json.dumps(body).encode(), headers=headers)


def error(
    status: int,
    message: str,
    errors: Mapping[str, str] | None = None,
    *,
    empty: bool = False,
) -> web.Response:
    """An error: the first line of ``message`` is the reason phrase; the connection closes.

    The body is ``{"data": null, "message": "<text>\\n"}`` (+ ``errors``), or nothing for
    401s and pveproxy's 59x pseudo-statuses.
    """
    lines = message.splitlines()
    reason = lines[0] if lines else ""
    headers = _headers()
    body = b""
    if not empty:
        payload: dict[str, Any] = {"data": None}
        if errors:
            payload["errors"] = dict(errors)
        payload["message"] = message if message.endswith("\n") else message + "\n"
        body = json.dumps(payload).encode()
        headers["Content-Type"] = CONTENT_TYPE
    response = web.Response(status=status, reason=reason, body=body, headers=headers)
    response.force_close()
    return response


def from_sim_error(exc: SimError) -> web.Response:
    empty = exc.status == 401 or exc.status >= 595
    return error(exc.status, exc.message, exc.errors, empty=empty)


def _merge(target: dict[str, Any], source: MultiMapping[str]) -> None:
    for key in set(source.keys()):
        values = source.getall(key)
        target[key] = values[0] if len(values) == 1 else list(values)


def _plain(value: Any) -> Any:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return json.dumps(value)
    if value is None:
        return ""
    return str(value)


async def read_params(request: web.Request) -> dict[str, Any]:
    """Body (form or JSON) merged with the query string; query keys win (§6).

    A body on GET, HEAD or DELETE is refused with 501 ``Unexpected content`` (§13.13).
    """
    params: dict[str, Any] = {}
    if request.method in ("GET", "HEAD", "DELETE"):
        if request.body_exists and await request.read():
            raise SimError(501, "Unexpected content")
    elif request.can_read_body:
        if request.content_type == "application/json":
            try:
                body = await request.json()
            except ValueError:
                raise SimError(400, "malformed JSON string in request body") from None
            if not isinstance(body, dict):
                raise SimError(400, "JSON body must be an object")
            params.update({str(k): _plain(v) for k, v in body.items()})
        else:
            _merge(params, await request.post())  # type: ignore[arg-type]
    _merge(params, request.query)
    return params
