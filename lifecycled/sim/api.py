"""The ``/api2/json`` routes: a table of (method, path regex, handler).

Paths not in the table answer 501 ``Method 'GET /x' not implemented``. Every ``/nodes/{node}/…``
path is checked against the node first: unknown → 500 (hostname lookup), offline → 595.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from lifecycled.domain.upid import Upid, UpidError
from lifecycled.pve import schema
from lifecycled.sim import configops, guestops, ha, power, views
from lifecycled.sim import params as pp
from lifecycled.sim.auth import Authenticator, AuthError
from lifecycled.sim.errors import BAD_UPID, NO_SUCH_TASK, SimError, param_error
from lifecycled.sim.records import Caller
from lifecycled.sim.simulator import Simulator
from lifecycled.sim.tasks import Task


@attrs.define(kw_only=True, eq=False)
class Ctx:
    sim: Simulator
    auth: Authenticator
    caller: Caller
    method: str
    params: dict[str, Any]
    args: dict[str, str]

    @property
    def node(self) -> str:
        return self.args["node"]

    @property
    def kind(self) -> str:
        return self.args["kind"]

    @property
    def vmid(self) -> int:
        return int(self.args["vmid"])


@attrs.frozen(kw_only=True)
class Reply:
    data: Any = None
    total: int | None = None


Handler = Callable[[Ctx], Awaitable[Reply]]


@attrs.frozen(kw_only=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    public: bool = False


ROUTES: list[Route] = []

_SEGMENTS = {
    "node": r"(?P<node>[^/]+)",
    "kind": r"(?P<kind>qemu|lxc)",
    "vmid": r"(?P<vmid>[^/]+)",
    "upid": r"(?P<upid>[^/]+)",
    "sid": r"(?P<sid>[^/]+)",
}


def route(method: str, template: str, *, public: bool = False) -> Callable[[Handler], Handler]:
    regex = template
    for name, part in _SEGMENTS.items():
        regex = regex.replace("{" + name + "}", part)

    def register(fn: Handler) -> Handler:
        ROUTES.append(
            Route(method=method, pattern=re.compile(f"^{regex}$"), handler=fn, public=public)
        )
        return fn

    return register


def find_route(method: str, path: str) -> tuple[Route, dict[str, str]] | None:
    for candidate in ROUTES:
        if candidate.method != method:
            continue
        m = candidate.pattern.fullmatch(path)
        if m is not None:
            return candidate, {k: v for k, v in m.groupdict().items() if v is not None}
    return None


def check_params(method: str, path: str, params: dict[str, Any], args: dict[str, str]) -> None:
    """Proxmox's schema check of a request (reference §13.7): 400 ``Parameter verification
    failed.`` with every problem — unknown names, types (booleans ``1``/``0`` only), ranges,
    patterns, enumerations, missing required ones. Path arguments count as parameters (and
    win). Endpoints outside the schema only get their ``{vmid}`` checked."""
    found = schema.match(method, path)
    if found is None:
        if "vmid" in args:
            pp.check({"vmid": args["vmid"]}, {"vmid": "vmid"})
        return
    ep, path_args = found
    errors = schema.check(ep, {**params, **path_args})
    if errors:
        raise param_error(errors)


# --- cluster-level -----------------------------------------------------------------------------


@route("POST", "/access/ticket", public=True)
async def _ticket(ctx: Ctx) -> Reply:
    try:
        return Reply(data=ctx.auth.login(ctx.params))
    except AuthError as exc:
        raise SimError(401, str(exc)) from None


@route("GET", "/version")
async def _version(ctx: Ctx) -> Reply:
    return Reply(data=views.version())


@route("GET", "/access/permissions")
async def _permissions(ctx: Ctx) -> Reply:
    return Reply(data=views.permissions(ctx.sim.cfg.token_privileges))


@route("GET", "/nodes")
async def _nodes(ctx: Ctx) -> Reply:
    return Reply(data=views.nodes_list(ctx.sim))


@route("GET", "/cluster/resources")
async def _resources(ctx: Ctx) -> Reply:
    return Reply(data=views.cluster_resources(ctx.sim, ctx.params))


@route("GET", "/cluster/tasks")
async def _cluster_tasks(ctx: Ctx) -> Reply:
    return Reply(data=[views.cluster_task(t) for t in ctx.sim.cluster_tasks])


@route("GET", "/cluster/nextid")
async def _nextid(ctx: Ctx) -> Reply:
    pp.check(ctx.params, {"vmid": "vmid"})
    wanted = pp.integer(ctx.params, "vmid")
    if wanted is not None:
        if wanted in ctx.sim.guests:
            word = "VM" if ctx.sim.guests[wanted].kind == "qemu" else "CT"
            raise param_error({"vmid": f"{word} {wanted} already exists"})
        return Reply(data=str(wanted))
    vmid = 100
    while vmid in ctx.sim.guests:
        vmid += 1
    return Reply(data=str(vmid))


@route("GET", "/cluster/ha/resources")
async def _ha_list(ctx: Ctx) -> Reply:
    return Reply(data=ha.ha_list(ctx.sim))


@route("POST", "/cluster/ha/resources")
async def _ha_add(ctx: Ctx) -> Reply:
    ha.ha_add(ctx.sim, ctx.params)
    return Reply()


@route("GET", "/cluster/ha/resources/{sid}")
async def _ha_get(ctx: Ctx) -> Reply:
    return Reply(data=ha.ha_get(ctx.sim, ctx.args["sid"]))


@route("PUT", "/cluster/ha/resources/{sid}")
async def _ha_put(ctx: Ctx) -> Reply:
    ha.ha_set(ctx.sim, ctx.args["sid"], ctx.params)
    return Reply()


@route("DELETE", "/cluster/ha/resources/{sid}")
async def _ha_delete(ctx: Ctx) -> Reply:
    ha.ha_delete(ctx.sim, ctx.args["sid"])
    return Reply()


# --- node-level --------------------------------------------------------------------------------


@route("GET", "/nodes/{node}/time")
async def _node_time(ctx: Ctx) -> Reply:
    return Reply(data=views.node_time(ctx.sim.cfg.clock_offset))


@route("GET", "/nodes/{node}/status")
async def _node_status(ctx: Ctx) -> Reply:
    return Reply(data=views.node_status(ctx.sim.nodes[ctx.node]))


@route("GET", "/nodes/{node}/config")
async def _node_config(ctx: Ctx) -> Reply:
    node = ctx.sim.nodes[ctx.node]
    data: dict[str, Any] = {"digest": node.config_digest()}
    if node.description:
        data["description"] = node.description
    return Reply(data=data)


@route("PUT", "/nodes/{node}/config")
async def _node_config_put(ctx: Ctx) -> Reply:
    """Node options (only ``description`` here), with the ``digest`` compare-and-swap."""
    node = ctx.sim.nodes[ctx.node]
    unknown = sorted(set(ctx.params) - {"description", "digest", "delete"})
    if unknown:
        raise param_error(dict.fromkeys(unknown, "property is not defined in schema"))
    digest = ctx.params.get("digest")
    if digest and str(digest) != node.config_digest():
        raise SimError(
            500, "detected modified configuration - file changed by other user? Try again."
        )
    if "description" in ctx.params:
        node.description = str(ctx.params["description"])
    if "description" in str(ctx.params.get("delete", "")):
        node.description = ""
    return Reply(data=None)


@route("GET", "/nodes/{node}/tasks")
async def _tasks(ctx: Ctx) -> Reply:
    book = ctx.sim.books[ctx.node]
    page, total = views.node_tasks(book.active, book.archive, ctx.params)
    return Reply(data=page, total=total)


def _task(ctx: Ctx) -> Task:
    """The task named by ``{upid}``, on *this* node's task files (§4.1)."""
    text = ctx.args["upid"]
    try:
        upid = Upid.parse(text)
    except UpidError:
        raise param_error({"upid": BAD_UPID}) from None
    task = ctx.sim.books[ctx.node].get(str(upid)) if upid.node == ctx.node else None
    if task is None:
        raise param_error({"upid": NO_SUCH_TASK})
    return task


@route("GET", "/nodes/{node}/tasks/{upid}")
async def _task_index(ctx: Ctx) -> Reply:
    _task(ctx)
    return Reply(data=[{"name": "log"}, {"name": "status"}])


@route("GET", "/nodes/{node}/tasks/{upid}/status")
async def _task_status(ctx: Ctx) -> Reply:
    return Reply(data=views.task_status(_task(ctx)))


@route("GET", "/nodes/{node}/tasks/{upid}/log")
async def _task_log(ctx: Ctx) -> Reply:
    try:
        task: Task | None = _task(ctx)
    except SimError as exc:
        if exc.errors != {"upid": NO_SUCH_TASK}:
            raise
        task = None  # §12.1: an unknown UPID's log is one line, not an error
    lines, total = views.task_log(task, ctx.params)
    return Reply(data=lines, total=total)


@route("DELETE", "/nodes/{node}/tasks/{upid}")
async def _task_stop(ctx: Ctx) -> Reply:
    ctx.sim.stop_task(_task(ctx))
    return Reply()


# --- guests ------------------------------------------------------------------------------------


@route("GET", "/nodes/{node}/{kind}")
async def _guest_list(ctx: Ctx) -> Reply:
    guests = [g for g in ctx.sim.guests.values() if g.node == ctx.node and g.kind == ctx.kind]
    return Reply(data=views.guest_list(guests, ctx.kind, ctx.params))


@route("POST", "/nodes/{node}/{kind}")
async def _create(ctx: Ctx) -> Reply:
    return Reply(data=await guestops.create(ctx.sim, ctx.caller, ctx.node, ctx.kind, ctx.params))


@route("GET", "/nodes/{node}/{kind}/{vmid}")
async def _guest_index(ctx: Ctx) -> Reply:
    ctx.sim.require_guest(ctx.node, ctx.kind, ctx.vmid)
    names = ("config", "pending", "status", "migrate", "resize", "clone", "snapshot", "firewall")
    return Reply(data=[{"subdir": n} for n in names])


@route("DELETE", "/nodes/{node}/{kind}/{vmid}")
async def _destroy(ctx: Ctx) -> Reply:
    upid = guestops.destroy(ctx.sim, ctx.caller, ctx.node, ctx.kind, ctx.vmid, ctx.params)
    return Reply(data=upid)


@route("GET", "/nodes/{node}/{kind}/{vmid}/status")
async def _status_index(ctx: Ctx) -> Reply:
    ctx.sim.require_guest(ctx.node, ctx.kind, ctx.vmid)
    return Reply(data=[{"subdir": "current"}, {"subdir": "start"}, {"subdir": "stop"}])


@route("GET", "/nodes/{node}/{kind}/{vmid}/status/current")
async def _status_current(ctx: Ctx) -> Reply:
    guest = ctx.sim.require_guest(ctx.node, ctx.kind, ctx.vmid)
    return Reply(data=views.status_current(guest))


_QEMU_ACTIONS = "start|stop|shutdown|reboot|reset|suspend|resume"
_LXC_ACTIONS = "start|stop|shutdown|reboot|suspend|resume"


async def _status_action(ctx: Ctx) -> Reply:
    action = ctx.args["action"]
    upid = power.status_action(
        ctx.sim, ctx.caller, ctx.node, ctx.kind, ctx.vmid, action, ctx.params
    )
    return Reply(data=upid)


ROUTES.append(
    Route(
        method="POST",
        pattern=re.compile(
            rf"^/nodes/(?P<node>[^/]+)/(?P<kind>qemu)/(?P<vmid>[^/]+)/status/(?P<action>{_QEMU_ACTIONS})$"
        ),
        handler=_status_action,
    )
)
ROUTES.append(
    Route(
        method="POST",
        pattern=re.compile(
            rf"^/nodes/(?P<node>[^/]+)/(?P<kind>lxc)/(?P<vmid>[^/]+)/status/(?P<action>{_LXC_ACTIONS})$"
        ),
        handler=_status_action,
    )
)


@route("GET", "/nodes/{node}/{kind}/{vmid}/config")
async def _config(ctx: Ctx) -> Reply:
    guest = ctx.sim.require_guest(ctx.node, ctx.kind, ctx.vmid)
    return Reply(data=views.config_view(guest, ctx.params))


@route("GET", "/nodes/{node}/{kind}/{vmid}/pending")
async def _pending(ctx: Ctx) -> Reply:
    guest = ctx.sim.require_guest(ctx.node, ctx.kind, ctx.vmid)
    return Reply(data=views.pending_view(guest))


@route("PUT", "/nodes/{node}/{kind}/{vmid}/config")
async def _config_put(ctx: Ctx) -> Reply:
    await configops.config_write(
        ctx.sim, ctx.caller, ctx.node, ctx.kind, ctx.vmid, ctx.params, post=False
    )
    return Reply()


@route("POST", "/nodes/{node}/qemu/{vmid}/config")
async def _config_post(ctx: Ctx) -> Reply:
    upid = await configops.config_write(
        ctx.sim, ctx.caller, ctx.node, "qemu", ctx.vmid, ctx.params, post=True
    )
    return Reply(data=upid)


@route("PUT", "/nodes/{node}/{kind}/{vmid}/resize")
async def _resize(ctx: Ctx) -> Reply:
    upid = await configops.resize(ctx.sim, ctx.caller, ctx.node, ctx.kind, ctx.vmid, ctx.params)
    return Reply(data=upid)


@route("POST", "/nodes/{node}/{kind}/{vmid}/migrate")
async def _migrate(ctx: Ctx) -> Reply:
    upid = guestops.migrate(ctx.sim, ctx.caller, ctx.node, ctx.kind, ctx.vmid, ctx.params)
    return Reply(data=upid)


@route("POST", "/nodes/{node}/{kind}/{vmid}/clone")
async def _clone(ctx: Ctx) -> Reply:
    upid = await guestops.clone(ctx.sim, ctx.caller, ctx.node, ctx.kind, ctx.vmid, ctx.params)
    return Reply(data=upid)
