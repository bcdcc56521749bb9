"""The Proxmox privileges lifecycled needs, and whether a permission map grants them.

Pure: ``GET /access/permissions`` answers ``{acl path: {privilege: 1}}`` for the caller (an
API token sees its own effective privileges, after privilege separation). A privilege counts
as granted cluster-wide when it is held on ``/`` or on the root of its kind of object
(``/vms`` for guests, ``/storage`` for datastores, ``/nodes`` or ``/nodes/{node}`` for the
node); held only on narrower paths (one guest, a pool, one storage) it is *partial*: some
guests or storages will be refused with 403 at dispatch time.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import attrs

from lifecycled.domain.actions import Action

#: What each action needs (Proxmox's own checks: qemu-server and pve-container API2 modules).
ACTION_PRIVILEGES: Mapping[Action, tuple[str, ...]] = {
    Action.START: ("VM.PowerMgmt",),
    Action.STOP: ("VM.PowerMgmt",),
    Action.SHUTDOWN: ("VM.PowerMgmt",),
    Action.REBOOT: ("VM.PowerMgmt",),
    Action.RESET: ("VM.PowerMgmt",),
    Action.SUSPEND: ("VM.PowerMgmt",),
    Action.RESUME: ("VM.PowerMgmt",),
    Action.RESIZE: ("VM.Config.Disk",),
    Action.CONFIGURE: (
        "VM.Config.Options",
        "VM.Config.CPU",
        "VM.Config.Memory",
        "VM.Config.Disk",
        "VM.Config.Network",
        "VM.Config.HWType",
    ),
    Action.MIGRATE: ("VM.Migrate",),
    Action.TERMINATE: ("VM.Allocate",),
    Action.CREATE: ("VM.Allocate", "Datastore.AllocateSpace"),
    Action.CLONE: ("VM.Clone", "VM.Allocate", "Datastore.AllocateSpace"),
}

#: What every sidecar needs whatever it is asked to do: read guests, tasks and HA state.
READ_PRIVILEGES: tuple[str, ...] = ("VM.Audit", "Sys.Audit")


class Grant(enum.StrEnum):
    """How far a privilege reaches."""

    FULL = "full"  # on / or the root of its object kind
    PARTIAL = "partial"  # only on some guests, pools or storages
    MISSING = "missing"


def _roots(privilege: str, node: str) -> tuple[str, ...]:
    if privilege.startswith("VM."):
        return ("/", "/vms")
    if privilege.startswith("Datastore."):
        return ("/", "/storage")
    if privilege.startswith("Sys."):
        return ("/", "/nodes", f"/nodes/{node}")
    return ("/",)


def grant(permissions: Mapping[str, frozenset[str]], privilege: str, *, node: str) -> Grant:
    """Whether ``privilege`` is held cluster-wide, on some paths only, or not at all."""
    if any(privilege in permissions.get(root, frozenset()) for root in _roots(privilege, node)):
        return Grant.FULL
    if any(privilege in privs for privs in permissions.values()):
        return Grant.PARTIAL
    return Grant.MISSING


@attrs.frozen(kw_only=True)
class PrivilegeVerdict:
    """What one capability (an action, or reading) needs and what is missing."""

    subject: str
    needed: tuple[str, ...]
    missing: tuple[str, ...]
    partial: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.missing


def verdicts(
    permissions: Mapping[str, frozenset[str]], *, node: str
) -> tuple[PrivilegeVerdict, ...]:
    """One verdict for reading, then one per action, in catalogue order."""
    subjects: list[tuple[str, tuple[str, ...]]] = [("read", READ_PRIVILEGES)]
    subjects += [(action.value, privs) for action, privs in ACTION_PRIVILEGES.items()]
    out: list[PrivilegeVerdict] = []
    for subject, needed in subjects:
        grants = {p: grant(permissions, p, node=node) for p in needed}
        out.append(
            PrivilegeVerdict(
                subject=subject,
                needed=needed,
                missing=tuple(p for p in needed if grants[p] is Grant.MISSING),
                partial=tuple(p for p in needed if grants[p] is Grant.PARTIAL),
            )
        )
    return tuple(out)
