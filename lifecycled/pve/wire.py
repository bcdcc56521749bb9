"""Wire facts shared by both adapters: paths, endpoint labels, answer decoding, error texts.

Everything here is pure: JSON in, port records or :class:`PveError` out (reference §2–§5).
"""

from __future__ import annotations

import functools
import http
import json
import re
from collections.abc import Collection, Mapping
from typing import Any

import attrs

from lifecycled.domain.actions import (
    Action,
    ActionSpec,
    BadParam,
    UnsupportedAction,
    normalize_booleans,
    spec_for,
    wire_params,
)
from lifecycled.domain.classify import classify_http
from lifecycled.domain.guests import is_ha_managed
from lifecycled.domain.op import GuestKind
from lifecycled.domain.upid import Upid, UpidError, is_upid
from lifecycled.errors import PveError, RequestNotSent
from lifecycled.pve import schema
from lifecycled.pve.port import (
    ClusterResource,
    GuestConfig,
    GuestStatus,
    NodeEntry,
    TaskEntry,
    TaskList,
    TaskStatus,
)

#: Reason texts of AnyEvent::HTTP's pseudo-statuses (proxmoxer ``ANYEVENT_HTTP_STATUS_CODES``).
ANYEVENT_REASONS = {
    595: "Errors during connection establishment, proxy handshake",
    596: "Errors during TLS negotiation, request sending and header processing",
    597: "Errors during body receiving or processing",
    598: "User aborted request via on_header or on_body",
    599: "Other, usually nonretryable, errors (garbled URL etc.)",
}

# --- endpoint labels (low cardinality: never a vmid, a UPID or a node name) ---------------

EP_TICKET = "/access/ticket"
EP_TASK_STATUS = "/nodes/{node}/tasks/{upid}/status"
EP_TASK_LOG = "/nodes/{node}/tasks/{upid}/log"
EP_TASK = "/nodes/{node}/tasks/{upid}"
EP_TASKS = "/nodes/{node}/tasks"
EP_GUEST_STATUS = "/nodes/{node}/{kind}/{vmid}/status/current"
EP_GUEST_CONFIG = "/nodes/{node}/{kind}/{vmid}/config"
EP_NODE_CONFIG = "/nodes/{node}/config"
EP_RESOURCES = "/cluster/resources"
EP_NODE_GUESTS = "/nodes/{node}/{kind}"
EP_NODE_STATUS = "/nodes/{node}/status"
EP_HA_RESOURCE = "/cluster/ha/resources/{sid}"
EP_VERSION = "/version"
EP_NODES = "/nodes"
EP_NODE_TIME = "/nodes/{node}/time"
EP_PERMISSIONS = "/access/permissions"

_KIND_PREFIX_RE = re.compile(r"^/(qemu|lxc)(?=/|$)")
_STATUS_ACTION_RE = re.compile(r"/status/[a-z]+$")


def dispatch_template(spec: ActionSpec) -> str:
    """The label of a lifecycle endpoint: ``/nodes/{node}/{kind}/{vmid}/status/{action}``…"""
    path = _KIND_PREFIX_RE.sub("/{kind}", spec.path)
    path = _STATUS_ACTION_RE.sub("/status/{action}", path)
    return "/nodes/{node}" + path


def dispatch_path(node: str, spec: ActionSpec, vmid: int, params: Mapping[str, Any]) -> str:
    """The real path of a lifecycle call below ``/api2/json``."""
    return f"/nodes/{node}{spec.endpoint(vmid, params)}"


def schema_template(spec: ActionSpec) -> str:
    """The path template of a lifecycle endpoint in Proxmox's schema
    (``/nodes/{node}/qemu/{vmid}/status/start``)."""
    return "/nodes/{node}" + spec.path


def action_endpoint(spec: ActionSpec) -> schema.Endpoint:
    """Proxmox's parameter schema of a lifecycle endpoint (path parameters included)."""
    return schema.endpoint(spec.method, schema_template(spec))


def boolean_params(spec: ActionSpec) -> frozenset[str]:
    """The endpoint's boolean parameters (Proxmox's names), from its schema."""
    return _booleans_of(spec.method, schema_template(spec))


@functools.cache
def _booleans_of(method: str, template: str) -> frozenset[str]:
    # The schema is fixed data: each endpoint's booleans are gathered once (per submission
    # and per POST they were a walk over every parameter of the endpoint).
    return schema.endpoint(method, template).booleans()


@attrs.frozen(kw_only=True)
class DispatchRequest:
    """One lifecycle call as both adapters send it."""

    method: str
    #: The real path below ``/api2/json``.
    path: str
    #: The low-cardinality endpoint label (metrics).
    template: str
    #: The parameters: in the query string for DELETE (Proxmox refuses a body there,
    #: §13.13), form-encoded in the body otherwise.
    form: dict[str, str]

    @property
    def in_query(self) -> bool:
        return self.method in ("GET", "DELETE")


def dispatch_request(
    node: str, spec: ActionSpec, vmid: int, params: Mapping[str, Any]
) -> DispatchRequest:
    """The request of a lifecycle call; booleans go out as ``1``/``0`` only (§13.7).

    A value that is no boolean where Proxmox expects one raises a permanent
    :class:`PveError` shaped like Proxmox's own 400 (nothing is sent).
    """
    path = dispatch_path(node, spec, vmid, params)
    try:
        form = wire_params(spec, vmid, params, booleans=boolean_params(spec))
    except BadParam as exc:
        raise http_error(
            400,
            "Parameter verification failed.",
            method=spec.method,
            path=path,
            errors={exc.name: exc.text},
            sent=False,
            action=str(spec.action),
        ) from None
    return DispatchRequest(
        method=spec.method, path=path, template=dispatch_template(spec), form=form
    )


def _booleans_for(action: Action, kind: GuestKind) -> frozenset[str]:
    try:
        return boolean_params(spec_for(kind, action))
    except UnsupportedAction:
        return frozenset()


def normalized_params(action: Action, kind: GuestKind, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` with the endpoint's booleans as JSON booleans (``"true"``/``"1"`` → true),
    as they are journaled; raises :class:`BadParam` for a value that is no boolean."""
    return normalize_booleans(params, _booleans_for(action, kind))


def guest_path(node: str, kind: GuestKind, vmid: int, tail: str) -> str:
    return f"/nodes/{node}/{kind}/{vmid}/{tail}"


def node_guests_path(node: str, kind: GuestKind) -> str:
    """``GET /nodes/{node}/qemu|lxc``, sent without parameters: no ``full`` (it would make
    the node query QMP on every running VM; LXC takes no ``full`` at all)."""
    return f"/nodes/{node}/{kind}"


def task_list_query(
    *,
    source: str,
    vmid: int | None,
    typefilter: str | None,
    since: int | None,
    userfilter: str | None,
    start: int,
    limit: int,
) -> dict[str, Any]:
    """The query of ``GET /nodes/{node}/tasks`` with Proxmox's own filter names (§4.3);
    filters that were not given are left out."""
    query = {
        "source": source,
        "vmid": vmid,
        "typefilter": typefilter,
        "since": since,
        "userfilter": userfilter,
        "start": start,
        "limit": limit,
    }
    return {k: v for k, v in query.items() if v is not None}


def task_path(upid: Upid, tail: str = "") -> str:
    """A task endpoint, always on the UPID's own node (reference §4.1)."""
    suffix = f"/{tail}" if tail else ""
    return f"/nodes/{upid.node}/tasks/{upid}{suffix}"


# --- error texts ---------------------------------------------------------------------------


def unsendable(
    path: str, query: Mapping[str, Any] | None, form: Mapping[str, Any] | None
) -> str | None:
    """Why a request cannot go to Proxmox exactly as built, or ``None`` (both adapters ask
    before anything is sent). Refused: a control character or lone surrogate in the path, a
    parameter name or a query value (HTTP libraries drop or reject them: ``pve1\n`` would
    silently become ``pve1``), and any text that is not UTF-8 encodable. Form values may
    hold newlines (a description)."""
    checks: list[tuple[str, str, bool]] = [("path", path, True)]
    for where, fields, strict_values in (("query", query, True), ("form", form, False)):
        for key, value in (fields or {}).items():
            checks.append((f"{where} field name", str(key), True))
            checks.append((f"{where} field {key!r}", str(value), strict_values))
    for what, text, strict in checks:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"{what} is not UTF-8 encodable: {exc.reason} ({text!r})"
        if strict and _CONTROL_RE.search(text):
            return f"{what} holds a control character ({text!r})"
    return None


_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def not_sent(method: str, template: str, reason: str) -> RequestNotSent:
    """The error for a request refused before anything was sent (the engine fails the op
    with the error class ``internal``)."""
    return RequestNotSent(f"{method} {template}: not sent, the request cannot be encoded: {reason}")


def first_line(text: str | None) -> str:
    """The first non-empty line of ``text``, stripped (Proxmox uses only that line)."""
    if not text:
        return ""
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def default_reason(status: int) -> str:
    """The standard phrase of a status code (or AnyEvent's text for 59x)."""
    if status in ANYEVENT_REASONS:
        return ANYEVENT_REASONS[status]
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def error_text(status: int, reason: str | None, message: Any) -> str:
    """The Proxmox error text: the body ``message`` (new servers) else the reason phrase."""
    if isinstance(message, str) and first_line(message):
        return first_line(message)
    return first_line(reason) or default_reason(status)


def errors_of(value: Any) -> dict[str, str]:
    """The ``errors`` object of an error body as text per parameter."""
    if not isinstance(value, Mapping):
        return {}
    return {str(k): first_line(str(v)) or str(v) for k, v in value.items()}


def http_error(
    status: int | None,
    reason: str,
    *,
    method: str,
    path: str,
    errors: Mapping[str, str] | None = None,
    sent: bool = True,
    action: str | None = None,
) -> PveError:
    """A :class:`PveError` whose class the domain classifier decides, once, here.

    ``action`` is the op's action for a lifecycle call (it decides "already satisfied"
    answers); ``None`` for every other call. Nothing downstream classifies again.
    """
    errs = dict(errors or {})
    return PveError(
        classify_http(status, reason, method=method, errors=errs, sent=sent, action=action),
        reason,
        status=status,
        method=method,
        path=path,
        errors=errs,
        sent=sent,
    )


def protocol_error(
    reason: str, *, method: str, path: str, status: int, action: str | None = None
) -> PveError:
    """An answer with a 2xx ``status`` that we cannot read (garbled, truncated, not a task id).

    For a write the server accepted the request, so a task may exist: the classifier says
    ambiguous. For a read it is a transient oddity (a proxy in the way, a truncated answer).
    """
    return http_error(status, reason, method=method, path=path, action=action)


# --- answers -------------------------------------------------------------------------------


def dispatch_result(data: Any, *, method: str, path: str, action: str) -> Upid | None:
    """A lifecycle call's ``data``: a UPID, or ``None`` (sync endpoints, ``background_delay``).

    Anything else is an answer we cannot read: the request was accepted and a task may run,
    so it is classified like any unreadable 2xx to a write (ambiguous: search the task list).
    """
    if data is None:
        return None
    if isinstance(data, str) and is_upid(data):
        return Upid.parse(data)
    shown = data if isinstance(data, str) else type(data).__name__
    raise protocol_error(
        f"unexpected answer instead of a task id: {shown[:200]!r}",
        method=method,
        path=path,
        status=200,
        action=action,
    )


def _int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return int(value) if isinstance(value, bool) else None
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return int(float(value))
        except (TypeError, ValueError):
            return None


def _float(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _str(value: Any) -> str | None:
    if value is None:
        return None
    return str(value)


def _flag(value: Any) -> bool:
    """Proxmox booleans: ``1``/``0``, ``"1"``/``"0"``, or JSON booleans."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _object(data: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise TypeError(f"{what}: expected an object, got {type(data).__name__}")
    return data


def _list(data: Any, what: str) -> list[Any]:
    if data is None:
        return []
    if not isinstance(data, list):
        raise TypeError(f"{what}: expected a list, got {type(data).__name__}")
    return data


def task_status_from(data: Any, upid: Upid) -> TaskStatus:
    """``tasks/{upid}/status`` (reference §4.1): ``status`` plus ``exitstatus`` once stopped."""
    obj = _object(data, "task status")
    status = _str(obj.get("status"))
    if status is None:
        raise ValueError("task status: no 'status' field")
    return TaskStatus(upid=upid, status=status, exitstatus=_str(obj.get("exitstatus")))


def task_log_from(data: Any) -> list[str]:
    """``tasks/{upid}/log``: ``[{"n": 1, "t": "…"}, …]`` in line order."""
    lines: list[tuple[int, str]] = []
    for i, item in enumerate(_list(data, "task log")):
        if isinstance(item, Mapping):
            n = _int(item.get("n"))
            lines.append((n if n is not None else i + 1, str(item.get("t", ""))))
        else:
            lines.append((i + 1, str(item)))
    lines.sort(key=lambda pair: pair[0])
    return [text for _, text in lines]


def task_list_from(data: Any, total: Any) -> TaskList:
    """``GET /nodes/{node}/tasks``; ``total`` is absent for an empty list (reference §12.2)
    and unknown (None) to a backend that sees only ``data`` (reference §13.9)."""
    items: list[TaskEntry] = []
    received = _list(data, "task list")
    for raw in received:
        if not isinstance(raw, Mapping):
            continue
        text = raw.get("upid")
        if not isinstance(text, str):
            continue
        try:
            upid = Upid.parse(text)
        except UpidError:
            continue  # a task we could never address; it cannot be ours either
        start = _int(raw.get("starttime"))
        items.append(
            TaskEntry(
                upid=upid,
                starttime=start if start is not None else upid.starttime,
                endtime=_int(raw.get("endtime")),
                status=_str(raw.get("status")),
            )
        )
    count = _int(total)
    if count is None and not received:
        count = 0  # Proxmox leaves ``total`` out of an empty listing
    return TaskList(items=tuple(items), total=count, received=len(received))


def guest_status_from(data: Any, vmid: int) -> GuestStatus:
    """``…/status/current`` (reference §5.1–5.2)."""
    obj = _object(data, "guest status")
    status = _str(obj.get("status"))
    if status is None:
        raise ValueError("guest status: no 'status' field")
    ha = obj.get("ha")
    ha_managed = False
    ha_state: str | None = None
    if isinstance(ha, Mapping) and _flag(ha.get("managed", 0)):
        ha_state = _str(ha.get("state"))
        ha_managed = is_ha_managed(ha_state or "started")
    got_vmid = _int(obj.get("vmid"))
    return GuestStatus(
        vmid=got_vmid if got_vmid is not None else vmid,
        status=status,
        qmpstatus=_str(obj.get("qmpstatus")),
        name=_str(obj.get("name")),
        lock=_str(obj.get("lock")) or None,
        template=_flag(obj.get("template", 0)),
        ha_managed=ha_managed,
        ha_state=ha_state,
        cpus=_float(obj.get("cpus")),
        maxmem=_int(obj.get("maxmem")),
        maxdisk=_int(obj.get("maxdisk")),
        uptime=_int(obj.get("uptime")),
        tags=_str(obj.get("tags")) or None,
    )


def node_guests_from(data: Any, only: Collection[int] | None = None) -> list[GuestStatus]:
    """``GET /nodes/{node}/qemu|lxc``: one live status per guest (items without a vmid or a
    status are skipped). No item carries ``ha``; QEMU items carry ``qmpstatus`` only with
    ``full=1`` (qemu-server ``vmstatus``), so theirs is ``None`` here. ``only``: the guests
    to read (the others are skipped unread: a node may list hundreds)."""
    out: list[GuestStatus] = []
    for raw in _list(data, "guest list"):
        if not isinstance(raw, Mapping):
            continue
        vmid = _int(raw.get("vmid"))
        if vmid is None or (only is not None and vmid not in only):
            continue
        if _str(raw.get("status")) is None:
            continue
        out.append(guest_status_from(raw, vmid))
    return out


#: The envelope around a listing, compact as pveproxy writes it or with Python's default
#: separators (``", "``, ``": "``), as the simulator writes it.
_LISTING_HEADS = (b'{"data":[', b'{"data": [')
_LISTING_TAIL = b"]}"
_BEFORE_ITEM = (b",", b"[", b", ")
_AFTER_ITEM = (b",", b"]")


#: A listing item's ``"vmid": N``, any N: the pattern of a big batch.
_LISTED_VMID = re.compile(rb'"vmid": ?([0-9]+)[,}]')
#: Up to this many members a batch finds its items with a pattern of its own vmids: the scan
#: passes the other guests' items in C (a 1,000-guest listing: 0.3 ms instead of 0.9 ms for
#: 5 members); past it, compiling that pattern costs more than the loop it saves.
OWN_PATTERN_MAX = 32


def _vmid_pattern(wanted: list[int]) -> re.Pattern[bytes]:
    """The pattern that finds the ``"vmid": N`` of every member (and, past
    :data:`OWN_PATTERN_MAX` members, of every guest; the others are skipped)."""
    if len(wanted) > OWN_PATTERN_MAX:
        return _LISTED_VMID
    return re.compile(rb'"vmid": ?(' + b"|".join(b"%d" % v for v in wanted) + rb")[,}]")


def listed_items(body: bytes, vmids: Collection[int]) -> list[Any] | None:
    """The items of ``vmids`` in a node's guest listing body (``{"data":[{…},…]}``), in
    listing order, decoded one by one instead of the whole listing (a node lists hundreds
    of guests, a batch's Check needs a few); the same dicts a full ``json.loads`` would
    give for them. ``None`` (decode the whole body instead) unless the body is provably
    that shape around each item:

    * the envelope's head and tail (compact, or with Python's default separators);
    * no backslash anywhere, so every ``"`` opens or closes a string and the parity of the
      quotes before a position tells whether it is inside one;
    * exactly one ``[`` and one ``]`` (in strings too): the envelope's data array, so a
      structural ``{`` right after a structural ``,`` or ``[`` is one of its items;
    * each member's ``"vmid":N`` occurs once, outside a string, inside an item with no
      other brace or bracket, and that item decodes to a dict whose ``vmid`` is ``N``.

    The other items are not decoded, so a fault in them goes unnoticed (a truncated or
    garbled body fails the envelope's head or tail and is decoded whole)."""
    wanted = sorted({v for v in vmids if type(v) is int and v >= 0})
    if (
        not wanted
        or not body.startswith(_LISTING_HEADS)
        or not body.endswith(_LISTING_TAIL)
        or b"\\" in body
        or body.count(b"[") != 1
        or body.count(b"]") != 1
    ):
        return None
    members = set(wanted)
    found: list[Any] = []
    seen: set[int] = set()
    quotes = 0  # quotes before ``mark``
    mark = 0
    for match in _vmid_pattern(wanted).finditer(body):
        vmid = int(match.group(1))
        if vmid not in members:
            continue  # another guest's item: not decoded, not checked
        start = body.rfind(b"{", 0, match.start())
        end = body.find(b"}", match.end() - 1)
        if vmid in seen or start < mark or end < 0:
            return None
        seen.add(vmid)
        quotes += body.count(b'"', mark, start)
        if quotes % 2 or body.count(b'"', start, match.start()) % 2:
            return None  # the brace or the key is inside a string
        inside = body.count(b'"', start, end)
        quotes += inside
        mark = end
        before = (
            body[start - 2 : start] if body[start - 1 : start] == b" " else body[start - 1 : start]
        )
        if inside % 2 or before not in _BEFORE_ITEM or body[end + 1 : end + 2] not in _AFTER_ITEM:
            return None
        item = body[start : end + 1]
        if item.count(b"{") != 1 or item.count(b"}") != 1:
            return None
        try:
            decoded = json.loads(item)
        except ValueError:
            return None
        if not isinstance(decoded, dict) or type(decoded.get("vmid")) is not int:
            return None
        if decoded["vmid"] != vmid:
            return None
        found.append(decoded)
    if len(seen) != len(wanted):
        return None  # a member not found this way (absent, or written otherwise): decode all
    return found


def guest_config_from(data: Any) -> GuestConfig:
    """``…/config``: the key/values and the ``digest`` (reference §5.3)."""
    obj = _object(data, "guest config")
    values = {str(k): v for k, v in obj.items() if k != "digest"}
    return GuestConfig(values=values, digest=str(obj.get("digest") or ""))


def cluster_resources_from(data: Any) -> list[ClusterResource]:
    """``/cluster/resources?type=vm`` (reference §5.4); other resource types are skipped."""
    out: list[ClusterResource] = []
    for raw in _list(data, "cluster resources"):
        if not isinstance(raw, Mapping):
            continue
        kind_text = raw.get("type")
        if kind_text not in ("qemu", "lxc"):
            continue
        vmid = _int(raw.get("vmid"))
        if vmid is None:
            ident = str(raw.get("id", ""))
            vmid = _int(ident.rpartition("/")[2])
        node = _str(raw.get("node"))
        if vmid is None or node is None:
            continue
        out.append(
            ClusterResource(
                vmid=vmid,
                kind=GuestKind(kind_text),
                node=node,
                status=_str(raw.get("status")) or "unknown",
                name=_str(raw.get("name")),
                lock=_str(raw.get("lock")) or None,
                template=_flag(raw.get("template", 0)),
                hastate=_str(raw.get("hastate")) or None,
                maxcpu=_float(raw.get("maxcpu")),
                maxmem=_int(raw.get("maxmem")),
                maxdisk=_int(raw.get("maxdisk")),
                tags=_str(raw.get("tags")) or None,
            )
        )
    return out


def mapping_from(data: Any, what: str) -> Mapping[str, Any]:
    return dict(_object(data, what))


def node_config_from(data: Any) -> tuple[str, str]:
    """``GET /nodes/{node}/config``: ``(description, digest)``."""
    obj = _object(data, "node config")
    return str(obj.get("description") or ""), str(obj.get("digest") or "")


def nodes_from(data: Any) -> list[NodeEntry]:
    """``GET /nodes``: one entry per cluster node (name and ``online``/``offline``/``unknown``)."""
    if not isinstance(data, list):
        raise TypeError("node list: not a list")
    out: list[NodeEntry] = []
    for raw in data:
        node = _str(_object(raw, "node entry").get("node"))
        if node:
            out.append(NodeEntry(node=node, status=_str(raw.get("status")) or "unknown"))
    return out


def node_time_from(data: Any) -> float:
    """``GET /nodes/{node}/time``: the node's clock as a Unix time."""
    value = _object(data, "node time").get("time")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError("node time: no time")
    return float(value)


def permissions_from(data: Any) -> dict[str, frozenset[str]]:
    """``GET /access/permissions``: ``{path: {privilege: 1}}`` → ``{path: privileges}``."""
    out: dict[str, frozenset[str]] = {}
    for path, privs in _object(data, "permissions").items():
        out[str(path)] = frozenset(str(p) for p in _object(privs, "privileges"))
    return out


_NO_SUCH_RESOURCE_RE = re.compile(r"no such (ha )?(resource|service)|does not exist", re.I)


def is_no_such_ha_resource(err: PveError) -> bool:
    """Whether an HA resource read failed because the guest is not HA-managed."""
    if err.status == 404:
        return True
    return err.status in (400, 500) and _NO_SUCH_RESOURCE_RE.search(err.text) is not None
