"""HA-managed guests (reference §1.3, §8).

An API start/stop/shutdown/migrate on an HA-managed guest forks an ``hastart``/``hastop``/
``hamigrate`` task that only records the request and ends OK almost at once. The CRM/LRM
acts ``ha_delay`` seconds later: it forks the ordinary worker (as ``root@pam``) that really
changes the guest. ``PUT /cluster/ha/resources/{sid}`` with ``state`` drives the same path.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import Any

from lifecycled.sim import params as pp
from lifecycled.sim.errors import SimError, TaskFailed, param_error
from lifecycled.sim.model import Guest, HaResource
from lifecycled.sim.records import ROOT, Caller, FlockSpec
from lifecycled.sim.simulator import Simulator
from lifecycled.sim.tasks import TaskRun

_SID_RE = re.compile(r"^(?:(?P<type>vm|ct):)?(?P<vmid>\d+)$")
HA_STATES = ("started", "stopped", "enabled", "disabled", "ignored")
_HA_WORKER = {"start": "hastart", "stop": "hastop", "shutdown": "hastop", "migrate": "hamigrate"}


def ha_request(
    sim: Simulator, caller: Caller, guest: Guest, action: str, params: Mapping[str, Any]
) -> str:
    """Fork the ``ha*`` task for an HA-managed guest; returns the UPID."""
    vmid = guest.vmid
    sid = guest.sid
    target = str(params.get("target", "")) or None
    word = "VM" if guest.kind == "qemu" else "CT"

    async def body(run: TaskRun) -> None:
        if action == "start":
            run.log(f"Requesting HA start for {word} {vmid}")
        elif action == "migrate":
            run.log(f"Requesting HA migration for {word} {vmid} to node {target}")
        else:
            run.log(f"Requesting HA stop for {word} {vmid}")
        await run.work()
        g = sim.guests.get(vmid)
        if g is None or g.ha is None:
            raise TaskFailed(f"no such resource '{sid}'")
        if action == "start":
            g.ha.state = "started"
        elif action in ("stop", "shutdown"):
            g.ha.state = "stopped"
        schedule_lrm(sim, vmid, migrate_to=target if action == "migrate" else None)

    return str(sim.fork(guest.node, _HA_WORKER[action], vmid, caller, body))


def schedule_lrm(sim: Simulator, vmid: int, *, migrate_to: str | None = None) -> None:
    """Let the CRM/LRM act on this guest ``ha_delay`` seconds from now."""
    sim.spawn(_lrm(sim, vmid, migrate_to), name=f"sim-ha-lrm {vmid}")


async def _lrm(sim: Simulator, vmid: int, migrate_to: str | None) -> None:
    await asyncio.sleep(sim.cfg.ha_delay)
    guest = sim.guests.get(vmid)
    if guest is None or guest.ha is None or not sim.nodes[guest.node].online:
        return
    node = guest.node
    lrm = Caller(user=ROOT, task_seconds=0.0)
    prefix = "qm" if guest.kind == "qemu" else "vz"
    flock = FlockSpec(kind=guest.kind, vmid=vmid, wait=sim.cfg.lock_wait())
    state = guest.ha.state

    async def start(run: TaskRun) -> None:
        await run.work()
        g = sim.guests.get(vmid)
        if g is not None and not g.running:
            g.apply_pending()
            g.set_running(sim.new_pid(g.node))

    async def stop(run: TaskRun) -> None:
        await run.work()
        g = sim.guests.get(vmid)
        if g is not None:
            g.set_stopped()

    async def migrate(run: TaskRun) -> None:
        g = sim.guests.get(vmid)
        if g is None or migrate_to is None:
            return
        g.config["lock"] = "migrate"
        try:
            await run.work()
        finally:
            g.config.pop("lock", None)
        g.node = migrate_to

    if migrate_to and migrate_to != node and migrate_to in sim.nodes:
        worker = "qmigrate" if guest.kind == "qemu" else "vzmigrate"
        sim.fork(node, worker, vmid, lrm, migrate, flock=flock)
    elif state == "started" and not guest.running:
        sim.fork(node, f"{prefix}start", vmid, lrm, start, flock=flock)
    elif state in ("stopped", "disabled") and guest.running:
        sim.fork(node, f"{prefix}shutdown", vmid, lrm, stop, flock=flock)


# --- /cluster/ha/resources --------------------------------------------------------------------


def _guest_for_sid(sim: Simulator, sid: str) -> tuple[str, Guest | None]:
    m = _SID_RE.fullmatch(sid)
    if m is None:
        raise param_error({"sid": f"unable to parse service id '{sid}'"})
    vmid = int(m["vmid"])
    guest = sim.guests.get(vmid)
    sid_type = m["type"] or ("ct" if guest is not None and guest.kind == "lxc" else "vm")
    full = f"{sid_type}:{vmid}"
    if guest is not None and guest.sid != full:
        guest = None
    return full, guest


def resource_dict(guest: Guest) -> dict[str, Any]:
    assert guest.ha is not None
    out: dict[str, Any] = {
        "sid": guest.sid,
        "type": guest.sid.split(":", 1)[0],
        "state": guest.ha.state,
        "max_restart": guest.ha.max_restart,
        "max_relocate": guest.ha.max_relocate,
    }
    if guest.ha.group:
        out["group"] = guest.ha.group
    if guest.ha.comment:
        out["comment"] = guest.ha.comment
    return out


def ha_get(sim: Simulator, sid: str) -> dict[str, Any]:
    full, guest = _guest_for_sid(sim, sid)
    if guest is None or guest.ha is None:
        raise SimError(500, f"no such resource '{full}'")
    return resource_dict(guest)


def ha_list(sim: Simulator) -> list[dict[str, Any]]:
    return [resource_dict(g) for g in sorted(sim.guests.values(), key=lambda g: g.vmid) if g.ha]


def _apply(guest: Guest, params: Mapping[str, Any]) -> None:
    assert guest.ha is not None
    state = params.get("state")
    if state is not None:
        if state not in HA_STATES:
            raise param_error(
                {
                    "state": f"value '{state}' does not have a value in the enumeration "
                    f"'{', '.join(HA_STATES)}'"
                }
            )
        guest.ha.state = "started" if state == "enabled" else str(state)
    if "group" in params:
        guest.ha.group = str(params["group"]) or None
    if "comment" in params:
        guest.ha.comment = str(params["comment"]) or None
    for key in ("max_restart", "max_relocate"):
        value = pp.integer(params, key)
        if value is not None:
            setattr(guest.ha, key, value)


def ha_set(sim: Simulator, sid: str, params: Mapping[str, Any]) -> None:
    """``PUT /cluster/ha/resources/{sid}`` (parameters checked against the schema first)."""
    full, guest = _guest_for_sid(sim, sid)
    if guest is None or guest.ha is None:
        raise SimError(500, f"no such resource '{full}'")
    _apply(guest, params)
    schedule_lrm(sim, guest.vmid)


def ha_add(sim: Simulator, params: Mapping[str, Any]) -> None:
    """``POST /cluster/ha/resources`` (parameters checked against the schema first)."""
    full, guest = _guest_for_sid(sim, str(params["sid"]))
    if guest is None:
        raise SimError(500, f"unable to find {full.replace(':', ' ')}")
    if guest.ha is not None:
        raise SimError(500, f"resource ID '{full}' already defined")
    guest.ha = HaResource()
    _apply(guest, params)
    schedule_lrm(sim, guest.vmid)


def ha_delete(sim: Simulator, sid: str) -> None:
    full, guest = _guest_for_sid(sim, sid)
    if guest is None or guest.ha is None:
        raise SimError(500, f"no such resource '{full}'")
    guest.ha = None
