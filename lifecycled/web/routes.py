"""Route declarations: one record per endpoint, read by both the router and the OpenAPI document.

A handler module exports ``ROUTES``: each :class:`Route` names its method, path template,
handler and the OpenAPI fragments (parameters, request body, responses). :func:`build_app`
adds them to the router and :mod:`lifecycled.web.openapi` documents the same records, so a
new module (guests, audit, node) is one more tuple in :data:`lifecycled.web.app.ROUTE_TABLES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
from aiohttp import web
from aiohttp.typedefs import Handler

from lifecycled.domain.access import Role
from lifecycled.engine.runtime import Runtime
from lifecycled.engine.services import Services
from lifecycled.web.errors import unavailable

RUNTIME_KEY = web.AppKey("runtime", Runtime)
#: The operations the API offers (:mod:`lifecycled.engine.services`; the CLI calls them too).
SERVICES_KEY = web.AppKey("services", Services)

JSON = "application/json"


@attrs.frozen(kw_only=True)
class Route:
    """One endpoint and its OpenAPI description."""

    method: str
    path: str
    handler: Handler
    operation_id: str
    summary: str
    tag: str
    #: No bearer token needed (health, readiness, metrics, the OpenAPI document).
    public: bool = False
    #: The role a token needs (``None``: ``read`` for GET, ``admin`` for any other method).
    role: Role | None = None
    description: str = ""
    parameters: tuple[Mapping[str, Any], ...] = ()
    request_body: Mapping[str, Any] | None = None
    #: Status code → OpenAPI response object (see :func:`ok` and :func:`error`).
    responses: Mapping[int, Mapping[str, Any]] = attrs.field(factory=dict)


def ref(name: str) -> dict[str, str]:
    """A reference to a schema of ``components.schemas``."""
    return {"$ref": f"#/components/schemas/{name}"}


def ok(
    description: str, schema: str, *, headers: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A JSON success response with a component schema."""
    out: dict[str, Any] = {"description": description, "content": {JSON: {"schema": ref(schema)}}}
    if headers:
        out["headers"] = dict(headers)
    return out


def error(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    """An error response: always the ``Error`` schema (with ``Retry-After`` for 503)."""
    out: dict[str, Any] = {"description": description, "content": {JSON: {"schema": ref("Error")}}}
    if retry_after:
        out["headers"] = {
            "Retry-After": {
                "description": "Seconds to wait before retrying.",
                "schema": {"type": "integer", "minimum": 0},
            }
        }
    return out


def query(name: str, description: str, schema: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": dict(schema),
    }


def path_param(name: str, description: str, schema: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": dict(schema),
    }


def runtime_of(request: web.Request) -> Runtime:
    return request.app[RUNTIME_KEY]


def services_of(request: web.Request) -> Services:
    return request.app[SERVICES_KEY]


def refuse_when_stopping(request: web.Request) -> None:
    """503 ``shutting_down`` for a write while the daemon stops (its answer would be lost)."""
    if request.app[RUNTIME_KEY].stopping.is_set():
        raise unavailable("shutting_down", "lifecycled is shutting down; retry on the next start")
