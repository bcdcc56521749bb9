"""``GET /v1/audit``: the append-only audit log, filtered by guest, action, decision and
time, newest first (SPEC §4 "Audit log"); ``POST /v1/audit/prune``: its retention (admin)."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from lifecycled.audit import AuditPage, Decision
from lifecycled.domain.serialize import parse_rfc3339, rfc3339
from lifecycled.engine.submit import VMID_MAX, VMID_MIN
from lifecycled.web.auth import request_actor
from lifecycled.web.errors import ApiError
from lifecycled.web.inputs import (
    DEFAULT_LIMIT,
    MAX_ID,
    MAX_LIMIT,
    parse_cursor,
    parse_limit,
    parse_query,
    parse_vmid,
    read_json_object,
)
from lifecycled.web.routes import JSON, Route, error, ok, query, ref, runtime_of, services_of

DECISIONS = [str(d) for d in Decision]


def _decision(value: str) -> str:
    if value not in DECISIONS:
        raise ValueError(f"unknown decision {value!r}; one of {', '.join(DECISIONS)}")
    return value


#: An audit action name: ASCII letters, digits, - and _ (always used with ``fullmatch``).
ACTION_PATTERN = r"[A-Za-z0-9_\-]{1,64}"
_ACTION_RE = re.compile(ACTION_PATTERN)


def _word(value: str) -> str:
    if _ACTION_RE.fullmatch(value) is None:
        raise ValueError("must be a word of 1-64 ASCII letters, digits, - and _")
    return value


#: RFC 3339 ``date-time`` exactly (``fromisoformat`` alone also takes a space, week dates…).
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
    r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def _timestamp(value: str) -> float:
    try:
        if _RFC3339.fullmatch(value) is None:
            raise ValueError(value)
        return parse_rfc3339(value.upper())
    except (ValueError, OverflowError):
        raise ValueError("must be an RFC 3339 timestamp with a time zone") from None


def _audit_body(page: AuditPage) -> dict[str, Any]:
    return {"items": [r.to_dict() for r in page.items], "next_cursor": page.next_cursor}


async def list_audit(request: web.Request) -> web.Response:
    """``GET /v1/audit``: newest first, filtered by guest, action, decision and time."""
    q = parse_query(
        request,
        {
            "vmid": parse_vmid,
            "action": _word,
            "decision": _decision,
            "since": _timestamp,
            "until": _timestamp,
            "limit": parse_limit,
            "cursor": parse_cursor,
        },
    )
    page = await services_of(request).journal.list_audit(
        vmid=q.get("vmid"),
        action=q.get("action"),
        decision=q.get("decision"),
        since=q.get("since"),
        until=q.get("until"),
        limit=q.get("limit", DEFAULT_LIMIT),
        cursor=q.get("cursor"),
    )
    return web.json_response(_audit_body(page))


#: The longest retention a prune may name (100 years).
MAX_PRUNE_DAYS = 36500


async def prune_audit(request: web.Request) -> web.Response:
    """``POST /v1/audit/prune``: delete records older than ``older_than_days`` (audited)."""
    runtime = runtime_of(request)
    body = await read_json_object(request, runtime.settings.max_body_bytes)
    unknown = sorted(k for k in body if k != "older_than_days")
    if unknown:
        raise ApiError(
            400,
            "unknown_field",
            f"unknown field(s): {', '.join(unknown)}",
            details=dict.fromkeys(unknown, "unknown field"),
        )
    days = body.get("older_than_days")
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_PRUNE_DAYS:
        raise ApiError(
            400,
            "invalid_request",
            "the request body has the wrong shape",
            details={"older_than_days": f"must be a whole number from 1 to {MAX_PRUNE_DAYS}"},
        )
    record, before = await services_of(request).prune_audit(
        older_than=days * 86400.0, actor=request_actor(request)
    )
    assert record.snapshot is not None
    return web.json_response(
        {"pruned": record.snapshot["pruned"], "before": rfc3339(before), "audit": record.to_dict()}
    )


_LIMIT = query(
    "limit",
    f"Page size (default {DEFAULT_LIMIT}).",
    {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
)
_BAD_QUERY = error("Unknown, repeated or malformed query parameter (`invalid_query`).")

ROUTES: tuple[Route, ...] = (
    Route(
        method="GET",
        path="/v1/audit",
        handler=list_audit,
        operation_id="listAudit",
        summary="The audit log, newest first",
        tag="audit",
        description=(
            "Every destructive decision (allowed, refused, soft-deleted), LOST/found guests, "
            "ownership changes and node transitions, with the actor, the reason and a "
            "snapshot of the guest."
        ),
        parameters=(
            query(
                "vmid",
                "Only this guest.",
                {"type": "integer", "minimum": VMID_MIN, "maximum": VMID_MAX},
            ),
            query(
                "action",
                "Only this action (terminate, adopt, drain, …).",
                {"type": "string", "pattern": f"^{ACTION_PATTERN}$"},
            ),
            query("decision", "Only this decision.", {"type": "string", "enum": DECISIONS}),
            query("since", "At or after (RFC 3339).", {"type": "string", "format": "date-time"}),
            query("until", "Before (RFC 3339).", {"type": "string", "format": "date-time"}),
            _LIMIT,
            query(
                "cursor",
                "The next_cursor of the previous page.",
                {"type": "integer", "minimum": 1, "maximum": MAX_ID},
            ),
        ),
        responses={200: ok("One page of audit records.", "AuditPage"), 400: _BAD_QUERY},
    ),
    Route(
        method="POST",
        path="/v1/audit/prune",
        handler=prune_audit,
        operation_id="pruneAudit",
        summary="Delete audit records older than a retention (admin)",
        tag="audit",
        description=(
            "Deletes records older than `older_than_days` (at least 1); the prune itself is "
            "audited (decision `pruned`, action `audit_prune`). Needs the admin role."
        ),
        request_body={
            "required": True,
            "content": {
                JSON: {
                    "schema": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["older_than_days"],
                        "properties": {
                            "older_than_days": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": MAX_PRUNE_DAYS,
                                "description": "Delete records older than this many days.",
                            }
                        },
                    }
                }
            },
        },
        responses={
            200: {
                "description": "How many records were deleted, and the prune's own record.",
                "content": {
                    JSON: {
                        "schema": {
                            "type": "object",
                            "required": ["pruned", "before", "audit"],
                            "properties": {
                                "pruned": {"type": "integer", "minimum": 0},
                                "before": {"type": "string", "format": "date-time"},
                                "audit": ref("AuditRecord"),
                            },
                        }
                    }
                },
            },
            400: error(
                "Malformed JSON, an unknown field, or older_than_days not a whole number "
                "from 1 to 36500 (`invalid_request`)."
            ),
            413: error("The body is larger than max_body_bytes (`body_too_large`)."),
        },
    ),
)
