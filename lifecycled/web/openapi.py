"""The OpenAPI 3.1 document, built from the same :class:`Route` records as the router.

Component schemas describe exactly what the handlers send and accept (the op shape of
:func:`lifecycled.domain.serialize.op_to_dict`, the submission of SPEC §5, the error shape),
so the document can be used to fuzz the live server and to validate its answers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lifecycled.domain.actions import Action
from lifecycled.domain.classify import ErrorClass
from lifecycled.domain.node import NodeState
from lifecycled.domain.op import GuestKind, Origin
from lifecycled.domain.states import OpState
from lifecycled.engine.recover import RESULTS
from lifecycled.engine.submit import VMID_MAX, VMID_MIN
from lifecycled.web.guest_schemas import SCHEMAS as GUEST_SCHEMAS
from lifecycled.web.handlers_node import SCHEMAS as NODE_SCHEMAS
from lifecycled.web.routes import Route, error, ref

OPENAPI_VERSION = "3.1.0"

_NODE_PATTERN = r"^[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?$"
_KEY_PATTERN = r"^[A-Za-z0-9._:\-]{1,200}$"


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


_TIMESTAMP = {"type": "string", "format": "date-time", "description": "RFC 3339 UTC."}
_STATES = [str(s) for s in OpState]
NODE_STATES = tuple(str(s) for s in NodeState)


def schemas() -> dict[str, Any]:
    """``components.schemas``."""
    guest = {
        "type": "object",
        "required": ["node", "kind", "vmid"],
        "properties": {
            "node": {"type": "string"},
            "kind": {"type": "string", "enum": [str(k) for k in GuestKind]},
            "vmid": {"type": "integer"},
        },
    }
    op_error = {
        "type": "object",
        "required": ["class", "message"],
        "properties": {
            "class": {"type": "string", "enum": [str(c) for c in ErrorClass]},
            "message": {"type": "string"},
        },
    }
    op_fields: dict[str, Any] = {
        "id": {"type": "integer", "minimum": 1},
        "idempotency_key": {"type": "string"},
        "action": {"type": "string", "enum": [str(a) for a in Action]},
        "guest": ref("Guest"),
        "params": {"type": "object"},
        "origin": {"type": "string", "enum": [str(o) for o in Origin]},
        "state": {"type": "string", "enum": _STATES},
        "attempts": {"type": "integer", "minimum": 0},
        "next_attempt_at": _nullable(_TIMESTAMP),
        "upid": {"type": ["string", "null"]},
        "exitstatus": {"type": ["string", "null"]},
        "error": _nullable(ref("OpError")),
        "created_at": _TIMESTAMP,
        "updated_at": _TIMESTAMP,
        "finished_at": _nullable(_TIMESTAMP),
    }
    op = {"type": "object", "required": list(op_fields), "properties": op_fields}
    history_entry = {
        "type": "object",
        "required": ["at", "from", "to", "reason", "attempt", "upid"],
        "properties": {
            "at": _TIMESTAMP,
            "from": {"anyOf": [{"type": "string", "enum": _STATES}, {"type": "null"}]},
            "to": {"type": "string", "enum": _STATES},
            "reason": {"type": "string"},
            "attempt": {"type": "integer", "minimum": 0},
            "upid": {"type": ["string", "null"]},
        },
    }
    submission = {
        "type": "object",
        "additionalProperties": False,
        "required": ["action", "vmid"],
        "properties": {
            "action": {"type": "string", "enum": [str(a) for a in Action]},
            "vmid": {"type": "integer", "minimum": VMID_MIN, "maximum": VMID_MAX},
            "kind": {
                "anyOf": [
                    {"type": "string", "enum": [str(k) for k in GuestKind]},
                    {"type": "null"},
                ],
                "description": "Resolved from Proxmox when omitted.",
            },
            "node": {
                "anyOf": [{"type": "string", "pattern": _NODE_PATTERN}, {"type": "null"}],
                "description": "Resolved from Proxmox when omitted.",
            },
            "params": {
                "type": "object",
                "description": (
                    "Action parameters: resize {disk, size}, migrate {target}, configure "
                    "{key: value…}, clone {source_vmid}, shutdown {force_stop}."
                ),
            },
            "idempotency_key": {
                "anyOf": [ref("IdempotencyKey"), {"type": "null"}],
                "description": "Or the Idempotency-Key header; absent: no deduplication.",
            },
        },
        "example": {
            "action": "start",
            "vmid": 101,
            "kind": "qemu",
            "node": "pve1",
            "params": {},
            "idempotency_key": "order-4711-start",
        },
    }
    page = {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {
            "items": {"type": "array", "items": ref("Op")},
            "next_cursor": {
                "type": ["integer", "null"],
                "description": "Pass as `cursor` for the next page; null on the last page.",
            },
        },
    }
    counts = {
        "type": "object",
        "required": _STATES,
        "properties": {s: {"type": "integer", "minimum": 0} for s in _STATES},
    }
    recover_counts: dict[str, Any] = {r: {"type": "integer", "minimum": 0} for r in RESULTS}
    recover_counts["duration_seconds"] = {"type": "number"}
    status = {
        "type": "object",
        "required": [
            "node",
            "node_state",
            "ready",
            "stopping",
            "started_at",
            "tracked_tasks",
            "recover",
            "queue",
            "dead_letters",
            "version",
        ],
        "properties": {
            "node": {"type": "string"},
            "node_state": {
                "anyOf": [{"type": "string", "enum": list(NODE_STATES)}, {"type": "null"}],
                "description": "The served node's lifecycle state (null before the first start).",
            },
            "ready": {"type": "boolean"},
            "stopping": {"type": "boolean"},
            "started_at": _nullable(_TIMESTAMP),
            "tracked_tasks": {"type": "integer", "minimum": 0},
            "recover": _nullable({"type": "object", "properties": recover_counts}),
            "queue": counts,
            "dead_letters": {"type": "integer", "minimum": 0},
            "version": {"type": "string"},
        },
    }
    err = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "details"],
                "properties": {
                    "code": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"},
                    "message": {"type": "string"},
                    "details": {"type": "object"},
                },
            }
        },
    }
    return {
        "Guest": guest,
        "OpError": op_error,
        "Op": op,
        "SubmittedOp": {
            "allOf": [
                ref("Op"),
                {
                    "type": "object",
                    "required": ["deduplicated"],
                    "properties": {"deduplicated": {"type": "boolean"}},
                },
            ]
        },
        "OpWithHistory": {
            "allOf": [
                ref("Op"),
                {
                    "type": "object",
                    "required": ["history"],
                    "properties": {"history": {"type": "array", "items": ref("HistoryEntry")}},
                },
            ]
        },
        "HistoryEntry": history_entry,
        "OpPage": page,
        "Submission": submission,
        "IdempotencyKey": {"type": "string", "pattern": _KEY_PATTERN},
        "Status": status,
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {
                "status": {"type": "string", "enum": ["ok", "ready", "degraded"]},
                "reason": {"type": "string"},
                "detail": {"type": ["string", "null"]},
                "since": {"type": ["string", "null"]},
            },
        },
        "Error": err,
        **NODE_SCHEMAS,
        **GUEST_SCHEMAS,
    }


def _operation(route: Route) -> dict[str, Any]:
    responses: dict[str, Any] = {str(code): dict(r) for code, r in sorted(route.responses.items())}
    if not route.public:
        responses.setdefault("401", error("Missing or invalid bearer token (`unauthorized`)."))
        responses.setdefault(
            "503",
            error(
                "The journal cannot be used right now (`journal_unavailable`).", retry_after=True
            ),
        )
        responses.setdefault(
            "403",
            error("No token file is configured and the client is not loopback (`loopback_only`)."),
        )
    op: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "tags": [route.tag],
        "responses": responses,
    }
    if route.description:
        op["description"] = route.description
    if route.parameters:
        op["parameters"] = [dict(p) for p in route.parameters]
    if route.request_body is not None:
        op["requestBody"] = dict(route.request_body)
    op["security"] = [] if route.public else [{"bearer": []}]
    return op


def build_document(routes: Iterable[Route], *, version: str) -> dict[str, Any]:
    """The OpenAPI document of ``routes``."""
    paths: dict[str, dict[str, Any]] = {}
    tags: dict[str, None] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
        tags[route.tag] = None
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "lifecycled",
            "version": version,
            "description": (
                "Crash-safe Proxmox VE guest lifecycle actions: every op is journaled before "
                "it touches Proxmox. Errors are always "
                '`{"error": {"code", "message", "details"}}`.'
            ),
        },
        "tags": [{"name": t} for t in tags],
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token from --api-token-file.",
                }
            },
        },
        "security": [{"bearer": []}],
    }
