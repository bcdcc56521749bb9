"""Which params each action takes: Proxmox's own API schema, per endpoint (reference §13).

:data:`ENDPOINT_PARAMS` is derived from pve-docs ``apidata.js`` 9.1.3 (the shared reference
``pve-api-schema.json``) for every endpoint of the action catalogue, path parameters left out;
``tests/unit/test_pve_params.py`` derives it again from that file and compares. Each entry is
``(type, max_length, minimum, maximum, enum, index_max)``; ``index_max`` is set for indexed
keys (``net[n]`` is stored as ``net`` and accepts ``net0`` … ``net<index_max>``).

:func:`param_problems` is the one rule for a submission's params: flat scalars, keys the
action's endpoint takes for the guest's kind (both kinds' when the kind is not given), values
of the schema's type, range, enum and length, and text that :mod:`lifecycled.domain.text`
accepts. A few lifecycled-level names are translated by :func:`~lifecycled.domain.actions.wire_params`
(``force_stop``, ``with_local_disks``, ``source_vmid``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from lifecycled.domain.actions import Action, UnsupportedAction, spec_for
from lifecycled.domain.op import GuestKind
from lifecycled.domain.text import INT64_MAX, INT64_MIN, float_problem, shown, text_problem

#: ``(type, max_length, minimum, maximum, enum, index_max)``
ParamSpec = tuple[
    str, int | None, int | float | None, int | float | None, tuple[str, ...] | None, int | None
]

#: Longest value of a string param whose schema sets no maxLength.
MAX_VALUE_LENGTH = 4096
#: Most params one submission may carry.
MAX_PARAMS = 128
#: Params whose value is free text (may hold newlines and tabs).
FREE_TEXT_PARAMS = frozenset({"description"})

_BOOL: ParamSpec = ("boolean", None, None, None, None, None)

#: lifecycled-level params (translated by ``wire_params``), per action and kind.
LIFECYCLED_PARAMS: dict[tuple[GuestKind, Action], dict[str, ParamSpec]] = {
    (GuestKind.QEMU, Action.SHUTDOWN): {"force_stop": _BOOL},
    (GuestKind.LXC, Action.SHUTDOWN): {"force_stop": _BOOL},
    (GuestKind.QEMU, Action.MIGRATE): {"with_local_disks": _BOOL},
    (GuestKind.QEMU, Action.CLONE): {"source_vmid": ("integer", None, 100, 999999999, None, None)},
    (GuestKind.LXC, Action.CLONE): {"source_vmid": ("integer", None, 100, 999999999, None, None)},
}

#: Params lifecycled sets itself (from the submission's vmid), never taken from a client.
_SET_BY_LIFECYCLED = {Action.CREATE: frozenset({"vmid"}), Action.CLONE: frozenset({"newid"})}

ENDPOINT_PARAMS: dict[str, dict[str, ParamSpec]] = {
    "DELETE /nodes/{node}/lxc/{vmid}": {
        "destroy-unreferenced-disks": ("boolean", None, None, None, None, None),
        "force": ("boolean", None, None, None, None, None),
        "purge": ("boolean", None, None, None, None, None),
    },
    "DELETE /nodes/{node}/qemu/{vmid}": {
        "destroy-unreferenced-disks": ("boolean", None, None, None, None, None),
        "purge": ("boolean", None, None, None, None, None),
        "skiplock": ("boolean", None, None, None, None, None),
    },
    "POST /nodes/{node}/lxc": {
        "arch": (
            "string",
            None,
            None,
            None,
            ("amd64", "i386", "arm64", "armhf", "riscv32", "riscv64"),
            None,
        ),
        "bwlimit": ("number", None, 0, None, None, None),
        "cmode": ("string", None, None, None, ("shell", "console", "tty"), None),
        "console": ("boolean", None, None, None, None, None),
        "cores": ("integer", None, 1, 8192, None, None),
        "cpulimit": ("number", None, 0, 8192, None, None),
        "cpuunits": ("integer", None, 0, 500000, None, None),
        "debug": ("boolean", None, None, None, None, None),
        "description": ("string", 8192, None, None, None, None),
        "dev": ("string", None, None, None, None, 255),
        "entrypoint": ("string", None, None, None, None, None),
        "env": ("string", None, None, None, None, None),
        "features": ("string", None, None, None, None, None),
        "force": ("boolean", None, None, None, None, None),
        "ha-managed": ("boolean", None, None, None, None, None),
        "hookscript": ("string", None, None, None, None, None),
        "hostname": ("string", 255, None, None, None, None),
        "ignore-unpack-errors": ("boolean", None, None, None, None, None),
        "lock": (
            "string",
            None,
            None,
            None,
            (
                "backup",
                "create",
                "destroyed",
                "disk",
                "fstrim",
                "migrate",
                "mounted",
                "rollback",
                "snapshot",
                "snapshot-delete",
            ),
            None,
        ),
        "memory": ("integer", None, 16, None, None, None),
        "mp": ("string", None, None, None, None, 255),
        "nameserver": ("string", None, None, None, None, None),
        "net": ("string", None, None, None, None, 255),
        "onboot": ("boolean", None, None, None, None, None),
        "ostemplate": ("string", 255, None, None, None, None),
        "ostype": (
            "string",
            None,
            None,
            None,
            (
                "debian",
                "devuan",
                "ubuntu",
                "centos",
                "fedora",
                "opensuse",
                "archlinux",
                "alpine",
                "gentoo",
                "nixos",
                "unmanaged",
            ),
            None,
        ),
        "password": ("string", None, None, None, None, None),
        "pool": ("string", None, None, None, None, None),
        "protection": ("boolean", None, None, None, None, None),
        "restore": ("boolean", None, None, None, None, None),
        "rootfs": ("string", None, None, None, None, None),
        "searchdomain": ("string", None, None, None, None, None),
        "ssh-public-keys": ("string", None, None, None, None, None),
        "start": ("boolean", None, None, None, None, None),
        "startup": ("string", None, None, None, None, None),
        "storage": ("string", None, None, None, None, None),
        "swap": ("integer", None, 0, None, None, None),
        "tags": ("string", None, None, None, None, None),
        "template": ("boolean", None, None, None, None, None),
        "timezone": ("string", None, None, None, None, None),
        "tty": ("integer", None, 0, 6, None, None),
        "unique": ("boolean", None, None, None, None, None),
        "unprivileged": ("boolean", None, None, None, None, None),
        "unused": ("string", None, None, None, None, 255),
        "vmid": ("integer", None, 100, 999999999, None, None),
    },
    "POST /nodes/{node}/lxc/{vmid}/clone": {
        "bwlimit": ("number", None, 0, None, None, None),
        "description": ("string", None, None, None, None, None),
        "full": ("boolean", None, None, None, None, None),
        "hostname": ("string", None, None, None, None, None),
        "newid": ("integer", None, 100, 999999999, None, None),
        "pool": ("string", None, None, None, None, None),
        "snapname": ("string", 40, None, None, None, None),
        "storage": ("string", None, None, None, None, None),
        "target": ("string", None, None, None, None, None),
    },
    "POST /nodes/{node}/lxc/{vmid}/migrate": {
        "bwlimit": ("number", None, 0, None, None, None),
        "online": ("boolean", None, None, None, None, None),
        "restart": ("boolean", None, None, None, None, None),
        "target": ("string", None, None, None, None, None),
        "target-storage": ("string", None, None, None, None, None),
        "timeout": ("integer", None, None, None, None, None),
    },
    "POST /nodes/{node}/lxc/{vmid}/status/reboot": {
        "timeout": ("integer", None, 0, None, None, None),
    },
    "POST /nodes/{node}/lxc/{vmid}/status/resume": {},
    "POST /nodes/{node}/lxc/{vmid}/status/shutdown": {
        "forceStop": ("boolean", None, None, None, None, None),
        "timeout": ("integer", None, 0, None, None, None),
    },
    "POST /nodes/{node}/lxc/{vmid}/status/start": {
        "debug": ("boolean", None, None, None, None, None),
        "skiplock": ("boolean", None, None, None, None, None),
    },
    "POST /nodes/{node}/lxc/{vmid}/status/stop": {
        "overrule-shutdown": ("boolean", None, None, None, None, None),
        "skiplock": ("boolean", None, None, None, None, None),
    },
    "POST /nodes/{node}/lxc/{vmid}/status/suspend": {},
    "POST /nodes/{node}/qemu": {
        "acpi": ("boolean", None, None, None, None, None),
        "affinity": ("string", None, None, None, None, None),
        "agent": ("string", None, None, None, None, None),
        "allow-ksm": ("boolean", None, None, None, None, None),
        "amd-sev": ("string", None, None, None, None, None),
        "arch": ("string", None, None, None, ("x86_64", "aarch64"), None),
        "archive": ("string", 255, None, None, None, None),
        "args": ("string", None, None, None, None, None),
        "audio0": ("string", None, None, None, None, None),
        "autostart": ("boolean", None, None, None, None, None),
        "balloon": ("integer", None, 0, None, None, None),
        "bios": ("string", None, None, None, ("seabios", "ovmf"), None),
        "boot": ("string", None, None, None, None, None),
        "bootdisk": ("string", None, None, None, None, None),
        "bwlimit": ("integer", None, 0, None, None, None),
        "cdrom": ("string", None, None, None, None, None),
        "cicustom": ("string", None, None, None, None, None),
        "cipassword": ("string", None, None, None, None, None),
        "citype": ("string", None, None, None, ("configdrive2", "nocloud", "opennebula"), None),
        "ciupgrade": ("boolean", None, None, None, None, None),
        "ciuser": ("string", None, None, None, None, None),
        "cores": ("integer", None, 1, None, None, None),
        "cpu": ("string", None, None, None, None, None),
        "cpulimit": ("number", None, 0, 128, None, None),
        "cpuunits": ("integer", None, 1, 262144, None, None),
        "description": ("string", 8192, None, None, None, None),
        "efidisk": ("string", None, None, None, None, 0),
        "force": ("boolean", None, None, None, None, None),
        "freeze": ("boolean", None, None, None, None, None),
        "ha-managed": ("boolean", None, None, None, None, None),
        "hookscript": ("string", None, None, None, None, None),
        "hostpci": ("string", None, None, None, None, 255),
        "hotplug": ("string", None, None, None, None, None),
        "hugepages": ("string", None, None, None, ("any", "2", "1024"), None),
        "ide": ("string", None, None, None, None, 255),
        "import-working-storage": ("string", None, None, None, None, None),
        "intel-tdx": ("string", None, None, None, None, None),
        "ipconfig": ("string", None, None, None, None, 255),
        "ivshmem": ("string", None, None, None, None, None),
        "keephugepages": ("boolean", None, None, None, None, None),
        "keyboard": (
            "string",
            None,
            None,
            None,
            (
                "de",
                "de-ch",
                "da",
                "en-gb",
                "en-us",
                "es",
                "fi",
                "fr",
                "fr-be",
                "fr-ca",
                "fr-ch",
                "hu",
                "is",
                "it",
                "ja",
                "lt",
                "mk",
                "nl",
                "no",
                "pl",
                "pt",
                "pt-br",
                "sv",
                "sl",
                "tr",
            ),
            None,
        ),
        "kvm": ("boolean", None, None, None, None, None),
        "live-restore": ("boolean", None, None, None, None, None),
        "localtime": ("boolean", None, None, None, None, None),
        "lock": (
            "string",
            None,
            None,
            None,
            (
                "backup",
                "clone",
                "create",
                "migrate",
                "rollback",
                "snapshot",
                "snapshot-delete",
                "suspending",
                "suspended",
            ),
            None,
        ),
        "machine": ("string", None, None, None, None, None),
        "memory": ("string", None, None, None, None, None),
        "migrate_downtime": ("number", None, 0, None, None, None),
        "migrate_speed": ("integer", None, 0, None, None, None),
        "name": ("string", None, None, None, None, None),
        "nameserver": ("string", None, None, None, None, None),
        "net": ("string", None, None, None, None, 255),
        "numa": ("string", None, None, None, None, 255),
        "onboot": ("boolean", None, None, None, None, None),
        "ostype": (
            "string",
            None,
            None,
            None,
            (
                "other",
                "wxp",
                "w2k",
                "w2k3",
                "w2k8",
                "wvista",
                "win7",
                "win8",
                "win10",
                "win11",
                "l24",
                "l26",
                "solaris",
            ),
            None,
        ),
        "parallel": ("string", None, None, None, None, 255),
        "pool": ("string", None, None, None, None, None),
        "protection": ("boolean", None, None, None, None, None),
        "reboot": ("boolean", None, None, None, None, None),
        "rng0": ("string", None, None, None, None, None),
        "sata": ("string", None, None, None, None, 255),
        "scsi": ("string", None, None, None, None, 255),
        "scsihw": (
            "string",
            None,
            None,
            None,
            ("lsi", "lsi53c810", "virtio-scsi-pci", "virtio-scsi-single", "megasas", "pvscsi"),
            None,
        ),
        "searchdomain": ("string", None, None, None, None, None),
        "serial": ("string", None, None, None, None, 255),
        "shares": ("integer", None, 0, 50000, None, None),
        "smbios1": ("string", 512, None, None, None, None),
        "smp": ("integer", None, 1, None, None, None),
        "sockets": ("integer", None, 1, None, None, None),
        "spice_enhancements": ("string", None, None, None, None, None),
        "sshkeys": ("string", None, None, None, None, None),
        "start": ("boolean", None, None, None, None, None),
        "startdate": ("string", None, None, None, None, None),
        "startup": ("string", None, None, None, None, None),
        "storage": ("string", None, None, None, None, None),
        "tablet": ("boolean", None, None, None, None, None),
        "tags": ("string", None, None, None, None, None),
        "tdf": ("boolean", None, None, None, None, None),
        "template": ("boolean", None, None, None, None, None),
        "tpmstate": ("string", None, None, None, None, 0),
        "unique": ("boolean", None, None, None, None, None),
        "unused": ("string", None, None, None, None, 255),
        "usb": ("string", None, None, None, None, 255),
        "vcpus": ("integer", None, 1, None, None, None),
        "vga": ("string", None, None, None, None, None),
        "virtio": ("string", None, None, None, None, 255),
        "virtiofs": ("string", None, None, None, None, 255),
        "vmgenid": ("string", None, None, None, None, None),
        "vmid": ("integer", None, 100, 999999999, None, None),
        "vmstatestorage": ("string", None, None, None, None, None),
        "watchdog": ("string", None, None, None, None, None),
    },
    "POST /nodes/{node}/qemu/{vmid}/clone": {
        "bwlimit": ("integer", None, 0, None, None, None),
        "description": ("string", None, None, None, None, None),
        "format": ("string", None, None, None, ("raw", "qcow2", "vmdk"), None),
        "full": ("boolean", None, None, None, None, None),
        "name": ("string", None, None, None, None, None),
        "newid": ("integer", None, 100, 999999999, None, None),
        "pool": ("string", None, None, None, None, None),
        "snapname": ("string", 40, None, None, None, None),
        "storage": ("string", None, None, None, None, None),
        "target": ("string", None, None, None, None, None),
    },
    "POST /nodes/{node}/qemu/{vmid}/config": {
        "acpi": ("boolean", None, None, None, None, None),
        "affinity": ("string", None, None, None, None, None),
        "agent": ("string", None, None, None, None, None),
        "allow-ksm": ("boolean", None, None, None, None, None),
        "amd-sev": ("string", None, None, None, None, None),
        "arch": ("string", None, None, None, ("x86_64", "aarch64"), None),
        "args": ("string", None, None, None, None, None),
        "audio0": ("string", None, None, None, None, None),
        "autostart": ("boolean", None, None, None, None, None),
        "background_delay": ("integer", None, 1, 30, None, None),
        "balloon": ("integer", None, 0, None, None, None),
        "bios": ("string", None, None, None, ("seabios", "ovmf"), None),
        "boot": ("string", None, None, None, None, None),
        "bootdisk": ("string", None, None, None, None, None),
        "cdrom": ("string", None, None, None, None, None),
        "cicustom": ("string", None, None, None, None, None),
        "cipassword": ("string", None, None, None, None, None),
        "citype": ("string", None, None, None, ("configdrive2", "nocloud", "opennebula"), None),
        "ciupgrade": ("boolean", None, None, None, None, None),
        "ciuser": ("string", None, None, None, None, None),
        "cores": ("integer", None, 1, None, None, None),
        "cpu": ("string", None, None, None, None, None),
        "cpulimit": ("number", None, 0, 128, None, None),
        "cpuunits": ("integer", None, 1, 262144, None, None),
        "delete": ("string", None, None, None, None, None),
        "description": ("string", 8192, None, None, None, None),
        "digest": ("string", 40, None, None, None, None),
        "efidisk": ("string", None, None, None, None, 0),
        "force": ("boolean", None, None, None, None, None),
        "freeze": ("boolean", None, None, None, None, None),
        "hookscript": ("string", None, None, None, None, None),
        "hostpci": ("string", None, None, None, None, 255),
        "hotplug": ("string", None, None, None, None, None),
        "hugepages": ("string", None, None, None, ("any", "2", "1024"), None),
        "ide": ("string", None, None, None, None, 255),
        "import-working-storage": ("string", None, None, None, None, None),
        "intel-tdx": ("string", None, None, None, None, None),
        "ipconfig": ("string", None, None, None, None, 255),
        "ivshmem": ("string", None, None, None, None, None),
        "keephugepages": ("boolean", None, None, None, None, None),
        "keyboard": (
            "string",
            None,
            None,
            None,
            (
                "de",
                "de-ch",
                "da",
                "en-gb",
                "en-us",
                "es",
                "fi",
                "fr",
                "fr-be",
                "fr-ca",
                "fr-ch",
                "hu",
                "is",
                "it",
                "ja",
                "lt",
                "mk",
                "nl",
                "no",
                "pl",
                "pt",
                "pt-br",
                "sv",
                "sl",
                "tr",
            ),
            None,
        ),
        "kvm": ("boolean", None, None, None, None, None),
        "localtime": ("boolean", None, None, None, None, None),
        "lock": (
            "string",
            None,
            None,
            None,
            (
                "backup",
                "clone",
                "create",
                "migrate",
                "rollback",
                "snapshot",
                "snapshot-delete",
                "suspending",
                "suspended",
            ),
            None,
        ),
        "machine": ("string", None, None, None, None, None),
        "memory": ("string", None, None, None, None, None),
        "migrate_downtime": ("number", None, 0, None, None, None),
        "migrate_speed": ("integer", None, 0, None, None, None),
        "name": ("string", None, None, None, None, None),
        "nameserver": ("string", None, None, None, None, None),
        "net": ("string", None, None, None, None, 255),
        "numa": ("string", None, None, None, None, 255),
        "onboot": ("boolean", None, None, None, None, None),
        "ostype": (
            "string",
            None,
            None,
            None,
            (
                "other",
                "wxp",
                "w2k",
                "w2k3",
                "w2k8",
                "wvista",
                "win7",
                "win8",
                "win10",
                "win11",
                "l24",
                "l26",
                "solaris",
            ),
            None,
        ),
        "parallel": ("string", None, None, None, None, 255),
        "protection": ("boolean", None, None, None, None, None),
        "reboot": ("boolean", None, None, None, None, None),
        "revert": ("string", None, None, None, None, None),
        "rng0": ("string", None, None, None, None, None),
        "sata": ("string", None, None, None, None, 255),
        "scsi": ("string", None, None, None, None, 255),
        "scsihw": (
            "string",
            None,
            None,
            None,
            ("lsi", "lsi53c810", "virtio-scsi-pci", "virtio-scsi-single", "megasas", "pvscsi"),
            None,
        ),
        "searchdomain": ("string", None, None, None, None, None),
        "serial": ("string", None, None, None, None, 255),
        "shares": ("integer", None, 0, 50000, None, None),
        "skiplock": ("boolean", None, None, None, None, None),
        "smbios1": ("string", 512, None, None, None, None),
        "smp": ("integer", None, 1, None, None, None),
        "sockets": ("integer", None, 1, None, None, None),
        "spice_enhancements": ("string", None, None, None, None, None),
        "sshkeys": ("string", None, None, None, None, None),
        "startdate": ("string", None, None, None, None, None),
        "startup": ("string", None, None, None, None, None),
        "tablet": ("boolean", None, None, None, None, None),
        "tags": ("string", None, None, None, None, None),
        "tdf": ("boolean", None, None, None, None, None),
        "template": ("boolean", None, None, None, None, None),
        "tpmstate": ("string", None, None, None, None, 0),
        "unused": ("string", None, None, None, None, 255),
        "usb": ("string", None, None, None, None, 255),
        "vcpus": ("integer", None, 1, None, None, None),
        "vga": ("string", None, None, None, None, None),
        "virtio": ("string", None, None, None, None, 255),
        "virtiofs": ("string", None, None, None, None, 255),
        "vmgenid": ("string", None, None, None, None, None),
        "vmstatestorage": ("string", None, None, None, None, None),
        "watchdog": ("string", None, None, None, None, None),
    },
    "POST /nodes/{node}/qemu/{vmid}/migrate": {
        "bwlimit": ("integer", None, 0, None, None, None),
        "force": ("boolean", None, None, None, None, None),
        "migration_network": ("string", None, None, None, None, None),
        "migration_type": ("string", None, None, None, ("secure", "insecure"), None),
        "online": ("boolean", None, None, None, None, None),
        "target": ("string", None, None, None, None, None),
        "targetstorage": ("string", None, None, None, None, None),
        "with-conntrack-state": ("boolean", None, None, None, None, None),
        "with-local-disks": ("boolean", None, None, None, None, None),
    },
    "POST /nodes/{node}/qemu/{vmid}/status/reboot": {
        "timeout": ("integer", None, 0, None, None, None),
    },
    "POST /nodes/{node}/qemu/{vmid}/status/reset": {
        "skiplock": ("boolean", None, None, None, None, None),
    },
    "POST /nodes/{node}/qemu/{vmid}/status/resume": {
        "nocheck": ("boolean", None, None, None, None, None),
        "skiplock": ("boolean", None, None, None, None, None),
    },
    "POST /nodes/{node}/qemu/{vmid}/status/shutdown": {
        "forceStop": ("boolean", None, None, None, None, None),
        "keepActive": ("boolean", None, None, None, None, None),
        "skiplock": ("boolean", None, None, None, None, None),
        "timeout": ("integer", None, 0, None, None, None),
    },
    "POST /nodes/{node}/qemu/{vmid}/status/start": {
        "force-cpu": ("string", None, None, None, None, None),
        "machine": ("string", None, None, None, None, None),
        "migratedfrom": ("string", None, None, None, None, None),
        "migration_network": ("string", None, None, None, None, None),
        "migration_type": ("string", None, None, None, ("secure", "insecure"), None),
        "nets-host-mtu": ("string", None, None, None, None, None),
        "skiplock": ("boolean", None, None, None, None, None),
        "stateuri": ("string", 128, None, None, None, None),
        "targetstorage": ("string", None, None, None, None, None),
        "timeout": ("integer", None, 0, None, None, None),
        "with-conntrack-state": ("boolean", None, None, None, None, None),
    },
    "POST /nodes/{node}/qemu/{vmid}/status/stop": {
        "keepActive": ("boolean", None, None, None, None, None),
        "migratedfrom": ("string", None, None, None, None, None),
        "overrule-shutdown": ("boolean", None, None, None, None, None),
        "skiplock": ("boolean", None, None, None, None, None),
        "timeout": ("integer", None, 0, None, None, None),
    },
    "POST /nodes/{node}/qemu/{vmid}/status/suspend": {
        "skiplock": ("boolean", None, None, None, None, None),
        "statestorage": ("string", None, None, None, None, None),
        "todisk": ("boolean", None, None, None, None, None),
    },
    "PUT /nodes/{node}/lxc/{vmid}/config": {
        "arch": (
            "string",
            None,
            None,
            None,
            ("amd64", "i386", "arm64", "armhf", "riscv32", "riscv64"),
            None,
        ),
        "cmode": ("string", None, None, None, ("shell", "console", "tty"), None),
        "console": ("boolean", None, None, None, None, None),
        "cores": ("integer", None, 1, 8192, None, None),
        "cpulimit": ("number", None, 0, 8192, None, None),
        "cpuunits": ("integer", None, 0, 500000, None, None),
        "debug": ("boolean", None, None, None, None, None),
        "delete": ("string", None, None, None, None, None),
        "description": ("string", 8192, None, None, None, None),
        "dev": ("string", None, None, None, None, 255),
        "digest": ("string", 40, None, None, None, None),
        "entrypoint": ("string", None, None, None, None, None),
        "env": ("string", None, None, None, None, None),
        "features": ("string", None, None, None, None, None),
        "hookscript": ("string", None, None, None, None, None),
        "hostname": ("string", 255, None, None, None, None),
        "lock": (
            "string",
            None,
            None,
            None,
            (
                "backup",
                "create",
                "destroyed",
                "disk",
                "fstrim",
                "migrate",
                "mounted",
                "rollback",
                "snapshot",
                "snapshot-delete",
            ),
            None,
        ),
        "memory": ("integer", None, 16, None, None, None),
        "mp": ("string", None, None, None, None, 255),
        "nameserver": ("string", None, None, None, None, None),
        "net": ("string", None, None, None, None, 255),
        "onboot": ("boolean", None, None, None, None, None),
        "ostype": (
            "string",
            None,
            None,
            None,
            (
                "debian",
                "devuan",
                "ubuntu",
                "centos",
                "fedora",
                "opensuse",
                "archlinux",
                "alpine",
                "gentoo",
                "nixos",
                "unmanaged",
            ),
            None,
        ),
        "protection": ("boolean", None, None, None, None, None),
        "revert": ("string", None, None, None, None, None),
        "rootfs": ("string", None, None, None, None, None),
        "searchdomain": ("string", None, None, None, None, None),
        "startup": ("string", None, None, None, None, None),
        "swap": ("integer", None, 0, None, None, None),
        "tags": ("string", None, None, None, None, None),
        "template": ("boolean", None, None, None, None, None),
        "timezone": ("string", None, None, None, None, None),
        "tty": ("integer", None, 0, 6, None, None),
        "unprivileged": ("boolean", None, None, None, None, None),
        "unused": ("string", None, None, None, None, 255),
    },
    "PUT /nodes/{node}/lxc/{vmid}/resize": {
        "digest": ("string", 40, None, None, None, None),
        "disk": (
            "string",
            None,
            None,
            None,
            (
                "rootfs",
                "mp0",
                "mp1",
                "mp2",
                "mp3",
                "mp4",
                "mp5",
                "mp6",
                "mp7",
                "mp8",
                "mp9",
                "mp10",
                "mp11",
                "mp12",
                "mp13",
                "mp14",
                "mp15",
                "mp16",
                "mp17",
                "mp18",
                "mp19",
                "mp20",
                "mp21",
                "mp22",
                "mp23",
                "mp24",
                "mp25",
                "mp26",
                "mp27",
                "mp28",
                "mp29",
                "mp30",
                "mp31",
                "mp32",
                "mp33",
                "mp34",
                "mp35",
                "mp36",
                "mp37",
                "mp38",
                "mp39",
                "mp40",
                "mp41",
                "mp42",
                "mp43",
                "mp44",
                "mp45",
                "mp46",
                "mp47",
                "mp48",
                "mp49",
                "mp50",
                "mp51",
                "mp52",
                "mp53",
                "mp54",
                "mp55",
                "mp56",
                "mp57",
                "mp58",
                "mp59",
                "mp60",
                "mp61",
                "mp62",
                "mp63",
                "mp64",
                "mp65",
                "mp66",
                "mp67",
                "mp68",
                "mp69",
                "mp70",
                "mp71",
                "mp72",
                "mp73",
                "mp74",
                "mp75",
                "mp76",
                "mp77",
                "mp78",
                "mp79",
                "mp80",
                "mp81",
                "mp82",
                "mp83",
                "mp84",
                "mp85",
                "mp86",
                "mp87",
                "mp88",
                "mp89",
                "mp90",
                "mp91",
                "mp92",
                "mp93",
                "mp94",
                "mp95",
                "mp96",
                "mp97",
                "mp98",
                "mp99",
                "mp100",
                "mp101",
                "mp102",
                "mp103",
                "mp104",
                "mp105",
                "mp106",
                "mp107",
                "mp108",
                "mp109",
                "mp110",
                "mp111",
                "mp112",
                "mp113",
                "mp114",
                "mp115",
                "mp116",
                "mp117",
                "mp118",
                "mp119",
                "mp120",
                "mp121",
                "mp122",
                "mp123",
                "mp124",
                "mp125",
                "mp126",
                "mp127",
                "mp128",
                "mp129",
                "mp130",
                "mp131",
                "mp132",
                "mp133",
                "mp134",
                "mp135",
                "mp136",
                "mp137",
                "mp138",
                "mp139",
                "mp140",
                "mp141",
                "mp142",
                "mp143",
                "mp144",
                "mp145",
                "mp146",
                "mp147",
                "mp148",
                "mp149",
                "mp150",
                "mp151",
                "mp152",
                "mp153",
                "mp154",
                "mp155",
                "mp156",
                "mp157",
                "mp158",
                "mp159",
                "mp160",
                "mp161",
                "mp162",
                "mp163",
                "mp164",
                "mp165",
                "mp166",
                "mp167",
                "mp168",
                "mp169",
                "mp170",
                "mp171",
                "mp172",
                "mp173",
                "mp174",
                "mp175",
                "mp176",
                "mp177",
                "mp178",
                "mp179",
                "mp180",
                "mp181",
                "mp182",
                "mp183",
                "mp184",
                "mp185",
                "mp186",
                "mp187",
                "mp188",
                "mp189",
                "mp190",
                "mp191",
                "mp192",
                "mp193",
                "mp194",
                "mp195",
                "mp196",
                "mp197",
                "mp198",
                "mp199",
                "mp200",
                "mp201",
                "mp202",
                "mp203",
                "mp204",
                "mp205",
                "mp206",
                "mp207",
                "mp208",
                "mp209",
                "mp210",
                "mp211",
                "mp212",
                "mp213",
                "mp214",
                "mp215",
                "mp216",
                "mp217",
                "mp218",
                "mp219",
                "mp220",
                "mp221",
                "mp222",
                "mp223",
                "mp224",
                "mp225",
                "mp226",
                "mp227",
                "mp228",
                "mp229",
                "mp230",
                "mp231",
                "mp232",
                "mp233",
                "mp234",
                "mp235",
                "mp236",
                "mp237",
                "mp238",
                "mp239",
                "mp240",
                "mp241",
                "mp242",
                "mp243",
                "mp244",
                "mp245",
                "mp246",
                "mp247",
                "mp248",
                "mp249",
                "mp250",
                "mp251",
                "mp252",
                "mp253",
                "mp254",
                "mp255",
            ),
            None,
        ),
        "size": ("string", None, None, None, None, None),
    },
    "PUT /nodes/{node}/qemu/{vmid}/resize": {
        "digest": ("string", 40, None, None, None, None),
        "disk": (
            "string",
            None,
            None,
            None,
            (
                "ide0",
                "ide1",
                "ide2",
                "ide3",
                "scsi0",
                "scsi1",
                "scsi2",
                "scsi3",
                "scsi4",
                "scsi5",
                "scsi6",
                "scsi7",
                "scsi8",
                "scsi9",
                "scsi10",
                "scsi11",
                "scsi12",
                "scsi13",
                "scsi14",
                "scsi15",
                "scsi16",
                "scsi17",
                "scsi18",
                "scsi19",
                "scsi20",
                "scsi21",
                "scsi22",
                "scsi23",
                "scsi24",
                "scsi25",
                "scsi26",
                "scsi27",
                "scsi28",
                "scsi29",
                "scsi30",
                "virtio0",
                "virtio1",
                "virtio2",
                "virtio3",
                "virtio4",
                "virtio5",
                "virtio6",
                "virtio7",
                "virtio8",
                "virtio9",
                "virtio10",
                "virtio11",
                "virtio12",
                "virtio13",
                "virtio14",
                "virtio15",
                "sata0",
                "sata1",
                "sata2",
                "sata3",
                "sata4",
                "sata5",
                "efidisk0",
                "tpmstate0",
            ),
            None,
        ),
        "size": ("string", None, None, None, None, None),
        "skiplock": ("boolean", None, None, None, None, None),
    },
}

_INDEXED = re.compile(r"(?P<base>[a-z]+)(?P<index>0|[1-9][0-9]{0,2})")
MAX_KEY_LENGTH = 64


def endpoint_of(kind: GuestKind, action: Action) -> str:
    """The schema's ``"METHOD path"`` of the endpoint an action calls for a guest kind."""
    spec = spec_for(kind, action)
    return f"{spec.method} /nodes/{{node}}{spec.path}"


def params_for(kind: GuestKind, action: Action) -> dict[str, ParamSpec]:
    """Every param a submission of ``action`` may carry for a guest of ``kind``."""
    table = {
        name: spec
        for name, spec in ENDPOINT_PARAMS[endpoint_of(kind, action)].items()
        if name not in _SET_BY_LIFECYCLED.get(action, frozenset())
    }
    table.update(LIFECYCLED_PARAMS.get((kind, action), {}))
    return table


def lookup(table: Mapping[str, ParamSpec], key: str) -> ParamSpec | None:
    """The spec of ``key`` in ``table`` (``net3`` finds ``net``), or ``None``."""
    spec = table.get(key)
    if spec is not None and spec[5] is None:
        return spec
    m = _INDEXED.fullmatch(key)
    if m is None:
        return None
    spec = table.get(m["base"])
    if spec is None or spec[5] is None or int(m["index"]) > spec[5]:
        return None
    return spec


def _tables(kind: GuestKind | None, action: Action) -> list[dict[str, ParamSpec]]:
    kinds = list(GuestKind) if kind is None else [kind]
    tables = []
    for k in kinds:
        try:
            tables.append(params_for(k, action))
        except UnsupportedAction:
            continue  # e.g. reset for lxc: the other kind decides (or submit refuses the action)
    return tables


def allowed_params(kind: GuestKind | None, action: Action) -> dict[str, tuple[ParamSpec, ...]]:
    """Every param name ``action`` takes for ``kind`` (for both kinds when ``None``), with the
    spec of each kind that takes it; indexed names by their base (``net``)."""
    tables = _tables(kind, action)
    if not tables:
        return {}
    names = set(tables[0]).intersection(*tables[1:])
    return {name: tuple(table[name] for table in tables) for name in sorted(names)}


def param_problems(
    kind: GuestKind | None, action: Action, params: Mapping[str, Any]
) -> dict[str, str]:
    """Per-param problems of a submission's params (empty when they are acceptable).

    Without a kind, a key must be one both kinds take for ``action`` (a kind-specific param
    needs the kind given) and its value one that either kind takes.
    """
    if len(params) > MAX_PARAMS:
        return {"params": f"at most {MAX_PARAMS} parameters"}
    tables = _tables(kind, action)
    problems: dict[str, str] = {}
    for key, value in params.items():
        field = f"params.{shown(key)}"
        problem = text_problem(key, max_length=MAX_KEY_LENGTH)
        if problem is not None:
            problems[field] = f"not a valid parameter name: {problem}"
            continue
        specs = [lookup(table, key) for table in tables]
        found = [s for s in specs if s is not None]
        if not found or len(found) < len(specs):
            problems[field] = _unknown(action, kind, known_somewhere=bool(found))
            continue
        # Without a kind, a value one kind takes is enough here; submit checks the params
        # again against the kind it reads from Proxmox.
        found_problems = [
            value_problem(value, spec, free_text=key in FREE_TEXT_PARAMS) for spec in found
        ]
        if all(p is not None for p in found_problems):
            problems[field] = str(found_problems[0])
    return problems


def _unknown(action: Action, kind: GuestKind | None, *, known_somewhere: bool) -> str:
    if kind is None and known_somewhere:
        return f"a parameter of {action} for one guest kind only: give kind"
    return f"not a parameter of {action}" + (f" for {kind} guests" if kind is not None else "")


def value_problem(value: Any, spec: ParamSpec, *, free_text: bool = False) -> str | None:
    """Why ``value`` does not fit ``spec``, or ``None``.

    JSON types, as the OpenAPI document says: a boolean is ``true``/``false``/``0``/``1``; an
    integer or number is a JSON number in range; a string may also be given as a number
    (``"memory": 512``) unless the schema lists its values.
    """
    typ, max_length, minimum, maximum, enum, _ = spec
    if isinstance(value, dict | list) or value is None:
        return "must be a string, number or boolean (params are flat)"
    if typ == "boolean":
        if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
            return None
        return "must be a boolean (true/false, 1/0)"
    if isinstance(value, bool):
        return f"must be a {typ}, not a boolean"
    if typ in ("integer", "number"):
        return _number_problem(value, typ, minimum, maximum)
    if not isinstance(value, str):
        if enum is not None:
            return f"one of {', '.join(enum)}"
        return _number_problem(value, "number", None, None)
    problem = text_problem(value, max_length=max_length or MAX_VALUE_LENGTH, free_text=free_text)
    if problem is not None:
        return problem
    if enum is not None and value not in enum:
        return f"one of {', '.join(enum)}"
    return None


def _number_problem(
    value: Any, typ: str, minimum: float | None, maximum: float | None
) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return float_problem(value)
    if typ == "integer" and not (
        isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    ):
        return "must be an integer"
    if not isinstance(value, int | float):
        return f"must be a {typ}"
    low = max(INT64_MIN, minimum) if minimum is not None else INT64_MIN
    high = min(INT64_MAX, maximum) if maximum is not None else INT64_MAX
    if not low <= value <= high:
        return f"must be from {low} to {high}"
    return None
