"""``/v1/guests``: the guests lifecycled knows, their ownership and desired state.

Every check that can reject a request (auth, shape, path, guest resolution in Proxmox) runs
before the journal is written: no 4xx ever leaves a row behind. ``GET /v1/guests`` carries an
ETag derived from the state hash of the guest set; ``If-None-Match`` with it answers 304.
"""

from __future__ import annotations

import hashlib
import logging
import re
from typing import Any

from aiohttp import web

from lifecycled.domain.access import Role
from lifecycled.domain.guests import (
    GuestOrigin,
    ObservedState,
    guest_to_dict,
    observed_from,
)
from lifecycled.domain.ownership import view_origin
from lifecycled.domain.text import shown
from lifecycled.engine.submit import VMID_MAX, VMID_MIN
from lifecycled.errors import InvalidTransition, NotFound, PveError, ValidationError
from lifecycled.journal.guests import Ownership
from lifecycled.web.auth import request_actor
from lifecycled.web.errors import ApiError, unavailable
from lifecycled.web.guest_schemas import SCHEMAS
from lifecycled.web.inputs import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    parse_limit,
    parse_query,
    parse_vmid,
    read_json_object,
    unknown_fields,
)
from lifecycled.web.routes import (
    Route,
    error,
    ok,
    path_param,
    query,
    refuse_when_stopping,
    runtime_of,
    services_of,
)

__all__ = ["ROUTES", "SCHEMAS"]

log = logging.getLogger("lifecycled.web")

ORIGINS = [str(o) for o in GuestOrigin]
OBSERVED = [str(o) for o in ObservedState]
_DESIRED_FIELDS = frozenset({"state"})
SCOPES = ["local", "cluster"]
NODE_RE = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?$")


def _choice(name: str, allowed: list[str]) -> Any:
    def parse(value: str) -> str:
        if value not in allowed:
            raise ValueError(f"unknown {name} '{shown(value)}'; one of {', '.join(allowed)}")
        return value

    return parse


def _bool(value: str) -> bool:
    if value not in ("true", "false"):
        raise ValueError("must be true or false")
    return value == "true"


def _path_vmid(request: web.Request) -> int:
    text = request.match_info["vmid"]
    number = int(text) if text.isascii() and text.isdigit() and len(text) <= 10 else -1
    if not VMID_MIN <= number <= VMID_MAX:
        raise ApiError(404, "guest_not_found", f"guest {shown(text, 30)} not found")
    return number


def _etag(listing_hash: str, request: web.Request) -> str:
    scope = hashlib.sha256(f"{listing_hash}|{request.query_string}".encode()).hexdigest()[:32]
    return f'"{scope}"'


# --- guests ----------------------------------------------------------------------------------


def _node_name(value: str) -> str:
    if not NODE_RE.match(value):
        raise ValueError("not a Proxmox node name")
    return value


async def list_guests(request: web.Request) -> web.StreamResponse:
    """``GET /v1/guests``: in vmid order, filtered, cursor-paginated; ETag / 304.
    ``scope=cluster``: every guest of the cluster from the shared record (SPEC §7)."""
    q = parse_query(
        request,
        {
            "origin": _choice("origin", ORIGINS),
            "observed": _choice("observed", OBSERVED),
            "drifted": _bool,
            "node": _node_name,
            "scope": _choice("scope", SCOPES),
            "limit": parse_limit,
            "cursor": parse_vmid,
        },
    )
    if q.get("scope") == "cluster":
        return await _cluster_guests(request, q)
    journal = services_of(request).journal
    state_hash, listing = await journal.guest_hashes()
    etag = _etag(listing, request)
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if etag in {t.strip() for t in request.headers.get("If-None-Match", "").split(",")}:
        return web.Response(status=304, headers=headers)
    origin, observed = q.get("origin"), q.get("observed")
    page = await journal.list_guests(
        origin=GuestOrigin(origin) if origin else None,
        observed=ObservedState(observed) if observed else None,
        drifted=q.get("drifted"),
        node=q.get("node"),
        limit=q.get("limit", DEFAULT_LIMIT),
        cursor=q.get("cursor"),
    )
    body = {
        "items": [guest_to_dict(g) for g in page.items],
        "next_cursor": page.next_cursor,
        "state_hash": state_hash,
    }
    return web.json_response(body, headers=headers)


async def _cluster_guests(request: web.Request, q: dict[str, Any]) -> web.Response:
    """The cluster view: one ``/cluster/resources`` read with the records in the tags."""
    services = services_of(request)
    cluster = services.guests.cluster
    if cluster is None:
        raise ApiError(404, "not_found", "no cluster view here")
    try:
        items = await cluster.view(node=q.get("node"))
    except PveError as exc:
        raise unavailable("proxmox_unavailable", f"Proxmox could not be read: {exc.text}") from None
    drifted = {g.vmid for g in (await services.journal.list_guests(drifted=True, limit=1000)).items}
    for item in items:
        item["observed_state"] = str(observed_from(item["status"], item["lock"]))
        item["drifted"] = item["vmid"] in drifted
    origin = q.get("origin")
    if origin is not None:
        items = [i for i in items if view_origin(i) == origin]
    if q.get("observed") is not None:
        items = [i for i in items if i["observed_state"] == q["observed"]]
    if q.get("drifted") is not None:
        items = [i for i in items if i["drifted"] is q["drifted"]]
    cursor = q.get("cursor")
    if cursor is not None:
        items = [i for i in items if i["vmid"] > cursor]
    limit = q.get("limit", DEFAULT_LIMIT)
    page = items[:limit]
    more = len(items) > limit
    return web.json_response(
        {
            "items": page,
            "next_cursor": page[-1]["vmid"] if more and page else None,
            "scope": "cluster",
        }
    )


async def get_guest(request: web.Request) -> web.Response:
    """``GET /v1/guests/{vmid}``: the guest with its config snapshot and open ops."""
    vmid = _path_vmid(request)
    journal = services_of(request).journal
    guest = await journal.find_guest(vmid)
    if guest is None:
        raise ApiError(404, "guest_not_found", f"guest {vmid} is not known to lifecycled")
    body = guest_to_dict(guest, detail=True)
    body["open_ops"] = [op.id for op in (await journal.open_ops_by_vmid()).get(vmid, [])]
    return web.json_response(body)


async def set_desired(request: web.Request) -> web.Response:
    """``PUT /v1/guests/{vmid}/desired``: ``{"state": "running" | "stopped"}``."""
    vmid = _path_vmid(request)
    runtime = runtime_of(request)
    refuse_when_stopping(request)
    body = await read_json_object(request, runtime.settings.max_body_bytes)
    unknown_fields(body, _DESIRED_FIELDS)
    state = body.get("state")
    if not isinstance(state, str):
        raise ApiError(
            400,
            "invalid_request",
            "the request body has the wrong shape",
            details={"state": "required: a string"},
        )
    try:
        guest = await services_of(request).set_desired(vmid, state, actor=request_actor(request))
    except ValidationError as exc:
        raise ApiError(
            422, "validation_failed", "invalid desired state", details=exc.details
        ) from None
    except NotFound as exc:
        raise ApiError(404, "guest_not_found", str(exc)) from None
    return web.json_response(guest_to_dict(guest))


def _ownership(result: Ownership) -> web.Response:
    return web.json_response({"guest": guest_to_dict(result.guest), "changed": result.changed})


async def _take(request: web.Request, origin: GuestOrigin) -> web.Response:
    vmid = _path_vmid(request)
    refuse_when_stopping(request)
    try:
        result = await services_of(request).take(vmid, origin, actor=request_actor(request))
    except NotFound as exc:
        raise ApiError(404, "guest_not_found", str(exc)) from None
    except PveError as exc:
        raise ApiError(
            502, "proxmox_error", f"Proxmox could not be read: {exc.text}", details={}
        ) from None
    return _ownership(result)


async def manage_guest(request: web.Request) -> web.Response:
    """``POST /v1/guests/{vmid}/manage``: full lifecycle (native), audited."""
    return await _take(request, GuestOrigin.NATIVE)


async def adopt_guest(request: web.Request) -> web.Response:
    """``POST /v1/guests/{vmid}/adopt``: managed, never hard-deleted; audited."""
    return await _take(request, GuestOrigin.ADOPTED)


async def release_guest(request: web.Request) -> web.Response:
    """``POST /v1/guests/{vmid}/release``: observed only from now on; audited."""
    vmid = _path_vmid(request)
    refuse_when_stopping(request)
    try:
        result = await services_of(request).release(vmid, actor=request_actor(request))
    except NotFound:
        raise ApiError(404, "guest_not_found", f"guest {vmid} is not known to lifecycled") from None
    except InvalidTransition as exc:
        raise ApiError(409, "guest_not_managed", str(exc)) from None
    return _ownership(result)


# --- routes ------------------------------------------------------------------------------------

_VMID = path_param(
    "vmid", "The guest's VMID.", {"type": "integer", "minimum": VMID_MIN, "maximum": VMID_MAX}
)
_LIMIT = query(
    "limit",
    f"Page size (default {DEFAULT_LIMIT}).",
    {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
)
_WRONG_NODE = error(
    "The guest is on a node of the cluster this lifecycled does not serve (`wrong_node`, "
    "`details.node` names it). Nothing was written."
)
_NOT_FOUND = error("lifecycled does not know this guest (`guest_not_found`).")
_STOPPING = error("lifecycled is shutting down or the journal cannot write.", retry_after=True)
_BAD_QUERY = error("Unknown, repeated or malformed query parameter (`invalid_query`).")
_OWNERSHIP_NOTE = (
    "Reads the guest from Proxmox first (config snapshot, digest, resources, real status, "
    "identity fingerprint), then records it with an audit record. The desired state becomes "
    "the real power state. Repeating the request changes nothing (`changed: false`)."
)
_OWNERSHIP_UNAVAILABLE = error(
    "lifecycled is shutting down (`shutting_down`), or the guest's ownership "
    "record cannot be written to its Proxmox tags (`ownership_unavailable`: no "
    "quorum, the config locked); nothing was written.",
    retry_after=True,
)


def _take_route(path: str, handler: Any, op_id: str, summary: str, note: str) -> Route:
    return Route(
        method="POST",
        path=path,
        handler=handler,
        operation_id=op_id,
        summary=summary,
        tag="guests",
        description=f"{note} {_OWNERSHIP_NOTE}",
        parameters=(_VMID,),
        responses={
            200: ok("The guest and whether anything changed.", "Ownership"),
            404: error("No such guest in the cluster (`guest_not_found`)."),
            502: error("Proxmox could not be read (`proxmox_error`)."),
            421: _WRONG_NODE,
            503: _OWNERSHIP_UNAVAILABLE,
        },
    )


ROUTES: tuple[Route, ...] = (
    Route(
        method="GET",
        path="/v1/guests",
        handler=list_guests,
        operation_id="listGuests",
        summary="Guests lifecycled knows, in vmid order",
        tag="guests",
        description=(
            "The ETag is derived from the state hash of the whole guest set (observed state "
            "and lock of each guest, plus node, ownership, desired state and drift) and the "
            "query: send it back in If-None-Match and an unchanged set answers 304."
        ),
        parameters=(
            query("origin", "Only guests of this ownership.", {"type": "string", "enum": ORIGINS}),
            query(
                "observed",
                "Only guests in this observed state.",
                {"type": "string", "enum": OBSERVED},
            ),
            query(
                "drifted",
                "Only managed guests whose config drifted (true) or did not (false).",
                {"type": "string", "enum": ["true", "false"]},
            ),
            query(
                "node", "Only guests on this node.", {"type": "string", "pattern": NODE_RE.pattern}
            ),
            query(
                "scope",
                "local (default): this daemon's journal; cluster: every guest of the cluster "
                "from the ownership records in the Proxmox tags and /cluster/resources.",
                {"type": "string", "enum": SCOPES},
            ),
            _LIMIT,
            query(
                "cursor",
                "The next_cursor (a vmid) of the previous page.",
                {"type": "integer", "minimum": VMID_MIN, "maximum": VMID_MAX},
            ),
        ),
        responses={
            200: ok(
                "One page of guests.",
                "GuestListing",
                headers={
                    "ETag": {"description": "The listing's ETag.", "schema": {"type": "string"}}
                },
            ),
            304: {"description": "Not modified: the ETag still holds."},
            400: _BAD_QUERY,
            404: error("scope=cluster with a node the cluster does not have (`not_found`)."),
        },
    ),
    Route(
        method="GET",
        path="/v1/guests/{vmid}",
        handler=get_guest,
        operation_id="getGuest",
        summary="One guest, with its config snapshot and open ops",
        tag="guests",
        parameters=(_VMID,),
        responses={200: ok("The guest.", "GuestDetail"), 404: _NOT_FOUND},
    ),
    Route(
        method="PUT",
        path="/v1/guests/{vmid}/desired",
        role=Role.OPERATE,
        handler=set_desired,
        operation_id="setDesiredState",
        summary="Set a managed guest's desired power state",
        tag="guests",
        description=(
            "Reconcile then holds it. A change bumps desired_generation and cancels pending "
            "reconcile ops aiming elsewhere; setting the same state changes nothing."
        ),
        parameters=(_VMID,),
        request_body={
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/DesiredBody"}}
            },
        },
        responses={
            200: ok("The guest.", "ManagedGuest"),
            400: error(
                "Malformed JSON (`malformed_json`, `duplicate_key`, `invalid_number`), unknown "
                "fields (`unknown_field`) or wrong types (`invalid_request`)."
            ),
            404: _NOT_FOUND,
            413: error("The body is larger than max_body_bytes (`body_too_large`)."),
            409: error("The guest is not managed (`guest_not_managed`)."),
            422: error("Not running/stopped (`validation_failed`)."),
            421: _WRONG_NODE,
            503: _OWNERSHIP_UNAVAILABLE,
        },
    ),
    _take_route(
        "/v1/guests/{vmid}/manage",
        manage_guest,
        "manageGuest",
        "Manage a guest (native: full lifecycle, destroy included)",
        "Ownership becomes native.",
    ),
    _take_route(
        "/v1/guests/{vmid}/adopt",
        adopt_guest,
        "adoptGuest",
        "Adopt a guest (managed; terminate only releases it)",
        "Ownership becomes adopted: never hard-deleted.",
    ),
    Route(
        method="POST",
        path="/v1/guests/{vmid}/release",
        handler=release_guest,
        operation_id="releaseGuest",
        summary="Release a managed guest (kept, observed only)",
        tag="guests",
        description=(
            "The guest is untouched in Proxmox. Pending reconcile ops are cancelled; other "
            "pending ops are refused when claimed. Releasing a released guest changes nothing."
        ),
        parameters=(_VMID,),
        responses={
            200: ok("The guest and whether anything changed.", "Ownership"),
            404: _NOT_FOUND,
            409: error("The guest is discovered, not managed (`guest_not_managed`)."),
            421: _WRONG_NODE,
            503: _OWNERSHIP_UNAVAILABLE,
        },
    ),
)
