"""Run-state actions: start, stop, shutdown, reboot, reset, suspend, resume (QEMU and LXC).

Each function does the pre-fork checks of reference §1.1–1.3 (a failure is a sync HTTP
error, no task) and forks a worker whose body does the in-task checks, takes its time and
applies the effect. The QEMU/LXC asymmetries are deliberate (§1.3).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lifecycled.sim import errors as txt
from lifecycled.sim import params as pp
from lifecycled.sim.errors import SimError, TaskFailed
from lifecycled.sim.ha import ha_request
from lifecycled.sim.model import Guest
from lifecycled.sim.records import Caller, FlockSpec
from lifecycled.sim.simulator import Simulator
from lifecycled.sim.tasks import TaskRun

Params = Mapping[str, Any]

_ROOT_ONLY = (
    "skiplock",
    "keepActive",
    "migratedfrom",
    "stateuri",
    "migration_type",
    "migration_network",
    "targetstorage",
    "force-cpu",
    "nocheck",
)
_WORKER = {
    ("qemu", "start"): "qmstart",
    ("qemu", "stop"): "qmstop",
    ("qemu", "shutdown"): "qmshutdown",
    ("qemu", "reboot"): "qmreboot",
    ("qemu", "reset"): "qmreset",
    ("qemu", "resume"): "qmresume",
    ("lxc", "start"): "vzstart",
    ("lxc", "stop"): "vzstop",
    ("lxc", "shutdown"): "vzshutdown",
    ("lxc", "reboot"): "vzreboot",
    ("lxc", "suspend"): "vzsuspend",
    ("lxc", "resume"): "vzresume",
}
_ACTIONS = {
    "qemu": frozenset({"start", "stop", "shutdown", "reboot", "reset", "suspend", "resume"}),
    "lxc": frozenset({"start", "stop", "shutdown", "reboot", "suspend", "resume"}),
}


def check_lock(guest: Guest, params: Params, caller: Caller, allow: tuple[str, ...] = ()) -> None:
    """``check_lock`` in a task: a config ``lock`` refuses unless allowed or ``skiplock``."""
    lock = guest.lock
    if lock is None or lock in allow:
        return
    if caller.is_root and pp.flag(params, "skiplock"):
        return
    raise TaskFailed(txt.locked(guest.kind, lock))


def vm_is_paused(guest: Guest) -> bool:
    """qemu-server ``vm_is_paused($vmid, 1)``: ``paused``, ``prelaunch`` or ``suspended``."""
    return guest.running and guest.qmpstatus in ("paused", "prelaunch", "suspended")


def _flock(sim: Simulator, kind: str, vmid: int) -> FlockSpec:
    return FlockSpec(kind=kind, vmid=vmid, wait=sim.cfg.lock_wait())


def status_action(
    sim: Simulator, caller: Caller, node: str, kind: str, vmid: int, action: str, params: Params
) -> str:
    """``POST /nodes/{node}/{kind}/{vmid}/status/{action}``; returns the UPID."""
    if action not in _ACTIONS[kind]:
        raise SimError(
            501, f"Method 'POST /nodes/{node}/{kind}/{vmid}/status/{action}' not implemented"
        )
    pp.root_only(params, _ROOT_ONLY, is_root=caller.is_root)
    guest = sim.guest_on(node, kind, vmid)
    if kind == "qemu":
        return _qemu(sim, caller, node, vmid, action, params, guest)
    return _lxc(sim, caller, node, vmid, action, params, guest)


def _ha_routed(guest: Guest | None, action: str) -> bool:
    return guest is not None and guest.ha_managed and action in ("start", "stop", "shutdown")


def _stop_shutdowns(sim: Simulator, node: str, vmid: int, guest: Guest | None) -> None:
    """``overrule-shutdown``: abort running shutdown tasks of this guest first."""
    if guest is not None and guest.ha_managed:
        raise txt.param_error({"overrule-shutdown": "Not applicable for HA resources."})
    for task in sim.books[node].running():
        if task.upid.type in ("qmshutdown", "vzshutdown") and task.upid.id == str(vmid):
            sim.stop_task(task)


def _qemu(
    sim: Simulator,
    caller: Caller,
    node: str,
    vmid: int,
    action: str,
    params: Params,
    guest: Guest | None,
) -> str:
    force_stop = pp.flag(params, "forceStop")
    if action in ("reboot", "reset", "suspend", "resume"):
        if guest is None:
            raise SimError(500, txt.no_config_on_node(vmid, node))
        if action == "reboot" and vm_is_paused(guest):
            raise SimError(500, txt.PAUSED_SHUTDOWN)
        if not guest.running and not (action == "resume" and guest.lock == "suspended"):
            raise SimError(500, f"VM {vmid} not running")
        if action == "suspend" and pp.flag(params, "todisk") and guest.ha is not None:
            raise SimError(500, "Cannot suspend HA managed VM to disk")
    paused = guest is not None and vm_is_paused(guest)
    if action == "shutdown" and paused and not force_stop:
        raise SimError(500, txt.PAUSED_SHUTDOWN)
    if action == "stop" and pp.flag(params, "overrule-shutdown"):
        _stop_shutdowns(sim, node, vmid, guest)
    if guest is not None and _ha_routed(guest, action):
        return ha_request(sim, caller, guest, action, params)
    worker = _WORKER.get(("qemu", action))
    if action == "suspend":
        worker = "qmsuspend" if pp.flag(params, "todisk") else "qmpause"
    assert worker is not None

    async def body(run: TaskRun) -> None:
        g = sim.guest_on(node, "qemu", vmid)
        if g is None:
            if action == "start":
                raise TaskFailed(txt.no_config("qemu", node, vmid))
            raise TaskFailed(txt.no_config_on_node(vmid, node))
        await _QEMU_BODIES[action](sim, run, caller, g, params)

    upid = sim.fork(node, worker, vmid, caller, body, flock=_flock(sim, "qemu", vmid))
    return str(upid)


async def _q_start(sim: Simulator, run: TaskRun, caller: Caller, g: Guest, params: Params) -> None:
    if g.template:
        raise TaskFailed("you can't start a vm if it's a template")
    if g.running and g.lock == "backup":
        run.log(f"VM {g.vmid} is running with a backup lock - resuming it")
        await run.work()
        g.qmpstatus = "running"
        return
    check_lock(g, params, caller, allow=("suspended",))
    if g.running:
        raise TaskFailed(f"VM {g.vmid} already running")
    hibernated = g.lock == "suspended"
    if hibernated:
        run.log("resuming suspended VM")
    await run.work()
    g.apply_pending()
    g.set_running(sim.new_pid(g.node))
    if hibernated:
        g.config.pop("lock", None)


async def _q_stop(sim: Simulator, run: TaskRun, caller: Caller, g: Guest, params: Params) -> None:
    if not g.running:
        return  # _do_vm_stop returns early when there is no pid: task OK (§1.3, §12.4)
    check_lock(g, params, caller)
    await run.work()
    g.set_stopped()


async def _q_shutdown(
    sim: Simulator, run: TaskRun, caller: Caller, g: Guest, params: Params
) -> None:
    if not g.running:
        return
    check_lock(g, params, caller)
    force = pp.flag(params, "forceStop")
    await run.work()
    if not g.acpi and not vm_is_paused(g):
        if not force:
            raise TaskFailed("VM quit/powerdown failed - got timeout")
        run.log("VM still running - terminating now with SIGTERM")
    g.set_stopped()


async def _q_reboot(sim: Simulator, run: TaskRun, caller: Caller, g: Guest, params: Params) -> None:
    check_lock(g, params, caller)
    await run.work()
    if not g.acpi:
        raise TaskFailed("VM quit/powerdown failed - got timeout")
    g.apply_pending()
    g.set_running(sim.new_pid(g.node))


async def _q_reset(sim: Simulator, run: TaskRun, caller: Caller, g: Guest, params: Params) -> None:
    check_lock(g, params, caller)
    await run.work()
    g.qmpstatus = "running"


async def _q_suspend(
    sim: Simulator, run: TaskRun, caller: Caller, g: Guest, params: Params
) -> None:
    todisk = pp.flag(params, "todisk")
    if g.lock == "backup":  # vm_suspend skips the lock check during a backup (§13.6)
        if todisk:
            raise TaskFailed("cannot suspend to disk during backup")
    else:
        check_lock(g, params, caller)
    if not todisk:
        await run.work()
        g.qmpstatus = "paused"
        return
    g.config["lock"] = "suspending"
    try:
        await run.work()
    except BaseException:
        g.config.pop("lock", None)
        raise
    g.set_stopped()
    g.config["lock"] = "suspended"


async def _q_resume(sim: Simulator, run: TaskRun, caller: Caller, g: Guest, params: Params) -> None:
    if g.lock == "suspended" and not g.running:
        await run.work()
        g.apply_pending()
        g.set_running(sim.new_pid(g.node))
        g.config.pop("lock", None)
        return
    check_lock(g, params, caller, allow=("backup", "suspended"))
    await run.work()
    g.qmpstatus = "running"


_QEMU_BODIES = {
    "start": _q_start,
    "stop": _q_stop,
    "shutdown": _q_shutdown,
    "reboot": _q_reboot,
    "reset": _q_reset,
    "suspend": _q_suspend,
    "resume": _q_resume,
}


def _lxc(
    sim: Simulator,
    caller: Caller,
    node: str,
    vmid: int,
    action: str,
    params: Params,
    guest: Guest | None,
) -> str:
    running = guest is not None and guest.running
    if action in ("start", "resume") and running:
        raise SimError(500, f"CT {vmid} already running")
    if action in ("stop", "shutdown", "suspend") and not running:
        raise SimError(500, f"CT {vmid} not running")
    if action == "reboot" and not running:
        raise SimError(500, f"VM {vmid} not running")  # sic: pve-container says "VM" here
    if action == "stop" and pp.flag(params, "overrule-shutdown"):
        _stop_shutdowns(sim, node, vmid, guest)
    if guest is not None and _ha_routed(guest, action):
        return ha_request(sim, caller, guest, action, params)
    worker = _WORKER[("lxc", action)]

    async def body(run: TaskRun) -> None:
        g = sim.guest_on(node, "lxc", vmid)
        if g is None:
            raise TaskFailed(txt.no_config("lxc", node, vmid))
        if action == "start" and g.template:
            raise TaskFailed("you can't start a CT if it's a template")
        if action in ("start", "stop"):
            check_lock(g, params, caller, allow=("mounted",))
        elif action in ("shutdown", "suspend"):
            check_lock(g, params, caller)  # strict: `mounted` blocks too, no skiplock (§13.6)
        # resume and reboot run no lock check at all
        if action in ("start", "resume") and g.running:
            raise TaskFailed(f"CT {vmid} already running")
        await run.work()
        if action in ("start", "resume", "reboot"):
            g.apply_pending()
            g.set_running(sim.new_pid(g.node))
        else:
            g.set_stopped()  # suspend: checkpointed and stopped; resume restores it (§12.8)

    upid = sim.fork(node, worker, vmid, caller, body, flock=_flock(sim, "lxc", vmid))
    return str(upid)
