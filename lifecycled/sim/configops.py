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
_INDEXED = re.compile(
    r"^(net|ide|sata|scsi|virtio|efidisk|tpmstate|unused|serial|usb|hostpci|ipconfig|mp|dev|"
    r"numa|parallel|virtiofs)\d+$"
)
_QEMU_KEYS = frozenset(
    [
        "name",
        "description",
        "cores",
        "sockets",
        "vcpus",
        "cpu",
        "cpulimit",
        "cpuunits",
        "memory",
        "balloon",
        "shares",
        "numa",
        "onboot",
        "startup",
        "protection",
        "tags",
        "agent",
        "ostype",
        "boot",
        "bootdisk",
        "bios",
        "machine",
        "scsihw",
        "vga",
        "kvm",
        "acpi",
        "tablet",
        "hotplug",
        "args",
        "smbios1",
        "vmgenid",
        "meta",
        "hookscript",
        "ciuser",
        "cipassword",
        "nameserver",
        "searchdomain",
        "sshkeys",
        "template",
        "lock",
        "localtime",
        "keyboard",
        "cdrom",
        "affinity",
        "arch",
        "autostart",
        "hugepages",
        "keephugepages",
        "migrate_downtime",
        "migrate_speed",
        "vmstatestorage",
        "watchdog",
        "rng0",
        "audio0",
        "spice_enhancements",
        "startdate",
        "reboot",
        "freeze",
        "citype",
        "cicustom",
        "ciupgrade",
        "amd-sev",
        "intel-tdx",
    ]
)
_LXC_KEYS = frozenset(
    [
        "hostname",
        "description",
        "cores",
        "cpulimit",
        "cpuunits",
        "memory",
        "swap",
        "rootfs",
        "onboot",
        "startup",
        "protection",
        "tags",
        "ostype",
        "arch",
        "unprivileged",
        "features",
        "nameserver",
        "searchdomain",
        "hookscript",
        "console",
        "tty",
        "cmode",
        "template",
        "lock",
        "timezone",
        "entrypoint",
        "env",
        "debug",
    ]
)
_INT_OPTS = frozenset({"cores", "sockets", "vcpus", "cpuunits", "balloon", "shares", "swap", "tty"})
_BOOL_OPTS = frozenset(
    {
        "onboot",
        "protection",
        "template",
        "numa",
        "kvm",
        "acpi",
        "tablet",
        "unprivileged",
        "console",
        "localtime",
        "freeze",
        "reboot",
    }
)
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


def _schema(kind: str, keys: Params) -> dict[str, str]:
    known = _QEMU_KEYS if kind == "qemu" else _LXC_KEYS
    schema: dict[str, str] = {}
    for key in keys:
        if key in _CONTROL:
            schema[key] = "bool" if key in ("force", "skiplock") else "string"
        elif key in _INT_OPTS or (kind == "lxc" and key == "memory"):
            schema[key] = "int"
        elif key in _BOOL_OPTS:
            schema[key] = "bool"
        elif key in known or _INDEXED.match(key):
            schema[key] = "string"
    return schema


def validate_config(kind: str, params: Params, caller: Caller, *, post: bool) -> None:
    schema = _schema(kind, params)
    if not post:
        schema.pop("background_delay", None)
    if "background_delay" in schema:
        schema["background_delay"] = "int"
    pp.check(params, schema, root_only=("skiplock", "lock"), is_root=caller.is_root)
    if (
        kind == "qemu"
        and "memory" in params
        and not re.match(r"^(current=)?\d+$", str(params["memory"]))
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


def apply_config(guest: Guest, params: Params) -> None:
    """Write the change; on a running QEMU guest cold options go to ``[PENDING]`` (§1.4)."""
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
    validate_config(kind, params, caller, post=post)
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
            apply_config(guest, params)
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
        apply_config(g, params)

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

_RESIZE_SCHEMA: pp.Schema = {
    "disk": "string",
    "size": "size",
    "digest": "string",
    "skiplock": "bool",
}


def resize(sim: Simulator, caller: Caller, node: str, kind: str, vmid: int, params: Params) -> str:
    """``PUT …/{vmid}/resize``: a ``resize`` task; checks run inside it (§1.1)."""
    pp.check(
        params,
        _RESIZE_SCHEMA,
        required=("disk", "size"),
        root_only=("skiplock",),
        is_root=caller.is_root,
    )
    disk = str(params["disk"])
    if not is_disk_key(kind, disk):
        raise txt.param_error({"disk": f"value '{disk}' does not have a value in the enumeration"})
    size_text = str(params["size"])

    async def body(run: TaskRun) -> None:
        g = sim.guest_on(node, kind, vmid)
        if g is None:
            raise TaskFailed(txt.no_config(kind, node, vmid))
        _checks(g, params, caller)
        entry = g.config.get(disk)
        current = disk_size(entry)
        if not isinstance(entry, str) or current is None:
            raise TaskFailed(f"disk '{disk}' does not exist")
        amount = parse_size(size_text.lstrip("+")) or 0
        wanted = current + amount if size_text.startswith("+") else amount
        if wanted < current:
            raise TaskFailed(txt.SHRINK)
        if wanted == current:
            return
        run.log(f"resizing {disk} from {current} to {wanted} bytes")
        await run.work()
        g.config[disk] = with_disk_size(entry, wanted)

    flock = FlockSpec(kind=kind, vmid=vmid, wait=sim.cfg.lock_wait())
    return str(sim.fork(node, "resize", vmid, caller, body, flock=flock))
