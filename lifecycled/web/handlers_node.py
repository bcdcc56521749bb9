"""``/v1/node``: the served node's lifecycle state, drain, undrain and decommission (SPEC §4).

Every change is validated and audited by the journal in one transaction; a refusal is a 409
with a stable code (and is audited too).
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from lifecycled.domain.node import NodeRecord, NodeRefused, NodeState
from lifecycled.domain.text import SINGLE_LINE_PATTERN, text_problem
from lifecycled.journal.nodes import NodeChange
from lifecycled.web.auth import request_actor
from lifecycled.web.errors import ApiError
from lifecycled.web.inputs import read_json_object, unknown_fields
from lifecycled.web.routes import JSON, Route, error, ok, ref, runtime_of, services_of
from lifecycled.web.signing import SIGNATURE_GATE_KEY

log = logging.getLogger("lifecycled.web")

_MAX_REASON = 500
_REASON_FIELDS = frozenset({"reason"})


def _info(request: web.Request, record: NodeRecord) -> dict[str, Any]:
    body = services_of(request).node_info(record)
    body["signatures_required"] = request.app[SIGNATURE_GATE_KEY].keys is not None
    return body


async def _reason(request: web.Request) -> str | None:
    """The optional ``{"reason": "..."}`` body; ``None`` (the default reason) when empty."""
    if not request.body_exists:
        return None
    raw = await request.read()
    if not raw.strip():
        return None
    body = await read_json_object(request, runtime_of(request).settings.max_body_bytes)
    unknown_fields(body, _REASON_FIELDS)
    reason = body.get("reason")
    if reason is None:
        return None
    if not isinstance(reason, str):
        raise ApiError(
            400,
            "invalid_request",
            "the request body has the wrong shape",
            details={"reason": "must be a string or null"},
        )
    problem = text_problem(reason, max_length=_MAX_REASON)
    if problem is not None:
        raise ApiError(422, "validation_failed", "invalid reason", details={"reason": problem})
    return reason or None


def _answer(request: web.Request, change: NodeChange, **details: Any) -> web.Response:
    runtime_of(request).gauges.node_record = change.record
    if change.refusal is not None:
        raise ApiError(
            409,
            change.refusal.code,
            change.refusal.reason,
            details={"state": str(change.record.state), **details},
        )
    body: dict[str, Any] = {
        "node": _info(request, change.record),
        "previous": str(change.previous),
        "changed": change.changed,
    }
    body.update(details)
    if change.changed:
        log.warning(
            "node.transition",
            extra={
                "node": change.record.node,
                "from": str(change.previous),
                "to": str(change.record.state),
                "actor": request_actor(request),
            },
        )
    return web.json_response(body)


async def get_node(request: web.Request) -> web.Response:
    """``GET /v1/node``: the served node's lifecycle state (the daemon serves it: asking
    registers a node it never saw, as its start does)."""
    record = await services_of(request).node_status(register=True, actor=request_actor(request))
    assert record is not None
    return web.json_response(_info(request, record))


async def drain_node(request: web.Request) -> web.Response:
    """``POST /v1/node/drain``: refuse new guests on the node (idempotent)."""
    reason = await _reason(request)
    change = await services_of(request).drain(actor=request_actor(request), reason=reason)
    return _answer(request, change)


async def undrain_node(request: web.Request) -> web.Response:
    """``POST /v1/node/undrain``: a draining node takes guests again (→ active)."""
    reason = await _reason(request)
    change = await services_of(request).undrain(actor=request_actor(request), reason=reason)
    return _answer(request, change)


async def decommission_node(request: web.Request) -> web.Response:
    """``POST /v1/node/decommission``: take a drained, empty node out of service for good."""
    reason = await _reason(request)
    change, unread = await services_of(request).decommission(
        actor=request_actor(request), reason=reason
    )
    details: dict[str, Any] = {"proxmox_checked": unread is None, "guests": list(change.guests)}
    if unread is not None:
        details["proxmox_warning"] = unread
    return _answer(request, change, **details)


# --- routes and their OpenAPI description ----------------------------------------------------

_TIMESTAMP = {"type": "string", "format": "date-time", "description": "RFC 3339 UTC."}
_STATE = {"type": "string", "enum": [str(s) for s in NodeState]}

#: Component schemas of these routes (merged into the OpenAPI document's ``components``).
SCHEMAS: dict[str, Any] = {
    "Node": {
        "type": "object",
        "required": [
            "node",
            "state",
            "since",
            "is_system",
            "first_seen",
            "reason",
            "age_seconds",
            "node_min_age_seconds",
            "signatures_required",
        ],
        "properties": {
            "node": {"type": "string"},
            "state": _STATE,
            "since": _TIMESTAMP,
            "is_system": {"type": "boolean"},
            "first_seen": _TIMESTAMP,
            "reason": {"type": "string"},
            "age_seconds": {"type": "number", "minimum": 0},
            "node_min_age_seconds": {"type": "number", "minimum": 0},
            "signatures_required": {
                "type": "boolean",
                "description": "Destructive submissions must be signed (trusted keys loaded).",
            },
        },
    },
    "NodeChange": {
        "type": "object",
        "required": ["node", "previous", "changed"],
        "properties": {
            "node": ref("Node"),
            "previous": _STATE,
            "changed": {"type": "boolean"},
            "proxmox_checked": {
                "type": "boolean",
                "description": "Decommission: whether Proxmox was read for guests on the node.",
            },
            "proxmox_warning": {"type": "string"},
            "guests": {"type": "array", "items": {"type": "integer"}},
        },
    },
    "NodeChangeRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "reason": {
                "type": ["string", "null"],
                "maxLength": _MAX_REASON,
                "pattern": SINGLE_LINE_PATTERN,
                "description": "Why (recorded in the audit log): one line, no control characters.",
            }
        },
    },
}

_BODY = {
    "required": False,
    "content": {JSON: {"schema": ref("NodeChangeRequest")}},
}
_BAD_BODY = error(
    "Malformed JSON (`malformed_json`, `duplicate_key`, `invalid_number`), unknown fields "
    "(`unknown_field`), a reason that is not a string (`invalid_request`)."
)
_BAD_REASON = error(
    "A reason longer than 500 characters or holding a control character, NUL or lone "
    "surrogate (`validation_failed`)."
)
_STATES = ", ".join(str(s) for s in NodeState)

ROUTES: tuple[Route, ...] = (
    Route(
        method="GET",
        path="/v1/node",
        handler=get_node,
        operation_id="getNode",
        summary="The served node's lifecycle state",
        tag="node",
        description=f"States: {_STATES}.",
        responses={200: ok("The node.", "Node")},
    ),
    Route(
        method="POST",
        path="/v1/node/drain",
        handler=drain_node,
        operation_id="drainNode",
        summary="Drain the node: refuse new start/create/clone and inbound migrate",
        tag="node",
        description=(
            "While draining, those submissions are answered 503 `node_draining` (audited); "
            "stop, shutdown, terminate and migrating away still work. Draining a draining "
            "node changes nothing."
        ),
        request_body=_BODY,
        responses={
            200: ok(
                "The node after the change (`changed: false` if it already drained).", "NodeChange"
            ),
            400: _BAD_BODY,
            422: _BAD_REASON,
            409: error(
                "The node cannot drain from its state (`node_decommissioned`, "
                "`invalid_node_transition`)."
            ),
        },
    ),
    Route(
        method="POST",
        path="/v1/node/undrain",
        handler=undrain_node,
        operation_id="undrainNode",
        summary="Undrain the node: it takes new guests again (→ active)",
        tag="node",
        request_body=_BODY,
        responses={
            200: ok("The node after the change (`changed: false` if it was active).", "NodeChange"),
            400: _BAD_BODY,
            422: _BAD_REASON,
            409: error("The node is not draining (`node_not_draining`)."),
        },
    ),
    Route(
        method="POST",
        path="/v1/node/decommission",
        handler=decommission_node,
        operation_id="decommissionNode",
        summary="Decommission the drained node (final)",
        tag="node",
        description=(
            "Refused (409, audited) unless the node is draining (`invalid_node_transition`), "
            "for a system node (`system_node`), a node first seen less than node_min_age ago "
            "(`node_too_young`) or while guests remain on it (`guests_remain`: managed guests "
            "in the journal and any guest Proxmox shows on the node)."
        ),
        request_body=_BODY,
        responses={
            200: ok("The decommissioned node.", "NodeChange"),
            400: _BAD_BODY,
            422: _BAD_REASON,
            409: error(
                "Refused: `invalid_node_transition`, `system_node`, `node_too_young`, "
                "`guests_remain`; `details` has the state and the remaining guests."
            ),
        },
    ),
)


#: Seconds a client should wait before retrying a submission refused by a draining node.
DRAINING_RETRY_AFTER = 60


def node_refusal(exc: NodeRefused) -> ApiError:
    """The answer to a submission the node's state refused: 503 while draining (it may end),
    409 once decommissioned (it will not)."""
    details = {"node_state": str(exc.state)}
    if exc.state is NodeState.DRAINING:
        return ApiError(
            503,
            exc.code,
            str(exc),
            details=details,
            headers={"Retry-After": str(DRAINING_RETRY_AFTER)},
        )
    return ApiError(409, exc.code, str(exc), details=details)
