"""Migrate, create, clone and destroy (reference §1.1, §1.2, §2.3, §12.4, §12.10)."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

from lifecycled.sim import errors as txt
from lifecycled.sim import params as pp
from lifecycled.sim.configops import validate_config
from lifecycled.sim.errors import SimError, TaskFailed, param_error
from lifecycled.sim.ha import ha_request
from lifecycled.sim.model import Guest, coerce_value, is_disk_key, random_mac, random_uuid
from lifecycled.sim.power import check_lock, status_action
from lifecycled.sim.records import Caller, FlockSpec
from lifecycled.sim.simulator import Simulator
from lifecycled.sim.tasks import TaskRun

Params = Mapping[str, Any]

#: Storages that are node-local (disks must be copied, live migration needs with-local-disks).
LOCAL_STORAGES = frozenset({"local", "local-lvm", "local-zfs"})
_NEW_DISK_RE = re.compile(r"^(?:(?P<storage>[^/:\s,]+):)?(?P<size>\d+(?:\.\d+)?)(?P<rest>,.*)?$")
_MAC_RE = re.compile(r"([0-9A-F]{2}:){5}[0-9A-F]{2}", re.IGNORECASE)


def _has_local_disks(guest: Guest) -> bool:
    return any(
        is_disk_key(guest.kind, key)
        and isinstance(value, str)
        and "media=cdrom" not in value
        and value.split(":", 1)[0] in LOCAL_STORAGES
        for key, value in guest.config.items()
    )


# --- migrate -----------------------------------------------------------------------------------


def migrate(sim: Simulator, caller: Caller, node: str, kind: str, vmid: int, params: Params) -> str:
    """``POST …/{vmid}/migrate``."""
    pp.root_only(params, ("force", "migration_type", "migration_network"), is_root=caller.is_root)
    target = str(params["target"])
    if target == node:
        raise param_error({"target": "target is local node."})
    if target not in sim.nodes:
        raise SimError(500, f"no such cluster node '{target}'")
    guest = sim.require_guest(node, kind, vmid)
    if kind == "qemu" and guest.lock:  # LXC checks the lock only inside the task (§13.6)
        raise SimError(500, txt.locked(kind, guest.lock))
    online, restart = pp.flag(params, "online"), pp.flag(params, "restart")
    if guest.running and not online:
        if kind == "qemu":
            raise SimError(500, "can't migrate running VM without --online")
        if not restart:
            raise SimError(500, "can't migrate running container without --online or --restart")
    if guest.ha_managed:
        return ha_request(sim, caller, guest, "migrate", params)
    local_ok = pp.flag(params, "with-local-disks")

    async def body(run: TaskRun) -> None:
        g = sim.guest_on(node, kind, vmid)
        if g is None:
            raise TaskFailed(txt.no_config(kind, node, vmid))
        check_lock(g, params, caller)
        word = "VM" if kind == "qemu" else "CT"
        run.log(f"starting migration of {word} {vmid} to node '{target}' ({sim.nodes[target].ip})")
        if not sim.nodes[target].online:
            raise TaskFailed(
                f"migration aborted: node '{target}' is not reachable (No route to host)"
            )
        live = g.running and online
        if kind == "qemu" and live and _has_local_disks(g) and not local_ok:
            raise TaskFailed(
                "can't live migrate attached local disks without with-local-disks option"
            )
        if kind == "lxc" and live:
            raise TaskFailed("lxc live migration is currently not implemented")
        g.config["lock"] = "migrate"
        try:
            await run.work()
        finally:
            g.config.pop("lock", None)
        was_running = g.running
        g.node = target
        if was_running:
            g.set_running(sim.new_pid(target))
        run.log("migration finished successfully")

    worker = "qmigrate" if kind == "qemu" else "vzmigrate"
    flock = FlockSpec(kind=kind, vmid=vmid, wait=sim.cfg.lock_wait())
    return str(sim.fork(node, worker, vmid, caller, body, flock=flock))


# --- create ------------------------------------------------------------------------------------

#: Parameters of the create endpoints that are not config keys.
_CREATE_EXTRA = frozenset(
    {
        "vmid",
        "archive",
        "storage",
        "force",
        "unique",
        "pool",
        "start",
        "bwlimit",
        "live-restore",
        "ha-managed",
        "ostemplate",
        "password",
        "ssh-public-keys",
        "restore",
        "ignore-unpack-errors",
        "import-working-storage",
    }
)


def _allocate_disks(kind: str, vmid: int, config: dict[str, Any]) -> None:
    """``local-lvm:32`` → ``local-lvm:vm-100-disk-0,size=32G`` (NEW_DISK_RE allocation)."""
    n = 0
    for key in sorted(config):
        value = config[key]
        if not is_disk_key(kind, key) or not isinstance(value, str):
            continue
        m = _NEW_DISK_RE.fullmatch(value)
        if m is None:
            continue
        storage = m["storage"] or "local-lvm"
        size = m["size"]
        config[key] = f"{storage}:vm-{vmid}-disk-{n},size={size}G{m['rest'] or ''}"
        n += 1


def _vmid_taken(sim: Simulator, vmid: int, kind: str) -> str | None:
    existing = sim.guests.get(vmid)
    if existing is None:
        return None
    inner = f"{txt.guest_word(existing.kind)} {vmid} already exists on node '{existing.node}'"
    if kind == "lxc":
        return inner  # §13.4: no "unable to create CT" prefix
    return f"unable to create VM {vmid} - {inner}"


async def create(sim: Simulator, caller: Caller, node: str, kind: str, params: Params) -> str:
    """``POST /nodes/{node}/{kind}``: config written with ``lock: create`` before the fork."""
    settings = {k: v for k, v in params.items() if k not in _CREATE_EXTRA}
    validate_config(kind, settings, caller)
    restore = bool(params.get("archive")) if kind == "qemu" else pp.flag(params, "restore")
    vmid = int(str(params["vmid"]))
    taken = _vmid_taken(sim, vmid, kind)
    if taken:
        raise SimError(500, taken)
    if not await sim.locks.acquire(vmid, sim.cfg.lock_wait(5.0)):
        raise SimError(500, txt.lock_timeout(kind, vmid))
    taken = _vmid_taken(sim, vmid, kind)
    if taken:
        sim.locks.release(vmid)
        raise SimError(500, taken)
    config = {k: coerce_value(kind, k, v) for k, v in settings.items()}
    if "tags" in config:
        config["tags"] = sim.cfg.stored_tags(config["tags"])
    if kind == "qemu":
        if "memory" in config:
            config["memory"] = str(config["memory"]).removeprefix("current=")
        config.setdefault("smbios1", f"uuid={random_uuid(sim.rng)}")
        config.setdefault("vmgenid", random_uuid(sim.rng))
        config.setdefault("meta", f"creation-qemu=9.0.2,ctime={int(time.time())}")
    else:
        config.setdefault("hostname", f"CT{vmid}")
        config.setdefault("arch", "amd64")
        config.setdefault("rootfs", "local-lvm:4")
    _allocate_disks(kind, vmid, config)
    config["lock"] = "create"
    guest = Guest(vmid=vmid, kind=kind, node=node, config=config)
    sim.guests[vmid] = guest
    start_after = pp.flag(params, "start")

    async def body(run: TaskRun) -> None:
        try:
            await run.work()
        except BaseException:
            if sim.guests.get(vmid) is guest:
                del sim.guests[vmid]  # a failed create removes what it allocated
            raise
        guest.config.pop("lock", None)
        if start_after and sim.guests.get(vmid) is guest:
            run.log(f"starting {txt.guest_word(kind)} {vmid}")
            status_action(sim, Caller(user=caller.user), node, kind, vmid, "start", {})

    prefix = "qm" if kind == "qemu" else "vz"
    worker = f"{prefix}{'restore' if restore else 'create'}"
    flock = FlockSpec(kind=kind, vmid=vmid, wait=0.0, held=True)
    return str(sim.fork(node, worker, vmid, caller, body, flock=flock))


# --- clone -------------------------------------------------------------------------------------


def _clone_config(
    sim: Simulator, source: Guest, newid: int, params: Params, lock: str
) -> dict[str, Any]:
    config = {
        k: v
        for k, v in source.config.items()
        if k not in ("lock", "template", "parent", "snaptime", "vmstate")
        and not k.startswith("unused")
    }
    for key, value in list(config.items()):
        if key.startswith("net") and isinstance(value, str):
            config[key] = _MAC_RE.sub(random_mac(sim.rng), value, count=1)
        elif is_disk_key(source.kind, key) and isinstance(value, str):
            config[key] = re.sub(r"(base|vm)-\d+-disk", f"vm-{newid}-disk", value)
    if source.kind == "qemu":
        config["name"] = str(params.get("name") or f"Copy-of-VM-{source.name}")
        smbios = [
            p for p in str(config.get("smbios1", "")).split(",") if p and not p.startswith("uuid=")
        ]
        config["smbios1"] = ",".join([f"uuid={random_uuid(sim.rng)}", *smbios])
        config["vmgenid"] = random_uuid(sim.rng)
        config["meta"] = f"creation-qemu=9.0.2,ctime={int(time.time())}"
    elif params.get("hostname"):
        config["hostname"] = str(params["hostname"])
    if params.get("description"):
        config["description"] = str(params["description"])
    config["lock"] = lock
    return config


def _exists_elsewhere(sim: Simulator, newid: int) -> str | None:
    """``check_vmid_unused``: the text when ``newid`` is taken anywhere in the cluster."""
    existing = sim.guests.get(newid)
    if existing is None:
        return None
    return f"{txt.guest_word(existing.kind)} {newid} already exists on node '{existing.node}'"


async def clone(
    sim: Simulator, caller: Caller, node: str, kind: str, vmid: int, params: Params
) -> str:
    """``POST …/{vmid}/clone``; the UPID ``id`` is the *source* vmid (§1.1).

    Locks (§13.5): LXC sets ``lock: disk`` on the source and writes the target config with
    ``lock: create`` before forking; QEMU writes the target's temporary config with
    ``lock: clone`` inside the task and leaves the source alone. A newid taken on another
    node fails LXC before the fork, QEMU inside the task (§13.4).
    """
    newid = int(str(params["newid"]))
    source = sim.require_guest(node, kind, vmid)
    if source.lock:
        raise SimError(500, txt.locked(kind, source.lock))
    target = str(params.get("target") or node)
    if target not in sim.nodes:
        raise SimError(500, f"no such cluster node '{target}'")
    if target != node and _has_local_disks(source):
        word_lc = "VM" if kind == "qemu" else "CT"
        raise SimError(
            500, f"can't clone {word_lc} to node '{target}' ({word_lc} uses local storage)"
        )
    existing = sim.guests.get(newid)
    word = txt.guest_word(kind)
    config_exists = f"unable to create {word} {newid}: config file already exists"
    if existing is not None and existing.node == node:
        raise SimError(500, config_exists)
    wait = sim.cfg.lock_wait(1.0)
    worker = "qmclone" if kind == "qemu" else "vzclone"
    flock = FlockSpec(kind=kind, vmid=vmid, wait=wait)
    if kind == "lxc":
        return await _lxc_clone(sim, caller, source, newid, target, params)

    async def body(run: TaskRun) -> None:
        src = sim.guest_on(node, kind, vmid)
        if src is None:
            raise TaskFailed(txt.no_config(kind, node, vmid))
        if not await sim.locks.acquire(newid, wait):
            raise TaskFailed(txt.lock_timeout(kind, newid))
        new: Guest | None = None
        try:
            taken = sim.guests.get(newid)
            if taken is not None:
                raise TaskFailed(
                    config_exists if taken.node == node else str(_exists_elsewhere(sim, newid))
                )
            full = pp.flag(params, "full") or not src.template
            run.log(f"create {'full ' if full else 'linked '}clone of drive(s)")
            new = Guest(
                vmid=newid,
                kind=kind,
                node=target,
                config=_clone_config(sim, src, newid, params, "clone"),
            )
            sim.guests[newid] = new
            await run.work()
            new.config.pop("lock", None)
        except BaseException:
            if new is not None and sim.guests.get(newid) is new:
                del sim.guests[newid]
            raise
        finally:
            sim.locks.release(newid)

    return str(sim.fork(node, worker, vmid, caller, body, flock=flock))


async def _lxc_clone(
    sim: Simulator, caller: Caller, source: Guest, newid: int, target: str, params: Params
) -> str:
    """The sync part runs under the source's lock file (a timeout is a sync 500)."""
    if not await sim.locks.acquire(source.vmid, sim.cfg.lock_wait(1.0)):
        raise SimError(500, txt.lock_timeout("lxc", source.vmid))
    taken = _exists_elsewhere(sim, newid)
    if taken is not None or source.lock:
        sim.locks.release(source.vmid)
        raise SimError(500, taken or txt.locked("lxc", str(source.lock)))
    source.config["lock"] = "disk"
    new = Guest(
        vmid=newid,
        kind="lxc",
        node=target,
        config=_clone_config(sim, source, newid, params, "create"),
    )
    sim.guests[newid] = new

    async def body(run: TaskRun) -> None:
        try:
            run.log("create full clone of mountpoint rootfs")
            await run.work()
            new.config.pop("lock", None)
        except BaseException:
            if sim.guests.get(newid) is new:
                del sim.guests[newid]
            raise
        finally:
            if source.config.get("lock") == "disk":
                source.config.pop("lock", None)

    flock = FlockSpec(kind="lxc", vmid=source.vmid, wait=0.0, held=True)
    return str(sim.fork(source.node, "vzclone", source.vmid, caller, body, flock=flock))


# --- destroy -----------------------------------------------------------------------------------


def destroy(sim: Simulator, caller: Caller, node: str, kind: str, vmid: int, params: Params) -> str:
    """``DELETE /nodes/{node}/{kind}/{vmid}`` (§1.1, §1.2, §12.4)."""
    pp.root_only(params, ("skiplock",), is_root=caller.is_root)
    guest = sim.require_guest(node, kind, vmid)
    word = txt.guest_word(kind)
    if guest.config.get("protection") == 1:
        raise SimError(500, f"can't remove {word} {vmid} - protection mode enabled")
    if guest.ha is not None and not pp.flag(params, "purge"):
        raise SimError(
            500,
            f"unable to remove {word} {vmid} - used in HA resources and purge parameter not set.",
        )
    force = pp.flag(params, "force")
    if kind == "qemu" and guest.running:
        raise SimError(500, f"VM {vmid} is running - destroy failed")
    if kind == "lxc":
        if guest.lock and not (caller.is_root and pp.flag(params, "skiplock")):
            raise SimError(500, txt.locked(kind, guest.lock))  # LXC checks before forking
        if guest.running and not force:
            raise SimError(500, f"unable to destroy CT {vmid} - container is running")

    async def body(run: TaskRun) -> None:
        g = sim.guest_on(node, kind, vmid)
        if g is None:
            raise TaskFailed(txt.no_config(kind, node, vmid))
        check_lock(g, params, caller)  # QEMU checks the lock inside the task
        if g.running:
            if kind == "qemu":
                raise TaskFailed(f"VM {vmid} is running - destroy failed")
            run.warn(f"container {vmid} is running - stopping it before destroying")
            g.set_stopped()
        g.config["lock"] = "destroyed"
        try:
            await run.work()
        except BaseException:
            g.config.pop("lock", None)
            raise
        for key in sorted(k for k in g.config if is_disk_key(kind, k)):
            run.log(f"Removing volume of {key}")
        if sim.guests.get(vmid) is g:
            del sim.guests[vmid]

    worker = "qmdestroy" if kind == "qemu" else "vzdestroy"
    flock = FlockSpec(kind=kind, vmid=vmid, wait=sim.cfg.lock_wait())
    return str(sim.fork(node, worker, vmid, caller, body, flock=flock))
