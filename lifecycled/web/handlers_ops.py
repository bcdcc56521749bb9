"""``/v1/ops`` and ``/v1/dead-letters``: thin handlers over the submission service and journal.

Every check that can reject a request (auth, shape, validation, guest resolution) runs before
the journal is written, so no 4xx answer ever leaves a row behind.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from lifecycled.domain.access import Role, required_role
from lifecycled.domain.actions import is_destructive
from lifecycled.domain.guests import PlacementMismatch
from lifecycled.domain.node import NodeRefused
from lifecycled.domain.op import Op
from lifecycled.domain.serialize import op_to_dict
from lifecycled.domain.states import OpState
from lifecycled.engine.services import NotADeadLetter, NotCancellable
from lifecycled.engine.submit import VMID_MAX, VMID_MIN, ProxmoxUnreachable, Submission
from lifecycled.errors import Conflict, NotFound, ValidationError
from lifecycled.journal import OpPage
from lifecycled.web.auth import request_actor, require_role
from lifecycled.web.errors import ApiError, unavailable
from lifecycled.web.handlers_node import node_refusal
from lifecycled.web.inputs import (
    ACTION_VALUES,
    DEFAULT_LIMIT,
    IDEMPOTENCY_HEADER,
    MAX_ID,
    MAX_LIMIT,
    STATE_VALUES,
    parse_action,
    parse_cursor,
    parse_limit,
    parse_query,
    parse_state,
    parse_submission,
    parse_vmid,
    path_id,
    read_json_object,
)
from lifecycled.web.routes import (
    Route,
    error,
    ok,
    path_param,
    query,
    ref,
    refuse_when_stopping,
    runtime_of,
    services_of,
)
from lifecycled.web.signing import require_signature

log = logging.getLogger("lifecycled.web")


def _page_body(page: OpPage) -> dict[str, Any]:
    return {"items": [op_to_dict(op) for op in page.items], "next_cursor": page.next_cursor}


def _op_response(op: Op, *, status: int = 200, **extra: Any) -> web.Response:
    return web.json_response(op_to_dict(op, **extra), status=status)


# --- handlers --------------------------------------------------------------------------------


async def submit_op(request: web.Request) -> web.Response:
    """``POST /v1/ops``: 202 for a new (or re-armed) op, 200 for a deduplicated one."""
    runtime = runtime_of(request)
    refuse_when_stopping(request)
    body = await read_json_object(request, runtime.settings.max_body_bytes)
    sub = parse_submission(body, request.headers.get(IDEMPOTENCY_HEADER), request_actor(request))

    async def authorize(sub: Submission) -> None:
        # Called once the submission is validated: a malformed one is refused before a
        # signature is checked (and audited), so a refusal never leaves an audit row of
        # unvalidated input. One predicate of "destructive" (the one signatures use): such
        # a submission needs admin.
        destructive = is_destructive(sub.action, sub.kind, sub.params)
        await require_role(
            request,
            required_role(request.method, Role.OPERATE, destructive=destructive),
            action=sub.action,
            vmid=sub.vmid,
            node=sub.node,
        )
        await require_signature(request, runtime, sub, sub.actor)

    try:
        result = await services_of(request).submit(sub, authorize=authorize)
    except NodeRefused as exc:
        raise node_refusal(exc) from None
    except PlacementMismatch as exc:
        raise ApiError(409, "placement_mismatch", str(exc), details=exc.details) from None
    except ProxmoxUnreachable as exc:
        raise unavailable("proxmox_unavailable", str(exc), **exc.details) from None
    except ValidationError as exc:
        raise ApiError(422, exc.code, str(exc), details=exc.details) from None
    except NotFound as exc:
        raise ApiError(404, "guest_not_found", str(exc), details={"vmid": sub.vmid}) from None
    except Conflict as exc:
        code = getattr(exc, "code", "idempotency_conflict")
        raise ApiError(409, code, str(exc)) from None
    op = result.op
    log.info(
        "http.op_submitted",
        extra={
            "op_id": op.id,
            "action": op.action,
            "vmid": op.guest.vmid,
            "node": op.guest.node,
            "actor": sub.actor,
            "deduplicated": result.deduplicated,
            "rearmed": result.rearmed,
        },
    )
    if result.deduplicated:
        return _op_response(op, deduplicated=True)
    response = _op_response(op, status=202, deduplicated=False)
    response.headers["Location"] = f"/v1/ops/{op.id}"
    return response


async def list_ops(request: web.Request) -> web.Response:
    """``GET /v1/ops``: newest first, filtered, cursor-paginated."""
    q = parse_query(
        request,
        {
            "state": parse_state,
            "vmid": parse_vmid,
            "action": parse_action,
            "limit": parse_limit,
            "cursor": parse_cursor,
        },
    )
    state = q.get("state")
    page = await services_of(request).journal.list_ops(
        state=OpState(state) if state is not None else None,
        vmid=q.get("vmid"),
        action=q.get("action"),
        limit=q.get("limit", DEFAULT_LIMIT),
        cursor=q.get("cursor"),
    )
    return web.json_response(_page_body(page))


async def get_op(request: web.Request) -> web.Response:
    """``GET /v1/ops/{id}``: the op with its history."""
    op_id = path_id(request)
    journal = services_of(request).journal
    op = await journal.get(op_id)
    history = await journal.history(op_id)
    return _op_response(op, history=history)


async def cancel_op(request: web.Request) -> web.Response:
    """``POST /v1/ops/{id}/cancel``: pending → cancelled; 409 in any other state."""
    try:
        change = await services_of(request).cancel(path_id(request), actor=request_actor(request))
    except NotCancellable as exc:
        raise ApiError(409, exc.code, str(exc), details={"state": str(exc.state)}) from None
    return _op_response(change.op)


async def list_dead_letters(request: web.Request) -> web.Response:
    """``GET /v1/dead-letters``: dead letters not yet discarded, newest first."""
    q = parse_query(request, {"action": parse_action, "limit": parse_limit, "cursor": parse_cursor})
    page = await services_of(request).journal.list_dead_letters(
        action=q.get("action"), limit=q.get("limit", DEFAULT_LIMIT), cursor=q.get("cursor")
    )
    return web.json_response(_page_body(page))


async def retry_dead_letter(request: web.Request) -> web.Response:
    """``POST /v1/dead-letters/{id}/retry``: back to pending; repeating it changes nothing."""
    op_id = path_id(request)
    runtime = runtime_of(request)
    refuse_when_stopping(request)
    actor = request_actor(request)

    async def signed(op: Op) -> None:
        await require_signature(request, runtime, _as_submission(op, actor), actor)

    try:
        change = await services_of(request).retry(op_id, actor=actor, authorize=signed)
    except NotADeadLetter as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    return _op_response(change.op)


def _as_submission(op: Op, actor: str) -> Submission:
    """What retrying ``op`` runs again: the signature gate's view of it."""
    return Submission(
        action=op.action,
        vmid=op.guest.vmid,
        kind=str(op.guest.kind),
        node=op.guest.node,
        params=op.params,
        idempotency_key=op.idempotency_key,
        actor=actor,
    )


async def discard_dead_letter(request: web.Request) -> web.Response:
    """``DELETE /v1/dead-letters/{id}``: leave the dead-letter listing (idempotent)."""
    try:
        change = await services_of(request).discard(path_id(request), actor=request_actor(request))
    except NotADeadLetter as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    return _op_response(change.op)


# --- routes and their OpenAPI description ----------------------------------------------------

_ID = path_param("id", "The op id.", {"type": "integer", "minimum": 1, "maximum": MAX_ID})
_LIMIT = query(
    "limit",
    f"Page size (default {DEFAULT_LIMIT}).",
    {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
)
_CURSOR = query(
    "cursor",
    "The next_cursor of the previous page.",
    {"type": "integer", "minimum": 1, "maximum": MAX_ID},
)
_ACTION = query("action", "Only ops of this action.", {"type": "string", "enum": ACTION_VALUES})
_STATE = query("state", "Only ops in this state.", {"type": "string", "enum": STATE_VALUES})
_VMID = query(
    "vmid", "Only ops of this guest.", {"type": "integer", "minimum": VMID_MIN, "maximum": VMID_MAX}
)
_KEY_HEADER = {
    "name": IDEMPOTENCY_HEADER,
    "in": "header",
    "required": False,
    "description": "The idempotency key, instead of the body field (both given must agree).",
    "schema": ref("IdempotencyKey"),
}
_UNAVAILABLE = error("lifecycled is shutting down or the journal cannot write.", retry_after=True)
_NOT_FOUND = error("No such op (or it is not a dead letter).")
_BAD_QUERY = error("Unknown, repeated or malformed query parameter (`invalid_query`).")

ROUTES: tuple[Route, ...] = (
    Route(
        method="POST",
        path="/v1/ops",
        role=Role.OPERATE,
        handler=submit_op,
        operation_id="submitOp",
        summary="Submit a lifecycle op",
        tag="ops",
        description=(
            "Journals the op before anything is sent to Proxmox. Resubmitting an "
            "idempotency key whose op is in flight or succeeded returns that op (200, "
            "`deduplicated: true`); resubmitting one whose op failed, was dead-lettered or "
            "cancelled re-arms it (202)."
        ),
        parameters=(_KEY_HEADER,),
        request_body={
            "required": True,
            "content": {"application/json": {"schema": ref("Submission")}},
        },
        responses={
            200: ok("Deduplicated: the op already holding this idempotency key.", "SubmittedOp"),
            202: ok(
                "Accepted: a new (or re-armed) op.",
                "SubmittedOp",
                headers={
                    "Location": {"description": "The op's URL.", "schema": {"type": "string"}}
                },
            ),
            400: error(
                "Malformed JSON or not UTF-8 (`malformed_json`), a repeated key "
                "(`duplicate_key`), a number beyond 64 bits or not finite (`invalid_number`), "
                "wrong types (`invalid_request`), unknown fields (`unknown_field`)."
            ),
            401: error(
                "Missing or invalid bearer token (`unauthorized`); with trusted keys "
                "configured, a destructive op without a valid fresh signature "
                "(`signature_required`, `signature_invalid`, `signature_expired`, "
                "`signature_version_unsupported`, `unknown_key`, `nonce_replayed`)."
            ),
            404: error(
                "The guest (or clone source) is not in the cluster (`guest_not_found`; give "
                "kind and node for a create)."
            ),
            409: error(
                "The state refuses it: the idempotency key is used by a different op "
                "(`idempotency_conflict`); the Idempotency-Key header and the idempotency_key "
                "field differ (`idempotency_key_mismatch`); a guest lifecycled does not manage "
                "(`guest_not_managed`: manage or adopt it first); a create/clone on a vmid "
                "owned by another guest (`vmid_in_use`); an action the guest's kind (read from "
                "Proxmox) does not have (`unsupported_action`) or params it does not take "
                "(`unsupported_params`); a managed guest named with another node or kind "
                "than its journal record (`placement_mismatch`, details per field); the node "
                "is decommissioned (`node_decommissioned`); the key was accepted by the "
                "lifecycled of the guest's previous node (`idempotency_key_used_elsewhere`)."
            ),
            421: error(
                "The guest is on a node of the cluster this lifecycled does not serve "
                "(`wrong_node`, `details.node` names it): send the request to that node's "
                "lifecycled. Nothing was written."
            ),
            413: error("The body is larger than max_body_bytes (`body_too_large`)."),
            422: error(
                "Invalid submission (`validation_failed`, details per field): a field or "
                "param with a control character, NUL or lone surrogate, a param the action's "
                "Proxmox endpoint does not take, a value of the wrong type, range or length, "
                "tags outside Proxmox's tag format; `reserved_tags`: tags naming an lcd.* tag "
                "(the guest's ownership record). Nothing was written."
            ),
            503: error(
                "lifecycled is shutting down or the journal cannot write; or the node is "
                "draining and refuses new start/create/clone and inbound migrate "
                "(`node_draining`); or Proxmox could not be read to resolve the guest "
                "(`proxmox_unavailable`).",
                retry_after=True,
            ),
        },
    ),
    Route(
        method="GET",
        path="/v1/ops",
        handler=list_ops,
        operation_id="listOps",
        summary="List ops, newest first",
        tag="ops",
        parameters=(_STATE, _VMID, _ACTION, _LIMIT, _CURSOR),
        responses={200: ok("One page of ops.", "OpPage"), 400: _BAD_QUERY},
    ),
    Route(
        method="GET",
        path="/v1/ops/{id}",
        handler=get_op,
        operation_id="getOp",
        summary="One op with its history",
        tag="ops",
        parameters=(_ID,),
        responses={200: ok("The op.", "OpWithHistory"), 404: _NOT_FOUND},
    ),
    Route(
        method="POST",
        path="/v1/ops/{id}/cancel",
        role=Role.OPERATE,
        handler=cancel_op,
        operation_id="cancelOp",
        summary="Cancel a pending op",
        tag="ops",
        description="Cancelling an already cancelled op answers 200 and changes nothing.",
        parameters=(_ID,),
        responses={
            200: ok("The cancelled op.", "Op"),
            404: _NOT_FOUND,
            409: error("The op is not pending (`invalid_state`)."),
            503: _UNAVAILABLE,
        },
    ),
    Route(
        method="GET",
        path="/v1/dead-letters",
        handler=list_dead_letters,
        operation_id="listDeadLetters",
        summary="List dead letters awaiting an operator",
        tag="dead-letters",
        parameters=(_ACTION, _LIMIT, _CURSOR),
        responses={200: ok("One page of dead letters.", "OpPage"), 400: _BAD_QUERY},
    ),
    Route(
        method="POST",
        path="/v1/dead-letters/{id}/retry",
        handler=retry_dead_letter,
        operation_id="retryDeadLetter",
        summary="Retry a dead letter (idempotent)",
        tag="dead-letters",
        description=(
            "Takes the dead letter back to pending with a fresh attempt count. Repeating "
            "the call answers the op again and changes nothing. With trusted keys "
            "configured, retrying a destructive op needs a fresh signature (v2, over an "
            "empty body)."
        ),
        parameters=(_ID,),
        responses={
            200: ok("The op.", "Op"),
            401: error(
                "Missing or invalid bearer token (`unauthorized`); with trusted keys "
                "configured, the retry of a destructive op without a valid fresh signature "
                "(`signature_required`, `signature_invalid`, `signature_expired`, "
                "`signature_version_unsupported`, `unknown_key`, `nonce_replayed`)."
            ),
            404: _NOT_FOUND,
            503: _UNAVAILABLE,
        },
    ),
    Route(
        method="DELETE",
        path="/v1/dead-letters/{id}",
        handler=discard_dead_letter,
        operation_id="discardDeadLetter",
        summary="Discard a dead letter (idempotent)",
        tag="dead-letters",
        description="The op stays in the journal (state dead_lettered) but leaves the listing.",
        parameters=(_ID,),
        responses={200: ok("The discarded dead letter.", "Op"), 404: _NOT_FOUND, 503: _UNAVAILABLE},
    ),
)
