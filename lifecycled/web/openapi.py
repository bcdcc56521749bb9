"""The OpenAPI 3.1 document, built from the same :class:`Route` records as the router.

Component schemas describe exactly what the handlers send and accept (the op shape of
:func:`lifecycled.domain.serialize.op_to_dict`, the submission of SPEC §5, the error shape),
so the document can be used to fuzz the live server and to validate its answers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lifecycled.domain.access import SAFE_METHODS, required_role
from lifecycled.domain.actions import Action, UnsupportedAction, spec_for
from lifecycled.domain.classify import ErrorClass
from lifecycled.domain.node import NodeState
from lifecycled.domain.op import GuestKind, Origin
from lifecycled.domain.ownership import CLIENT_TAGS_PATTERN
from lifecycled.domain.states import OpState
from lifecycled.domain.text import FREE_TEXT_PATTERN, INT64_MAX, INT64_MIN, SINGLE_LINE_PATTERN
from lifecycled.engine.recover import RESULTS
from lifecycled.engine.submit import KEY_PATTERN, NODE_PATTERN, SIZE_PATTERN, VMID_MAX, VMID_MIN
from lifecycled.pve.params import (
    FREE_TEXT_PARAMS,
    MAX_KEY_LENGTH,
    MAX_PARAMS,
    MAX_VALUE_LENGTH,
    ParamSpec,
    allowed_params,
)
from lifecycled.web.guest_schemas import SCHEMAS as GUEST_SCHEMAS
from lifecycled.web.handlers_node import SCHEMAS as NODE_SCHEMAS
from lifecycled.web.routes import Route, error, ref

OPENAPI_VERSION = "3.1.0"

_NODE_PATTERN = f"^{NODE_PATTERN}$"
_KEY_PATTERN = f"^{KEY_PATTERN}$"


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


#: ``as_boolean``'s texts: true/false/1/0 in any case, blanks (not control characters) around.
_BLANK = "[ \\u00a0\\u1680\\u2000-\\u200a\\u202f\\u205f\\u3000]*"
_BOOLEAN_TEXT = f"^{_BLANK}(?:[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|[01]){_BLANK}$"

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
        "anyOf": _submission_variants(),
        "description": (
            "One variant per action and guest kind: `params` are flat scalars whose names "
            "are the Proxmox API parameters of the action's endpoint for that kind (either "
            "kind's when `kind` is omitted: the kind read later may refuse them, 409), plus `force_stop` (shutdown), "
            "`with_local_disks` (migrate, qemu) and `source_vmid` (clone)."
        ),
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
        "ParamBoolean": {
            "anyOf": [
                {"type": "boolean"},
                {"enum": [0, 1]},
                {"type": "string", "pattern": _BOOLEAN_TEXT},
            ],
            "description": "true/false, 1/0, or the texts true/false/1/0 (any case).",
        },
        "ParamText": _text(MAX_VALUE_LENGTH, free_text=False),
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


# --- the submission, per action and kind (lifecycled.pve.params) -------------------

#: Params an action cannot do without, and their exact form where lifecycled checks more than
#: Proxmox's schema says (engine.submit._action_params).
_REQUIRED: dict[Action, dict[str, dict[str, Any]]] = {
    Action.RESIZE: {
        "disk": {"type": "string", "minLength": 1},
        "size": {"type": "string", "pattern": f"^{SIZE_PATTERN}$"},
    },
    Action.MIGRATE: {"target": {"type": "string", "pattern": _NODE_PATTERN}},
    Action.CLONE: {"source_vmid": {}},
}
#: Configure params that are no config key by themselves (configure needs one more).
_CONFIGURE_CONTROL = ["digest", "background_delay"]


def _text(max_length: int, *, free_text: bool) -> dict[str, Any]:
    """A string param (which may also be given as a number, ``"memory": 512``)."""
    pattern = FREE_TEXT_PATTERN if free_text else SINGLE_LINE_PATTERN
    return {
        "anyOf": [
            {"type": "string", "maxLength": max_length, "pattern": pattern},
            {"type": "number", "minimum": INT64_MIN, "maximum": INT64_MAX},
        ]
    }


def _value(spec: ParamSpec, *, free_text: bool) -> dict[str, Any]:
    typ, max_length, minimum, maximum, enum, _ = spec
    if typ == "boolean":
        return ref("ParamBoolean")
    if typ in ("integer", "number"):
        out: dict[str, Any] = {"type": typ}
        low = max(INT64_MIN, minimum) if minimum is not None else INT64_MIN
        high = min(INT64_MAX, maximum) if maximum is not None else INT64_MAX
        out["minimum"], out["maximum"] = low, high
        return out
    if enum is not None:
        return {"type": "string", "enum": list(enum)}
    if max_length is None and not free_text:
        return ref("ParamText")
    return _text(max_length or MAX_VALUE_LENGTH, free_text=free_text)


def _upto(n: int) -> str:
    """A regex alternation of the decimal numbers 0..n (no leading zeros)."""
    digits = str(n)
    parts = [
        "[0-9]" if length == 1 else f"[1-9][0-9]{{{length - 1}}}"
        for length in range(1, len(digits))
    ]
    parts += _at_most(digits, first=len(digits) > 1)
    return "|".join(parts)


def _at_most(digits: str, *, first: bool) -> list[str]:
    """Alternatives for numbers of ``len(digits)`` digits up to ``digits``."""
    top, rest = int(digits[0]), digits[1:]
    low = 1 if first else 0
    if not rest:
        return [f"[{low}-{top}]"] if top >= low else []
    out = [f"[{low}-{top - 1}][0-9]{{{len(rest)}}}"] if top - 1 >= low else []
    return out + [digits[0] + alt for alt in _at_most(rest, first=False)]


def _params_schema(kind: GuestKind | None, action: Action) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    patterns: dict[str, Any] = {}
    for name, specs in allowed_params(kind, action).items():
        values = [_value(spec, free_text=name in FREE_TEXT_PARAMS) for spec in specs]
        unique = [v for i, v in enumerate(values) if v not in values[:i]]
        value = unique[0] if len(unique) == 1 else {"anyOf": unique}
        if name == "tags":  # Proxmox's tag format, and no lcd.* tag (engine.submit.validate)
            value = {"allOf": [value, {"type": "string", "pattern": CLIENT_TAGS_PATTERN}]}
        required = _REQUIRED.get(action, {}).get(name)
        if required:
            value = {"allOf": [value, required]}
        index_max = min((spec[5] for spec in specs if spec[5] is not None), default=None)
        if index_max is None:
            properties[name] = value
        else:
            patterns[f"^{name}(?:{_upto(index_max)})$"] = value
    schema: dict[str, Any] = {
        "type": "object",
        "maxProperties": MAX_PARAMS,
        "propertyNames": {"maxLength": MAX_KEY_LENGTH},
        "properties": properties,
        "additionalProperties": False,
    }
    if patterns:
        schema["patternProperties"] = patterns
    required_names = sorted(_REQUIRED.get(action, {}))
    if required_names:
        schema["required"] = required_names
    if action is Action.CONFIGURE:
        schema["not"] = {"propertyNames": {"enum": _CONFIGURE_CONTROL}}
    return schema


def _submission_variants() -> list[dict[str, Any]]:
    variants: list[dict[str, Any]] = []
    for action in Action:
        for kind in (*GuestKind, None):
            if kind is None and action is Action.CREATE:
                continue  # create needs the kind
            if (
                kind is not None
                and not allowed_params(kind, action)
                and not _supports(kind, action)
            ):
                continue
            required = ["action", "vmid"] + (["kind"] if kind is not None else [])
            if action in _REQUIRED or action is Action.CONFIGURE:
                required.append("params")
            kind_schema: dict[str, Any] = (
                {"type": "null"} if kind is None else {"type": "string", "const": str(kind)}
            )
            variants.append(
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": required,
                    "properties": {
                        "action": {"type": "string", "const": str(action)},
                        "vmid": {"type": "integer", "minimum": VMID_MIN, "maximum": VMID_MAX},
                        "kind": kind_schema,
                        "node": {
                            "anyOf": [
                                {"type": "string", "pattern": _NODE_PATTERN},
                                {"type": "null"},
                            ]
                        },
                        "params": _params_schema(kind, action),
                        "idempotency_key": {"anyOf": [ref("IdempotencyKey"), {"type": "null"}]},
                    },
                }
            )
    return variants


def _supports(kind: GuestKind, action: Action) -> bool:
    try:
        spec_for(kind, action)
    except UnsupportedAction:
        return False
    return True


def _operation(route: Route) -> dict[str, Any]:
    responses: dict[str, Any] = {str(code): dict(r) for code, r in sorted(route.responses.items())}
    if route.request_body is not None:
        responses.setdefault(
            "415",
            error("The body is not `application/json` in UTF-8 (`unsupported_media_type`)."),
        )
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
            error(
                "No token file is configured and the client is not loopback (`loopback_only`); "
                "the token's role does not cover this (`insufficient_scope`, details name "
                "`required_role`); a request from another origin (`cross_origin`)."
            ),
        )
    _door_responses(route, responses)
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
    if not route.public:
        op["x-lifecycled-role"] = str(required_role(route.method, route.role))
    return op


def _door_responses(route: Route, responses: dict[str, Any]) -> None:
    """The answers of the door (lifecycled.web.guard) that any route may give."""
    responses.setdefault("403", error("A request from another origin or site (`cross_origin`)."))
    responses.setdefault(
        "421",
        error("A loopback listener was reached under another name (`host_not_allowed`)."),
    )
    if route.method.upper() not in SAFE_METHODS:
        responses.setdefault(
            "408", error("The request body did not arrive within http_timeout (`request_timeout`).")
        )
        if not route.public:
            responses.setdefault(
                "429",
                error("Too many writes by this token (`rate_limited`).", retry_after=True),
            )


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
