"""Reading requests: the JSON body (size-limited, strictly typed) and query filters.

Everything here raises :class:`~lifecycled.web.errors.ApiError` with status 400 (or 413) and
per-field ``details``; nothing here touches the journal, so a rejected request writes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from aiohttp import web

from lifecycled.domain.actions import Action
from lifecycled.domain.states import OpState
from lifecycled.engine.submit import VMID_MAX, VMID_MIN, Submission
from lifecycled.web.errors import ApiError

T = TypeVar("T")

#: SQLite's INTEGER range: a larger id can name no op.
MAX_ID = 2**63 - 1
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
IDEMPOTENCY_HEADER = "Idempotency-Key"


def bad_request(code: str, message: str, **details: str) -> ApiError:
    return ApiError(400, code, message, details=details)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def read_json_object(request: web.Request, max_bytes: int) -> dict[str, Any]:
    """The request body as a JSON object; 413 beyond ``max_bytes``, 400 when malformed."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise _too_large(max_bytes)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(max_bytes) from None
    if len(raw) > max_bytes:
        raise _too_large(max_bytes)
    if not raw.strip():
        raise bad_request("malformed_json", "the request body must be a JSON object")
    try:
        # NaN and Infinity are not JSON; a deeply nested body must not crash the parser.
        value = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise bad_request(
            "malformed_json", "the request body is not valid JSON", body=_short(exc)
        ) from None
    if not isinstance(value, dict):
        raise bad_request("malformed_json", "the request body must be a JSON object")
    return value


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(
        413,
        "body_too_large",
        f"the request body is larger than {max_bytes} bytes",
        details={"max_bytes": max_bytes},
    )


def _short(exc: BaseException) -> str:
    text = str(exc) if not isinstance(exc, RecursionError) else "nested too deeply"
    return text[:200]


# --- submissions ---------------------------------------------------------------------------

_SUBMISSION_FIELDS = frozenset({"action", "vmid", "kind", "node", "params", "idempotency_key"})


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_submission(body: Mapping[str, Any], header_key: str | None, actor: str) -> Submission:
    """A :class:`Submission` from a ``POST /v1/ops`` body; 400 on unknown fields or bad types.

    Values are only type-checked here; what they mean (a known action, a vmid in range, the
    params an action needs) is :func:`lifecycled.engine.submit.validate`'s job (422).
    """
    unknown = sorted(k for k in body if k not in _SUBMISSION_FIELDS)
    if unknown:
        raise ApiError(
            400,
            "unknown_field",
            f"unknown field(s): {', '.join(unknown)}",
            details=dict.fromkeys(unknown, "unknown field"),
        )
    details: dict[str, str] = {}
    action = body.get("action")
    if "action" not in body:
        details["action"] = "required"
    elif not isinstance(action, str):
        details["action"] = "must be a string"
    vmid = body.get("vmid")
    if "vmid" not in body:
        details["vmid"] = "required"
    elif not _is_int(vmid):
        details["vmid"] = "must be an integer"
    for name in ("kind", "node", "idempotency_key"):
        if body.get(name) is not None and not isinstance(body[name], str):
            details[name] = "must be a string or null"
    params = body.get("params")
    if params is None:
        params = {}
    elif not isinstance(params, dict):
        details["params"] = "must be an object"
    if details:
        raise ApiError(
            400, "invalid_request", "the request body has the wrong shape", details=details
        )
    body_key = body.get("idempotency_key")
    if header_key is not None and body_key is not None and header_key != body_key:
        raise bad_request(
            "idempotency_key_mismatch",
            f"the {IDEMPOTENCY_HEADER} header and the idempotency_key field differ; send one",
        )
    assert isinstance(action, str) and isinstance(vmid, int) and isinstance(params, dict)
    return Submission(
        action=action,
        vmid=vmid,
        kind=body.get("kind"),
        node=body.get("node"),
        params=params,
        idempotency_key=body_key if body_key is not None else header_key,
        actor=actor,
    )


# --- query strings and path ids -------------------------------------------------------------


def _enum_parser(name: str, allowed: list[str]) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in allowed:
            raise ValueError(f"unknown {name} {value!r}; one of {', '.join(allowed)}")
        return value

    return parse


def _int_parser(low: int, high: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        text = value.strip()
        if not text.isascii() or not text.lstrip("-").isdigit() or len(text) > 20:
            raise ValueError(f"must be an integer from {low} to {high}")
        number = int(text)
        if not low <= number <= high:
            raise ValueError(f"must be an integer from {low} to {high}")
        return number

    return parse


STATE_VALUES = [str(s) for s in OpState]
ACTION_VALUES = [str(a) for a in Action]
parse_state = _enum_parser("state", STATE_VALUES)
parse_action = _enum_parser("action", ACTION_VALUES)
parse_vmid = _int_parser(VMID_MIN, VMID_MAX)
parse_limit = _int_parser(1, MAX_LIMIT)
parse_cursor = _int_parser(1, MAX_ID)


def parse_query(
    request: web.Request, parsers: Mapping[str, Callable[[str], Any]]
) -> dict[str, Any]:
    """The known query parameters, parsed; 400 for an unknown, repeated or malformed one."""
    details: dict[str, str] = {}
    out: dict[str, Any] = {}
    for name in set(request.query.keys()):
        values = request.query.getall(name)
        if name not in parsers:
            details[name] = "unknown query parameter"
        elif len(values) > 1:
            details[name] = "given more than once"
        else:
            try:
                out[name] = parsers[name](values[0])
            except ValueError as exc:
                details[name] = str(exc)
    if details:
        raise ApiError(400, "invalid_query", "invalid query parameters", details=details)
    return out


def path_id(request: web.Request, name: str = "id") -> int:
    """A numeric path id; ids beyond SQLite's range name nothing (404)."""
    text = request.match_info[name]
    number = int(text) if text.isascii() and text.isdigit() and len(text) <= 19 else MAX_ID + 1
    if not 1 <= number <= MAX_ID:
        raise ApiError(404, "not_found", f"op {text[:30]} not found")
    return number
