"""Config updates and disk resize (reference §1.1, §1.2, §1.4, §5.3, §12.5).

QEMU ``POST …/config`` is async (``qmconfig``), ``PUT …/config`` sync; LXC has only the sync
PUT. On a running QEMU guest, options that cannot be hot-plugged go to ``[PENDING]``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import Any

from lifecycled.domain.classify import is_success_exitstatus
from lifecycled.sim import errors as txt
from lifecycled.sim import params as pp
from lifecycled.sim.config import SimConfig
from lifecycled.sim.errors import SimError, TaskFailed
from lifecycled.sim.model import (
    Guest,
    coerce_value,
    disk_size,
    is_disk_key,
    parse_size,
    with_disk_size,
)
from lifecycled.sim.power import check_lock
from lifecycled.sim.records import Caller, FlockSpec
from lifecycled.sim.simulator import Simulator
from lifecycled.sim.tasks import TaskRun

Params = Mapping[str, Any]

_CONTROL = frozenset({"digest", "delete", "revert", "force", "skiplock", "background_delay"})
#: Options a running QEMU guest never hot-plugs (they stay pending until reboot/restart).
_COLD = frozenset(
    {
        "cores",
        "sockets",
        "cpu",
        "machine",
        "bios",
        "numa",
        "ostype",
        "vga",
        "args",
        "kvm",
        "arch",
        "scsihw",
        "smbios1",
        "vmgenid",
        "hugepages",
        "affinity",
        "agent",
        "boot",
    }
)


def validate_config(kind: str, params: Params, caller: Caller) -> None:
    """What the schema (checked before every handler) cannot say: root-only options with a
    truthy value, and QEMU's ``memory`` text."""
    pp.root_only(params, ("skiplock", "lock"), is_root=caller.is_root)
    if (
        kind == "qemu"
        and "memory" in params
        and not re.fullmatch(r"(current=)?\d+", str(params["memory"]))
    ):
        raise txt.param_error({"memory": "value does not match the regex pattern"})


def _hotpluggable(guest: Guest, key: str) -> bool:
    hotplug = str(guest.config.get("hotplug", "network,disk,usb")).split(",")
    if key in _COLD:
        return False
    if key == "memory":
        return "memory" in hotplug
    if key == "vcpus":
        return "cpu" in hotplug
    if key.startswith("net"):
        return "network" in hotplug
    if is_disk_key("qemu", key):
        return "disk" in hotplug
    return True


def apply_config(guest: Guest, params: Params, cfg: SimConfig) -> None:
    """Write the change; on a running QEMU guest cold options go to ``[PENDING]`` (§1.4).
    ``tags`` are stored as the datacenter's tag style makes them (``get_unique_tags``)."""
    live = guest.kind == "qemu" and guest.running
    for key in pp.as_list(params.get("revert")):
        guest.pending.pop(key, None)
        guest.pending_delete.discard(key)
    for key in pp.as_list(params.get("delete")):
        if live and not _hotpluggable(guest, key):
            guest.pending.pop(key, None)
            if key in guest.config:
                guest.pending_delete.add(key)
        else:
            guest.config.pop(key, None)
            guest.pending.pop(key, None)
            guest.pending_delete.discard(key)
    for key, raw in params.items():
        if key in _CONTROL:
            continue
        value = coerce_value(guest.kind, key, raw)
        if key == "memory" and guest.kind == "qemu":
            value = str(raw).removeprefix("current=")
        if key == "tags":
            value = cfg.stored_tags(raw)
        if live and not _hotpluggable(guest, key):
            guest.pending[key] = value
            guest.pending_delete.discard(key)
        else:
            guest.config[key] = value
            guest.pending.pop(key, None)


def _checks(guest: Guest, params: Params, caller: Caller) -> None:
    """Digest then lock, as the handler does under the lock file; raises TaskFailed."""
    digest = params.get("digest")
    if digest and str(digest) != guest.digest():
        raise TaskFailed(txt.digest_mismatch(guest.kind))
    check_lock(guest, params, caller)


async def config_write(
    sim: Simulator, caller: Caller, node: str, kind: str, vmid: int, params: Params, *, post: bool
) -> str | None:
    """``POST`` (QEMU, async) or ``PUT`` (sync) ``…/{vmid}/config``."""
    validate_config(kind, params, caller)
    if not any(k not in ("digest", "skiplock", "background_delay") for k in params):
        raise SimError(500, "no options specified")
    guest = sim.require_guest(node, kind, vmid)
    try:
        _checks(guest, params, caller)  # the early check (§5.3)
    except TaskFailed as exc:
        raise SimError(500, exc.text) from None
    if not post:
        if not await sim.locks.acquire(vmid, sim.cfg.lock_wait()):
            raise SimError(500, txt.lock_timeout(kind, vmid))
        try:
            guest = sim.require_guest(node, kind, vmid)
            try:
                _checks(guest, params, caller)
            except TaskFailed as exc:
                raise SimError(500, exc.text) from None
            apply_config(guest, params, sim.cfg)
        finally:
            sim.locks.release(vmid)
        return None

    async def body(run: TaskRun) -> None:
        g = sim.guest_on(node, kind, vmid)
        if g is None:
            raise TaskFailed(txt.no_config(kind, node, vmid))
        _checks(g, params, caller)
        for key in sorted(k for k in params if k not in _CONTROL):
            run.log(f"update VM {vmid}: -{key} {params[key]}")
        await run.work()
        apply_config(g, params, sim.cfg)

    flock = FlockSpec(kind=kind, vmid=vmid, wait=sim.cfg.lock_wait())
    upid = sim.fork(node, "qmconfig", vmid, caller, body, flock=flock)
    delay = pp.integer(params, "background_delay")
    if delay:
        # qemu-server waits up to the delay for the worker (§1.1, §13.2): ended OK or with
        # warnings → null; ended with an error → 500 wrapping its exit status, and no UPID.
        task = sim.find_task(str(upid))
        if task is not None and task.handle is not None:
            done, _ = await asyncio.wait({task.handle}, timeout=delay)
            status = task.exitstatus
            if done and status is not None:
                if is_success_exitstatus(status):
                    return None
                raise SimError(500, f"failed to update VM {vmid}: {status}")
    return str(upid)


# --- resize ------------------------------------------------------------------------------------


def _resize_to(guest: Guest, disk: str, size_text: str) -> tuple[str, int, int]:
    """The disk entry, its current and its wanted size; raises TaskFailed."""
    entry = guest.config.get(disk)
    current = disk_size(entry)
    if not isinstance(entry, str) or current is None:
        raise TaskFailed(f"disk '{disk}' does not exist")
    amount = parse_size(size_text.lstrip("+")) or 0
    wanted = current + amount if size_text.startswith("+") else amount
    return entry, current, wanted


def _lxc_resize_checks(guest: Guest, params: Params, disk: str, size_text: str) -> None:
    """pve-container checks all of this before forking (§13.3): lock (no ``skiplock``),
    digest, shrink and same size; a failure is a sync 500."""
    if guest.lock:
        raise SimError(500, txt.locked(guest.kind, guest.lock))
    digest = params.get("digest")
    if digest and str(digest) != guest.digest():
        raise SimError(500, txt.digest_mismatch(guest.kind))
    try:
        _, current, wanted = _resize_to(guest, disk, size_text)
    except TaskFailed as exc:
        raise SimError(500, exc.text) from None
    if wanted < current:
        raise SimError(500, "unable to shrink disk size")
    if wanted == current:
        raise SimError(500, "disk is already at specified size")


async def resize(
    sim: Simulator, caller: Caller, node: str, kind: str, vmid: int, params: Params
) -> str:
    """``PUT …/{vmid}/resize``: a ``resize`` task. QEMU checks inside it (§1.1); LXC checks
    before the fork, holding the lock file (§13.3)."""
    pp.root_only(params, ("skiplock",), is_root=caller.is_root)
    disk = str(params["disk"])
    size_text = str(params["size"])
    if kind == "lxc":
        guest = sim.require_guest(node, kind, vmid)
        if not await sim.locks.acquire(vmid, sim.cfg.lock_wait()):
            raise SimError(500, txt.lock_timeout(kind, vmid))
        try:
            _lxc_resize_checks(guest, params, disk, size_text)
        finally:
            sim.locks.release(vmid)

    async def body(run: TaskRun) -> None:
        g = sim.guest_on(node, kind, vmid)
        if g is None:
            raise TaskFailed(txt.no_config(kind, node, vmid))
        if kind == "qemu":
            _checks(g, params, caller)
        entry, current, wanted = _resize_to(g, disk, size_text)
        if wanted < current:
            raise TaskFailed(txt.SHRINK)
        if wanted == current:
            return
        run.log(f"resizing {disk} from {current} to {wanted} bytes")
        await run.work()
        g.config[disk] = with_disk_size(entry, wanted)

    flock = FlockSpec(kind=kind, vmid=vmid, wait=sim.cfg.lock_wait())
    return str(sim.fork(node, "resize", vmid, caller, body, flock=flock))
