"""The simulator's control API under ``/_sim/`` (same port, no auth: it is a test tool).

JSON in, JSON out. Errors are ``{"error": "<text>"}`` with 400 (bad input) or 404 (no such
guest/node/fault/route).

==========================================  =====================================================
``GET    /_sim/state``                       nodes, guests (status, config, lock, node, ha …),
                                             tasks (with logs), faults, held lock files
``GET    /_sim/requests?since=SEQ``          ``{"items": [...], "last_seq": N}``: every
                                             non-control API request after SEQ (seq, time,
                                             method, path, params, user, status, reason, upid,
                                             fault)
``DELETE /_sim/requests``                    reset the request log
``GET    /_sim/faults``                      scripted faults still armed
``POST   /_sim/faults``                      arm one: ``{"method": "POST", "path": "regex",
                                             "count": 1, "status": 500, "reason": "...",
                                             "errors": {...}, "delay": 0.5, "drop": false,
                                             "execute": false, "exitstatus": "...",
                                             "effect": null, "task_seconds": null}``
``DELETE /_sim/faults[/{id}]``               disarm all / one
``POST   /_sim/nodes/{node}/offline``        ``{"offline": true, "crash": false}``
``POST   /_sim/guests``                      create: ``{"vmid", "kind", "node", "status",
                                             "config"}``
``DELETE /_sim/guests/{vmid}``               delete a guest
``POST   /_sim/guests/{vmid}/status``        ``{"status": "running|stopped|paused|prelaunch|hibernated"}``
``POST   /_sim/guests/{vmid}/config``        ``{"set": {...}, "delete": [...]}``
``POST   /_sim/guests/{vmid}/lock``          ``{"lock": "backup", "seconds": 5}`` (null = held)
``DELETE /_sim/guests/{vmid}/lock``          clear the config lock
``POST   /_sim/guests/{vmid}/lockfile``      ``{"seconds": 2}``: hold the lock *file*
``POST   /_sim/guests/{vmid}/move``          ``{"node": "pve2"}``
``POST   /_sim/guests/{vmid}/ha``            ``{"state": "started"}`` (null = unmanaged)
``POST   /_sim/guests/{vmid}/acpi``          ``{"responds": false}``
``POST   /_sim/tasks/archive``               run the archiver now
``POST   /_sim/resources/sample``            pvestatd's sample now (``/cluster/resources``)
``POST   /_sim/tasks/rotate``                ``{"node": null, "keep": 0}`` → ``{"rotated": N}``
``POST   /_sim/tasks/kill``                  ``{"upid": "..."}``: worker dies (unexpected status)
==========================================  =====================================================
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from lifecycled.sim import views
from lifecycled.sim.faults import fault_from_json
from lifecycled.sim.simulator import Simulator

Json = dict[str, Any]
ControlFn = Callable[[Simulator, dict[str, str], Json, web.Request], Awaitable[Any]]

_ROUTES: list[tuple[str, re.Pattern[str], ControlFn]] = []


def _route(method: str, pattern: str) -> Callable[[ControlFn], ControlFn]:
    def register(fn: ControlFn) -> ControlFn:
        _ROUTES.append((method, re.compile(f"^/_sim{pattern}$"), fn))
        return fn

    return register


class ControlError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


async def dispatch(sim: Simulator, request: web.Request) -> web.Response:
    """Serve one ``/_sim/…`` request."""
    for method, pattern, fn in _ROUTES:
        m = pattern.fullmatch(request.path)
        if m is None or method != request.method:
            continue
        try:
            body: Json = {}
            if request.can_read_body:
                raw = await request.text()
                if raw.strip():
                    loaded = json.loads(raw)
                    if not isinstance(loaded, dict):
                        raise ControlError(400, "body must be a JSON object")
                    body = loaded
            result = await fn(sim, m.groupdict(), body, request)
        except ControlError as exc:
            return web.json_response({"error": str(exc)}, status=exc.status)
        except KeyError as exc:
            return web.json_response({"error": str(exc.args[0] if exc.args else exc)}, status=404)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(result if result is not None else {"ok": True})
    return web.json_response(
        {"error": f"no control route {request.method} {request.path}"}, status=404
    )


def _vmid(args: dict[str, str]) -> int:
    return int(args["vmid"])


@_route("GET", "/?")
async def _index(sim: Simulator, args: dict[str, str], body: Json, req: web.Request) -> Any:
    return {"doc": __doc__}


@_route("GET", "/state")
async def _state(sim: Simulator, args: dict[str, str], body: Json, req: web.Request) -> Any:
    return views.state(sim)


@_route("GET", "/requests")
async def _requests(sim: Simulator, args: dict[str, str], body: Json, req: web.Request) -> Any:
    since = int(req.query.get("since", "0"))
    records = [r.to_dict() for r in sim.requests_since(since)]
    return {"items": records, "last_seq": sim.requests[-1].seq if sim.requests else since}


@_route("DELETE", "/requests")
async def _reset(sim: Simulator, args: dict[str, str], body: Json, req: web.Request) -> Any:
    sim.reset_requests()


@_route("GET", "/faults")
async def _faults(sim: Simulator, args: dict[str, str], body: Json, req: web.Request) -> Any:
    return {"faults": [f.to_dict() for f in sim.faults]}


@_route("POST", "/faults")
async def _add_fault(sim: Simulator, args: dict[str, str], body: Json, req: web.Request) -> Any:
    fault = sim.add_fault_obj(fault_from_json(sim.next_fault_id(), body))
    return {"fault": fault.to_dict()}


@_route("DELETE", "/faults")
async def _clear(sim: Simulator, args: dict[str, str], body: Json, req: web.Request) -> Any:
    sim.clear_faults()


@_route("DELETE", r"/faults/(?P<id>\d+)")
async def _del_fault(sim: Simulator, args: dict[str, str], body: Json, req: web.Request) -> Any:
    if not sim.remove_fault(int(args["id"])):
        raise ControlError(404, f"no fault {args['id']}")


@_route("POST", r"/nodes/(?P<node>[^/]+)/offline")
async def _offline(sim: Simulator, args: dict[str, str], body: Json, req: web.Request) -> Any:
    sim.set_node_offline(
        args["node"], bool(body.get("offline", True)), crash=bool(body.get("crash", False))
    )


@_route("POST", "/guests")
async def _create(sim: Simulator, args: dict[str, str], body: Json, req: web.Request) -> Any:
    guest = sim.create_guest(
        int(body["vmid"]),
        kind=str(body.get("kind", "qemu")),
        node=body.get("node"),
        status=str(body.get("status", "stopped")),
        config=body.get("config"),
    )
    return views.guest_state(guest)


@_route("DELETE", r"/guests/(?P<vmid>\d+)")
async def _delete(sim: Simulator, args: dict[str, str], body: Json, req: web.Request) -> Any:
    sim.delete_guest(_vmid(args))


@_route("POST", r"/guests/(?P<vmid>\d+)/status")
async def _status(sim: Simulator, args: dict[str, str], body: Json, req: web.Request) -> Any:
    sim.set_guest_status(_vmid(args), str(body["status"]))
    return views.guest_state(sim.guests[_vmid(args)])


@_route("POST", r"/guests/(?P<vmid>\d+)/config")
async def _config(sim: Simulator, args: dict[str, str], body: Json, req: web.Request) -> Any:
    sim.update_config(_vmid(args), body.get("set") or {}, body.get("delete") or ())
    return views.guest_state(sim.guests[_vmid(args)])


@_route("POST", r"/guests/(?P<vmid>\d+)/lock")
async def _lock(sim: Simulator, args: dict[str, str], body: Json, req: web.Request) -> Any:
    seconds = body.get("seconds", 5.0)
    upid = sim.hold_lock(
        _vmid(args), str(body.get("lock", "backup")), None if seconds is None else float(seconds)
    )
    return {"upid": str(upid) if upid else None}


@_route("DELETE", r"/guests/(?P<vmid>\d+)/lock")
async def _unlock(sim: Simulator, args: dict[str, str], body: Json, req: web.Request) -> Any:
    sim.release_lock(_vmid(args))


@_route("POST", r"/guests/(?P<vmid>\d+)/lockfile")
async def _flock(sim: Simulator, args: dict[str, str], body: Json, req: web.Request) -> Any:
    await sim.hold_lock_file(_vmid(args), float(body.get("seconds", 1.0)))


@_route("POST", r"/guests/(?P<vmid>\d+)/move")
async def _move(sim: Simulator, args: dict[str, str], body: Json, req: web.Request) -> Any:
    sim.move_guest(_vmid(args), str(body["node"]))


@_route("POST", r"/guests/(?P<vmid>\d+)/ha")
async def _ha(sim: Simulator, args: dict[str, str], body: Json, req: web.Request) -> Any:
    state = body.get("state")
    sim.set_ha(_vmid(args), None if state is None else str(state))


@_route("POST", r"/guests/(?P<vmid>\d+)/acpi")
async def _acpi(sim: Simulator, args: dict[str, str], body: Json, req: web.Request) -> Any:
    sim.set_acpi(_vmid(args), bool(body.get("responds", True)))


@_route("POST", "/tasks/archive")
async def _archive(sim: Simulator, args: dict[str, str], body: Json, req: web.Request) -> Any:
    sim.archive_now()


@_route("POST", "/resources/sample")
async def _sample(sim: Simulator, args: dict[str, str], body: Json, req: web.Request) -> Any:
    sim.sample_resources()


@_route("POST", "/tasks/rotate")
async def _rotate(sim: Simulator, args: dict[str, str], body: Json, req: web.Request) -> Any:
    node = body.get("node")
    return {
        "rotated": sim.rotate_tasks(None if node is None else str(node), int(body.get("keep", 0)))
    }


@_route("POST", "/tasks/kill")
async def _kill(sim: Simulator, args: dict[str, str], body: Json, req: web.Request) -> Any:
    return {"killed": sim.kill_task(str(body["upid"]))}
