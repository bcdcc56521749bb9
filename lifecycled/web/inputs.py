"""Reading requests: the JSON body (size-limited, strictly typed) and query filters.

Everything here raises :class:`~lifecycled.web.errors.ApiError` with status 400 (413, 415)
and per-field ``details``; nothing here touches the journal, so a rejected request writes
nothing. A body is ``application/json`` in UTF-8, one JSON object without a repeated key
(a signer reading the first ``action`` and the daemon the last must never disagree), whose
numbers are 64-bit integers or finite floats. Nothing a client sent is echoed unescaped.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from aiohttp import web

from lifecycled.domain.actions import Action
from lifecycled.domain.states import OpState
from lifecycled.domain.text import INT64_MAX, INT64_MIN, shown
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


class _BadNumber(ValueError):
    """A JSON number lifecycled cannot store: beyond 64 bits, NaN or infinite."""


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _reject_constant(name: str) -> Any:
    raise _BadNumber(f"{name} is not valid JSON")


def _bounded_int(text: str) -> int:
    if len(text) > 20:
        raise _BadNumber("an integer beyond 64 bits")
    number = int(text)
    if not INT64_MIN <= number <= INT64_MAX:
        raise _BadNumber("an integer beyond 64 bits")
    return number


def _finite_float(text: str) -> float | int:
    """A JSON number with a fraction or exponent; an integral one (``101.0``, ``1e3``) is the
    integer JSON Schema says it is."""
    number = float(text)
    if not math.isfinite(number):
        raise _BadNumber("a number too large for a float")
    if number.is_integer() and INT64_MIN <= number <= INT64_MAX:
        return int(number)
    return number


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


#: The request body's decoder, built once (``json.loads`` with hooks builds one per call):
#: no repeated key, no NaN or Infinity, 64-bit integers, finite floats.
_DECODER = json.JSONDecoder(
    object_pairs_hook=_unique_keys,
    parse_constant=_reject_constant,
    parse_int=_bounded_int,
    parse_float=_finite_float,
)


def _decode_json(text: str) -> Any:
    """``json.loads(text, …the hooks above…)``, BOM refusal included; a deeply nested body
    raises :class:`RecursionError` (the caller answers 400)."""
    if text.startswith("\ufeff"):
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    return _DECODER.decode(text)


JSON_MEDIA_TYPE = "application/json"


def require_json(request: web.Request) -> None:
    """415 unless the body is declared ``application/json`` (UTF-8, the only JSON charset)."""
    charset = (request.charset or "utf-8").lower()
    if request.content_type != JSON_MEDIA_TYPE or charset not in ("utf-8", "utf8"):
        raise ApiError(
            415,
            "unsupported_media_type",
            "the request body must be application/json (UTF-8)",
            details={"content_type": shown(request.headers.get("Content-Type", ""), 80)},
        )


async def read_json_object(request: web.Request, max_bytes: int) -> dict[str, Any]:
    """The request body as a JSON object; 413 beyond ``max_bytes``, 415 when not JSON, 400
    when malformed, with a repeated key or a number beyond 64 bits."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise body_too_large(max_bytes)
    require_json(request)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise body_too_large(max_bytes) from None
    if len(raw) > max_bytes:
        raise body_too_large(max_bytes)
    if not raw.strip():
        raise bad_request("malformed_json", "the request body must be a JSON object")
    try:
        value = _decode_json(raw.decode("utf-8"))
    except _DuplicateKey as exc:
        raise bad_request(
            "duplicate_key",
            "the request body repeats a key; send each key once",
            key=shown(exc.key),
        ) from None
    except _BadNumber as exc:
        raise bad_request(
            "invalid_number",
            "numbers must be 64-bit integers or finite floats",
            body=str(exc),
        ) from None
    except UnicodeDecodeError:
        raise bad_request("malformed_json", "the request body is not UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise bad_request(
            "malformed_json", "the request body is not valid JSON", body=_short(exc)
        ) from None
    if not isinstance(value, dict):
        raise bad_request("malformed_json", "the request body must be a JSON object")
    return value


def body_too_large(max_bytes: int) -> ApiError:
    return ApiError(
        413,
        "body_too_large",
        f"the request body is larger than {max_bytes} bytes",
        details={"max_bytes": max_bytes},
    )


def _short(exc: BaseException) -> str:
    text = str(exc) if not isinstance(exc, RecursionError) else "nested too deeply"
    return shown(text, 200)


#: Unknown fields named in an error answer (the rest are counted, never echoed).
_MAX_NAMED = 10


def unknown_fields(body: Mapping[str, Any], known: frozenset[str]) -> None:
    """400 ``unknown_field`` naming (escaped, at most ten of) the fields not in ``known``."""
    unknown = sorted(k for k in body if k not in known)
    if not unknown:
        return
    named = [shown(k) for k in unknown[:_MAX_NAMED]]
    more = len(unknown) - len(named)
    raise ApiError(
        400,
        "unknown_field",
        f"unknown field(s): {', '.join(named)}" + (f" and {more} more" if more else ""),
        details=dict.fromkeys(named, "unknown field"),
    )


# --- submissions ---------------------------------------------------------------------------

_SUBMISSION_FIELDS = frozenset({"action", "vmid", "kind", "node", "params", "idempotency_key"})


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_submission(body: Mapping[str, Any], header_key: str | None, actor: str) -> Submission:
    """A :class:`Submission` from a ``POST /v1/ops`` body; 400 on unknown fields or bad types.

    Values are only type-checked here; what they mean (a known action, a vmid in range, the
    params an action needs) is :func:`lifecycled.engine.submit.validate`'s job (422).
    """
    unknown_fields(body, _SUBMISSION_FIELDS)
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
        # 409: the request conflicts with itself (two keys); a schema cannot tie a header to
        # a body field, so this is declared as a conflict rather than a malformed request.
        raise ApiError(
            409,
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
            raise ValueError(f"unknown {name} '{shown(value)}'; one of {', '.join(allowed)}")
        return value

    return parse


_INT_QUERY = re.compile(r"-?[0-9]{1,19}")


def _int_parser(low: int, high: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        if _INT_QUERY.fullmatch(value) is None:
            raise ValueError(f"must be an integer from {low} to {high}")
        number = int(value)
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
            details[shown(name)] = "unknown query parameter"
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
        raise ApiError(404, "not_found", f"op {shown(text, 30)} not found")
    return number
