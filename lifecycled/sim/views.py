"""Read endpoints rendered as Proxmox does: status/current, config, cluster resources, tasks.

Field sets follow reference §4 and §5; optional fields (``lock``, ``template``, ``total``) are
left out when Proxmox leaves them out.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from lifecycled.sim import params as pp
from lifecycled.sim.errors import param_error
from lifecycled.sim.model import Guest, Node
from lifecycled.sim.simulator import Simulator
from lifecycled.sim.tasks import UNEXPECTED, Task

PVE_VERSION = "9.0.3"


def _ha(guest: Guest) -> dict[str, Any]:
    if guest.ha is None:
        return {"managed": 0}
    out: dict[str, Any] = {"managed": 1, "state": guest.ha.state}
    if guest.ha.group:
        out["group"] = guest.ha.group
    return out


def _metrics(guest: Guest) -> dict[str, Any]:
    running = guest.running
    maxmem = guest.mem_bytes()
    return {
        "cpu": 0.0123 if running else 0,
        "cpus": guest.cpus(),
        "maxmem": maxmem,
        "mem": maxmem // 3 if running else 0,
        "maxdisk": guest.disk_bytes(),
        "disk": 0,
        "diskread": 0,
        "diskwrite": 0,
        "netin": 0,
        "netout": 0,
        "uptime": guest.uptime(),
    }


def status_current(guest: Guest) -> dict[str, Any]:
    """``GET …/{vmid}/status/current`` (§5.1, §5.2)."""
    out: dict[str, Any] = {"vmid": guest.vmid, "status": guest.status, "name": guest.name}
    out.update(_metrics(guest))
    out["ha"] = _ha(guest)
    if guest.kind == "qemu":
        out["qmpstatus"] = guest.qmpstatus
        out["balloon_min"] = 0
        out["shares"] = 1000
        if guest.running:
            out["pid"] = guest.pid
            out["running-machine"] = "pc-i440fx-9.0+pve0"
            out["running-qemu"] = "9.0.2"
        if "agent" in guest.config:
            out["agent"] = 1
    else:
        out["type"] = "lxc"
        out["maxswap"] = int(guest.config.get("swap", 0)) * 1024 * 1024
        if guest.running:
            out["pid"] = guest.pid
    if guest.lock:
        out["lock"] = guest.lock
    if guest.template:
        out["template"] = 1
    if guest.config.get("tags"):
        out["tags"] = guest.config["tags"]
    return out


def guest_list(
    guests: Iterable[Guest], kind: str, params: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """``GET /nodes/{node}/qemu|lxc``: every guest of ``kind`` on the node, live.

    QEMU (qemu-server ``vmlist`` → ``vmstatus(undef, full)``): no ``ha``, and without
    ``full=1`` no QMP fields — no ``qmpstatus`` (a paused VM lists as ``running``), no
    ``diskread``/``diskwrite``, no ``running-machine``/``running-qemu``; ``balloon_min`` and
    ``shares`` only with a ``balloon`` config, ``tags`` whenever the config has the key.
    LXC (pve-container ``vmlist`` → ``vmstatus()``): ``status/current`` without ``ha``.
    """
    out: list[dict[str, Any]] = []
    for guest in sorted(guests, key=lambda g: g.vmid):
        item = status_current(guest)
        del item["ha"]
        if kind == "qemu":
            _qemu_list_item(guest, item, full=pp.flag(params, "full"))
        out.append(item)
    return out


def _qemu_list_item(guest: Guest, item: dict[str, Any], *, full: bool) -> None:
    item.pop("agent", None)  # vm_status adds it, vmstatus does not
    item["memhost"] = item["mem"]
    if not guest.config.get("balloon"):
        item.pop("balloon_min", None)
        item.pop("shares", None)
    if "tags" in guest.config:
        item["tags"] = guest.config["tags"]
    if any(key.startswith("serial") for key in guest.config):
        item["serial"] = 1
    if full:
        item["qmpstatus"] = guest.qmpstatus if guest.running else guest.status
        if not guest.running:
            item.pop("diskread", None)
            item.pop("diskwrite", None)
        return
    for key in ("qmpstatus", "diskread", "diskwrite", "running-machine", "running-qemu"):
        item.pop(key, None)


def config_view(guest: Guest, params: Mapping[str, Any]) -> dict[str, Any]:
    """``GET …/{vmid}/config``: pending merged unless ``current=1``; plus ``digest`` (§5.3)."""
    values = dict(guest.config) if pp.flag(params, "current") else guest.merged_config()
    values["digest"] = guest.digest()
    return values


def pending_view(guest: Guest) -> list[dict[str, Any]]:
    """``GET …/{vmid}/pending``: one row per key, with ``pending`` / ``delete`` markers."""
    rows: list[dict[str, Any]] = []
    keys = sorted(set(guest.config) | set(guest.pending) | guest.pending_delete)
    for key in keys:
        row: dict[str, Any] = {"key": key}
        if key in guest.config:
            row["value"] = guest.config[key]
        if key in guest.pending:
            row["pending"] = guest.pending[key]
        if key in guest.pending_delete:
            row["delete"] = 1
        rows.append(row)
    return rows


def guest_resource(sim: Simulator, guest: Guest) -> dict[str, Any]:
    """One ``/cluster/resources`` vm item (§5.4). Membership and node are live (pmxcfs);
    the status is pvestatd's last sample, up to ``resources_lag`` old (§13.10): ``unknown``
    for a guest not sampled yet."""
    if not sim.nodes[guest.node].online:
        status = "unknown"
    elif sim.cfg.resources_lag == 0:
        status = guest.power_state
    else:
        status = sim.rrd.get(guest.vmid, "unknown")
    out: dict[str, Any] = {
        "id": f"{guest.kind}/{guest.vmid}",
        "vmid": guest.vmid,
        "type": guest.kind,
        "node": guest.node,
        "name": guest.name,
        "status": status,
        "template": 1 if guest.template else 0,
        "maxcpu": guest.cpus(),
    }
    metrics = _metrics(guest)
    metrics.pop("cpus")
    out.update(metrics)
    if guest.lock:
        out["lock"] = guest.lock
    if guest.config.get("tags"):
        out["tags"] = guest.config["tags"]
    if guest.ha is not None:
        out["hastate"] = guest.ha.state
    return out


def _node_resource(node: Node) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": f"node/{node.name}",
        "type": "node",
        "node": node.name,
        "status": "online" if node.online else "offline",
        "level": "",
    }
    if node.online:
        out.update(
            maxcpu=16,
            cpu=0.05,
            maxmem=68_719_476_736,
            mem=17_179_869_184,
            maxdisk=100_000_000_000,
            disk=20_000_000_000,
            uptime=int(time.time() - node.boot_time),
        )
    return out


def cluster_resources(sim: Simulator, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    pp.check(params, {"type": "string"})
    kind = params.get("type")
    if kind not in (None, "vm", "node", "storage", "sdn"):
        raise param_error(
            {
                "type": f"value '{kind}' does not have a value in the enumeration 'vm, storage, node, sdn'"
            }
        )
    out: list[dict[str, Any]] = []
    if kind in (None, "node"):
        out.extend(_node_resource(n) for n in sim.nodes.values())
    if kind in (None, "vm"):
        out.extend(
            guest_resource(sim, g) for g in sorted(sim.guests.values(), key=lambda g: g.vmid)
        )
    if kind in (None, "storage"):
        out.extend(
            {
                "id": f"storage/{node.name}/local-lvm",
                "type": "storage",
                "storage": "local-lvm",
                "node": node.name,
                "status": "available" if node.online else "unknown",
                "shared": 0,
                "content": "images,rootdir",
                "plugintype": "lvmthin",
            }
            for node in sim.nodes.values()
        )
    return out


def nodes_list(sim: Simulator) -> list[dict[str, Any]]:
    return [_node_resource(n) for n in sim.nodes.values()]


def node_status(node: Node) -> dict[str, Any]:
    return {
        "uptime": int(time.time() - node.boot_time),
        "cpu": 0.05,
        "cpuinfo": {"cpus": 16, "sockets": 1, "cores": 8, "model": "Simulated CPU @ 3.00GHz"},
        "loadavg": ["0.42", "0.37", "0.30"],
        "memory": {"total": 68_719_476_736, "used": 17_179_869_184, "free": 51_539_607_552},
        "rootfs": {"total": 100_000_000_000, "used": 20_000_000_000, "avail": 80_000_000_000},
        "kversion": "Linux 6.8.12-4-pve #1 SMP PREEMPT_DYNAMIC PMX 6.8.12-4",
        "pveversion": f"pve-manager/{PVE_VERSION}/lifecycled-sim",
        "idle": 0,
        "wait": 0,
    }


#: Every privilege of Proxmox VE 8 (pve-access-control PVE/AccessControl.pm).
ALL_PRIVILEGES = frozenset(
    {
        "Datastore.Allocate", "Datastore.AllocateSpace", "Datastore.AllocateTemplate",
        "Datastore.Audit", "Group.Allocate", "Mapping.Audit", "Mapping.Modify", "Mapping.Use",
        "Permissions.Modify", "Pool.Allocate", "Pool.Audit", "Realm.Allocate",
        "Realm.AllocateUser", "SDN.Allocate", "SDN.Audit", "SDN.Use", "Sys.AccessNetwork",
        "Sys.Audit", "Sys.Console", "Sys.Incoming", "Sys.Modify", "Sys.PowerMgmt", "Sys.Syslog",
        "User.Modify", "VM.Allocate", "VM.Audit", "VM.Backup", "VM.Clone", "VM.Config.CDROM",
        "VM.Config.CPU", "VM.Config.Cloudinit", "VM.Config.Disk", "VM.Config.HWType",
        "VM.Config.Memory", "VM.Config.Network", "VM.Config.Options", "VM.Console",
        "VM.Migrate", "VM.Monitor", "VM.PowerMgmt", "VM.Snapshot", "VM.Snapshot.Rollback",
    }
)  # fmt: skip


def permissions(privileges: frozenset[str] | None) -> dict[str, dict[str, int]]:
    """``GET /access/permissions`` for the token: its privileges on ``/``."""
    held = ALL_PRIVILEGES if privileges is None else privileges
    return {"/": dict.fromkeys(sorted(held), 1)} if held else {}


def node_time(offset: float) -> dict[str, Any]:
    """``GET /nodes/{node}/time``: the node's clock (this host's plus ``offset``)."""
    now = int(time.time() + offset)
    return {"time": now, "localtime": now, "timezone": "UTC"}


def version() -> dict[str, Any]:
    return {"version": PVE_VERSION, "release": PVE_VERSION.rsplit(".", 1)[0], "repoid": "5ac30304"}


# --- tasks -------------------------------------------------------------------------------------


def _upid_fields(task: Task, *, split_token: bool) -> dict[str, Any]:
    upid = task.upid
    out: dict[str, Any] = {
        "upid": task.text,
        "node": upid.node,
        "pid": upid.pid,
        "pstart": upid.pstart,
        "starttime": upid.starttime,
        "type": upid.type,
        "id": upid.id,
        "user": upid.bare_user if split_token else upid.user,
    }
    if split_token and upid.tokenid is not None:
        out["tokenid"] = upid.tokenid
    return out


def task_status(task: Task) -> dict[str, Any]:
    """``GET …/tasks/{upid}/status`` (§4.1): bare user + ``tokenid``; no ``endtime``."""
    out = _upid_fields(task, split_token=True)
    out["status"] = "running" if task.running else "stopped"
    if not task.running:
        out["exitstatus"] = task.exitstatus
    return out


def task_log(task: Task | None, params: Mapping[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """``GET …/tasks/{upid}/log`` (§4.2); a missing log is one line, not an error (§12.1)."""
    lines = ["unable to open file - No such file or directory"] if task is None else task.lines
    if not lines:
        lines = ["no content"]  # an empty log file reads as one line (§13.9)
    start = pp.integer(params, "start", 0) or 0
    limit = pp.integer(params, "limit", 50)
    chosen = lines[start:] if not limit else lines[start : start + limit]
    return [{"n": start + i + 1, "t": t} for i, t in enumerate(chosen)], len(lines)


def _list_item(task: Task) -> dict[str, Any]:
    if not task.archived:  # active list: full token user, RUNNING until archived (§12.3)
        out = _upid_fields(task, split_token=False)
        out["status"] = "RUNNING"
        return out
    out = _upid_fields(task, split_token=True)
    out["endtime"] = task.endtime
    out["status"] = task.exitstatus
    return out


def _status_type(status: str) -> str:
    if status == "OK":
        return "ok"
    if status.startswith("WARNINGS"):
        return "warning"
    if status == UNEXPECTED:
        return "unknown"
    return "error"


_TASKS_SCHEMA: pp.Schema = {
    "start": "int",
    "limit": "int",
    "userfilter": "string",
    "typefilter": "string",
    "vmid": "int",
    "errors": "bool",
    "statusfilter": "string",
    "source": "string",
    "since": "int",
    "until": "int",
}


def node_tasks(
    active: Iterable[Task], archive: Iterable[Task], params: Mapping[str, Any]
) -> tuple[list[dict[str, Any]], int]:
    """``GET /nodes/{node}/tasks`` with Proxmox's filters (§4.3); returns (page, total)."""
    pp.check(params, _TASKS_SCHEMA)
    source = params.get("source", "archive")
    if source not in ("archive", "active", "all"):
        raise param_error(
            {
                "source": f"value '{source}' does not have a value in the enumeration 'archive, active, all'"
            }
        )
    tasks: list[Task] = []
    if source in ("active", "all"):
        tasks.extend(sorted(active, key=lambda t: t.seq, reverse=True))
    if source in ("archive", "all"):
        tasks.extend(sorted(archive, key=lambda t: t.seq, reverse=True))
    userfilter = str(params.get("userfilter", "")).lower()
    typefilter = params.get("typefilter")
    vmid = params.get("vmid")
    since, until = pp.integer(params, "since"), pp.integer(params, "until")
    statuses = set(pp.as_list(params.get("statusfilter")))
    errors_only = pp.flag(params, "errors")
    matched: list[dict[str, Any]] = []
    for task in tasks:
        item = _list_item(task)
        if userfilter and userfilter not in str(item["user"]).lower():
            continue
        if typefilter and item["type"] != typefilter:
            continue
        if vmid is not None and item["id"] != str(vmid):
            continue
        if since is not None and item["starttime"] < since:
            continue
        if until is not None and item["starttime"] > until:
            continue
        if errors_only and item["status"] == "OK":
            continue
        if statuses and (
            item["status"] == "RUNNING" or _status_type(item["status"]) not in statuses
        ):
            continue
        matched.append(item)
    start = pp.integer(params, "start", 0) or 0
    limit = pp.integer(params, "limit", 50) or 0
    page = matched[start : start + limit]  # limit=0 returns nothing (§13.9)
    return page, len(matched)


def cluster_task(task: Task) -> dict[str, Any]:
    """One ``/cluster/tasks`` item (§4.4)."""
    out = _upid_fields(task, split_token=True)
    if not task.running:
        out["endtime"] = task.endtime
        out["status"] = task.exitstatus
        out["saved"] = "1"
    return out


# --- the control API's state dump --------------------------------------------------------------


def guest_state(guest: Guest) -> dict[str, Any]:
    return {
        "vmid": guest.vmid,
        "kind": guest.kind,
        "node": guest.node,
        "name": guest.name,
        "status": guest.status,
        "qmpstatus": guest.qmpstatus if guest.kind == "qemu" else None,
        "lock": guest.lock,
        "template": guest.template,
        "config": dict(guest.config),
        "pending": dict(guest.pending),
        "pending_delete": sorted(guest.pending_delete),
        "digest": guest.digest(),
        "ha": None if guest.ha is None else {"state": guest.ha.state, "group": guest.ha.group},
        "acpi": guest.acpi,
    }


def task_state(task: Task) -> dict[str, Any]:
    return {
        "upid": task.text,
        "node": task.node,
        "type": task.upid.type,
        "id": task.upid.id,
        "user": task.upid.user,
        "starttime": task.upid.starttime,
        "status": "running" if task.running else "stopped",
        "exitstatus": task.exitstatus,
        "endtime": task.endtime,
        "ended_at": task.ended_at,
        "archived": task.archived,
        "log_path": task.log_path,
        "log": list(task.lines),
    }


def state(sim: Simulator) -> dict[str, Any]:
    """Everything the simulator holds (``GET /_sim/state``)."""
    tasks = sorted((t for b in sim.books.values() for t in b.by_upid.values()), key=lambda t: t.seq)
    return {
        "nodes": [{"name": n.name, "online": n.online, "ip": n.ip} for n in sim.nodes.values()],
        "guests": [guest_state(g) for g in sorted(sim.guests.values(), key=lambda g: g.vmid)],
        "tasks": [task_state(t) for t in tasks],
        "faults": [f.to_dict() for f in sim.faults],
        "lock_files_held": sorted(v for v in sim.guests if sim.locks.held(v)),
        "last_request_seq": sim.requests[-1].seq if sim.requests else 0,
    }
