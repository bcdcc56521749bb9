"""The simulated cluster's state: nodes, guests, HA resources, and the seeded guest set.

Config values are kept as Proxmox returns them from ``GET …/config``: integers for integer
options, text for everything else (QEMU ``memory`` is text, reference §12.10).
"""

from __future__ import annotations

import hashlib
import random
import re
import time
import uuid
from typing import Any

import attrs

from lifecycled.sim.config import SimConfig

#: Options that ``GET …/config`` returns as integers.
_INT_KEYS = frozenset(
    {
        "cores",
        "sockets",
        "vcpus",
        "cpuunits",
        "balloon",
        "protection",
        "template",
        "onboot",
        "numa",
        "kvm",
        "acpi",
        "tablet",
        "shares",
        "swap",
        "unprivileged",
        "tty",
        "console",
        "cmode",
        "migrate_downtime",
        "reboot",
    }
)
#: LXC ``memory`` is an integer; QEMU's became a property string.
_LXC_INT_KEYS = _INT_KEYS | {"memory"}
_NUMERIC_RE = re.compile(r"^-?\d+$")

QEMU_DISK_RE = re.compile(r"^(ide|sata|scsi|virtio|efidisk|tpmstate)\d+$")
LXC_DISK_RE = re.compile(r"^(rootfs|mp\d+)$")


def coerce_value(kind: str, key: str, value: Any) -> Any:
    """A config value as Proxmox stores and returns it."""
    if isinstance(value, bool):
        return 1 if value else 0
    ints = _LXC_INT_KEYS if kind == "lxc" else _INT_KEYS
    if key in ints and _NUMERIC_RE.fullmatch(str(value)):
        return int(str(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def is_disk_key(kind: str, key: str) -> bool:
    return bool((QEMU_DISK_RE if kind == "qemu" else LXC_DISK_RE).fullmatch(key))


@attrs.define(kw_only=True, eq=False)
class HaResource:
    """An entry of ``/etc/pve/ha/resources.cfg`` (reference §8)."""

    state: str = "started"
    group: str | None = None
    max_restart: int = 1
    max_relocate: int = 1
    comment: str | None = None


@attrs.define(kw_only=True, eq=False)
class Guest:
    """One guest. ``status`` is the process state; ``qmpstatus`` the QEMU run state."""

    vmid: int
    kind: str
    node: str
    status: str = "stopped"
    qmpstatus: str = "stopped"
    config: dict[str, Any] = attrs.field(factory=dict)
    pending: dict[str, Any] = attrs.field(factory=dict)
    pending_delete: set[str] = attrs.field(factory=set)
    started_at: float | None = None
    pid: int | None = None
    ha: HaResource | None = None
    #: False: ACPI shutdown requests are ignored (``VM quit/powerdown failed - got timeout``).
    acpi: bool = True

    @property
    def lock(self) -> str | None:
        value = self.config.get("lock")
        return str(value) if value else None

    @property
    def template(self) -> bool:
        return self.config.get("template") == 1

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def ha_managed(self) -> bool:
        """HA-configured and not ``ignored``: an ignored resource is left alone by the CRM
        and LRM, and API calls act on the guest directly (reference §8, §13.10)."""
        return self.ha is not None and self.ha.state != "ignored"

    @property
    def power_state(self) -> str:
        """The status ``/cluster/resources`` reports: QEMU's run state, a container's status."""
        return self.qmpstatus if self.kind == "qemu" else self.status

    @property
    def name(self) -> str:
        key = "name" if self.kind == "qemu" else "hostname"
        default = f"VM {self.vmid}" if self.kind == "qemu" else f"CT{self.vmid}"
        return str(self.config.get(key, default))

    @property
    def sid(self) -> str:
        return f"{'vm' if self.kind == 'qemu' else 'ct'}:{self.vmid}"

    def set_running(self, pid: int) -> None:
        self.status = "running"
        self.qmpstatus = "running"
        self.started_at = time.time()
        self.pid = pid

    def set_stopped(self) -> None:
        self.status = "stopped"
        self.qmpstatus = "stopped"
        self.started_at = None
        self.pid = None

    def uptime(self) -> int:
        return int(time.time() - self.started_at) if self.started_at is not None else 0

    def merged_config(self) -> dict[str, Any]:
        """The config with pending values merged in (``GET …/config`` without ``current``)."""
        merged = {k: v for k, v in self.config.items() if k not in self.pending_delete}
        merged.update(self.pending)
        return merged

    def apply_pending(self) -> None:
        """Pending changes become real (start, reboot)."""
        for key in self.pending_delete:
            self.config.pop(key, None)
        self.config.update(self.pending)
        self.pending.clear()
        self.pending_delete.clear()

    def serialize(self) -> str:
        """The config file text; its SHA-1 is the ``digest`` (reference §5.3)."""
        lines = [f"{k}: {v}" for k, v in sorted(self.config.items())]
        if self.pending or self.pending_delete:
            lines.append("")
            lines.append("[PENDING]")
            if self.pending_delete:
                lines.append(f"delete: {','.join(sorted(self.pending_delete))}")
            lines.extend(f"{k}: {v}" for k, v in sorted(self.pending.items()))
        return "\n".join(lines) + "\n"

    def digest(self) -> str:
        return hashlib.sha1(self.serialize().encode(), usedforsecurity=False).hexdigest()

    def disk_bytes(self) -> int:
        """Size of the boot disk (``maxdisk``)."""
        for key in ("rootfs", "scsi0", "virtio0", "sata0", "ide0"):
            size = disk_size(self.config.get(key))
            if size is not None:
                return size
        return 0

    def mem_bytes(self) -> int:
        try:
            return int(str(self.merged_config().get("memory", 512))) * 1024 * 1024
        except ValueError:
            return 512 * 1024 * 1024

    def cpus(self) -> int:
        cfg = self.config
        if self.kind == "lxc":
            return int(cfg.get("cores", 1))
        if "vcpus" in cfg:
            return int(cfg["vcpus"])
        return int(cfg.get("sockets", 1)) * int(cfg.get("cores", 1))


_SIZE_RE = re.compile(r"^(?P<num>\d+(?:\.\d+)?)(?P<unit>[KMGT]?)$")
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int | None:
    m = _SIZE_RE.fullmatch(text.strip())
    if m is None:
        return None
    return int(float(m["num"]) * _UNITS[m["unit"]])


def format_size(size: int) -> str:
    """Bytes as Proxmox writes them into a disk entry (largest exact unit)."""
    for unit in ("T", "G", "M", "K"):
        if size % _UNITS[unit] == 0 and size >= _UNITS[unit]:
            return f"{size // _UNITS[unit]}{unit}"
    return str(size)


def disk_size(entry: Any) -> int | None:
    if not isinstance(entry, str):
        return None
    for part in entry.split(",")[1:]:
        key, _, value = part.partition("=")
        if key == "size":
            return parse_size(value)
    return None


def with_disk_size(entry: str, size: int) -> str:
    parts = entry.split(",")
    rest = [p for p in parts[1:] if not p.startswith("size=")]
    return ",".join([parts[0], *rest, f"size={format_size(size)}"])


@attrs.define(kw_only=True, eq=False)
class Node:
    """A cluster member."""

    name: str
    online: bool = True
    boot_time: float = attrs.field(factory=time.time)
    #: The node's notes (``/etc/pve/nodes/{node}/config``, ``GET/PUT /nodes/{node}/config``).
    description: str = ""
    next_pid: int = 0x1000
    ip: str = "10.0.0.1"

    def config_digest(self) -> str:
        """The SHA-1 of the node config file, as ``digest`` (compare-and-swap of a PUT)."""
        text = f"#{self.description}\n" if self.description else ""
        return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()

    def pstart_now(self) -> int:
        """Clock ticks (100 Hz) since boot: what a new process's ``pstart`` is."""
        return int((time.time() - self.boot_time) * 100)

    def new_pid(self, rng: random.Random) -> int:
        self.next_pid += rng.randint(1, 97)
        if self.next_pid > 0x3FFFFF:
            self.next_pid = 0x1000
        return self.next_pid


# --- seeding -------------------------------------------------------------------------------

_WORDS = ("web", "db", "cache", "api", "worker", "mail", "proxy", "build", "dns", "mon")


def random_mac(rng: random.Random) -> str:
    return "BC:24:11:" + ":".join(f"{rng.randrange(256):02X}" for _ in range(3))


def random_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def qemu_config(vmid: int, name: str, rng: random.Random, *, ctime: int) -> dict[str, Any]:
    return {
        "name": name,
        "cores": rng.choice((1, 2, 4)),
        "sockets": 1,
        "memory": str(rng.choice((1024, 2048, 4096))),
        "scsi0": f"local-lvm:vm-{vmid}-disk-0,iothread=1,size=32G",
        "scsihw": "virtio-scsi-single",
        "net0": f"virtio={random_mac(rng)},bridge=vmbr0,firewall=1",
        "ostype": "l26",
        "boot": "order=scsi0;net0",
        "smbios1": f"uuid={random_uuid(rng)}",
        "vmgenid": random_uuid(rng),
        "meta": f"creation-qemu=9.0.2,ctime={ctime}",
        "onboot": 0,
    }


def lxc_config(vmid: int, name: str, rng: random.Random) -> dict[str, Any]:
    return {
        "hostname": name,
        "arch": "amd64",
        "cores": rng.choice((1, 2)),
        "memory": rng.choice((512, 1024)),
        "swap": 512,
        "rootfs": f"local-lvm:vm-{vmid}-disk-0,size=8G",
        "net0": f"name=eth0,bridge=vmbr0,hwaddr={random_mac(rng)},ip=dhcp,type=veth",
        "ostype": "debian",
        "unprivileged": 1,
    }


#: Roles by position (index = vmid - 100) so tests can rely on them; documented in SIMULATOR.md.
PROTECTED_INDEX = 2
TEMPLATE_INDEX = 6
HA_INDEXES = (4, 7)


def seed_guests(cfg: SimConfig, rng: random.Random) -> dict[int, Guest]:
    """The deterministic initial guest set for ``cfg`` (same seed → same cluster)."""
    guests: dict[int, Guest] = {}
    base_ctime = 1_700_000_000
    for i in range(cfg.guests):
        vmid = 100 + i
        kind = "lxc" if i % 4 == 3 else "qemu"
        node = cfg.nodes[(i + i // 4) % len(cfg.nodes)]  # both kinds on every node
        name = f"{_WORDS[i % len(_WORDS)]}-{vmid}"
        if kind == "qemu":
            config = qemu_config(vmid, name, rng, ctime=base_ctime + i * 3600)
        else:
            config = lxc_config(vmid, name, rng)
        guest = Guest(vmid=vmid, kind=kind, node=node, config=config)
        running = rng.random() < 0.6
        if i in (0, 3):
            running = True
        if i == 1:
            running = False
        if i == PROTECTED_INDEX:
            config["protection"] = 1
        if i == TEMPLATE_INDEX and kind == "qemu":
            config["template"] = 1
            config["name"] = f"tmpl-{vmid}"
            running = False
        if i in HA_INDEXES:
            guest.ha = HaResource(state="started")
            running = True
        if running:
            guest.set_running(pid=0)
            guest.started_at = time.time() - rng.randint(60, 30 * 86400)
        guests[vmid] = guest
    return guests
