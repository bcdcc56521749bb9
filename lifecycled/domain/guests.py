"""Guests as the journal knows them (SPEC §1 "Guest", "Ownership", "Desired state") — pure.

A :class:`GuestRecord` is one row of the guests table: who owns the guest (``origin``), what
lifecycled wants of it (``desired_state`` with its ``desired_generation``), and what the last
Proxmox read showed (``observed_state``). Observed state is only ever written from Proxmox
reads; it never overwrites desired state.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from lifecycled.domain.actions import Action, disk_size, fingerprint_matches
from lifecycled.domain.op import GuestKind, Op, Origin
from lifecycled.domain.states import OpState
from lifecycled.errors import ValidationError


class GuestOrigin(enum.StrEnum):
    """Ownership of a guest."""

    NATIVE = "native"  # created by lifecycled, or handed to it with ``manage``: full lifecycle
    ADOPTED = "adopted"  # pre-existing, taken under management: never hard-deleted
    DISCOVERED = "discovered"  # seen on the node, unmanaged: observed only
    RELEASED = "released"  # was managed, released (or soft-deleted): observed only

    @property
    def managed(self) -> bool:
        """Whether lifecycled acts on a guest of this origin (the one ownership rule)."""
        return self in MANAGED_ORIGINS


#: The origins lifecycled acts on: every face and the journal's queries use this set.
MANAGED_ORIGINS: frozenset[GuestOrigin] = frozenset({GuestOrigin.NATIVE, GuestOrigin.ADOPTED})


class DesiredState(enum.StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"
    ABSENT = "absent"


class ObservedState(enum.StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"
    PAUSED = "paused"
    SUSPENDED = "suspended"
    UNKNOWN = "unknown"
    MISSING = "missing"
    LOST = "LOST"


#: Locks during which a guest may legitimately vanish (or appear) — reference §5.5.
TRANSIENT_LOCKS = frozenset({"migrate", "destroyed", "create", "clone"})

#: Convergent power actions and the desired state accepting them sets (SPEC §1).
DESIRED_BY_ACTION: dict[Action, DesiredState] = {
    Action.START: DesiredState.RUNNING,
    Action.RESUME: DesiredState.RUNNING,
    Action.STOP: DesiredState.STOPPED,
    Action.SHUTDOWN: DesiredState.STOPPED,
    Action.TERMINATE: DesiredState.ABSENT,
}


#: What a succeeded power op leaves the guest in (Proxmox's task ends once the target holds).
OBSERVED_AFTER: dict[Action, ObservedState] = {
    Action.START: ObservedState.RUNNING,
    Action.RESUME: ObservedState.RUNNING,
    Action.REBOOT: ObservedState.RUNNING,
    Action.RESET: ObservedState.RUNNING,
    Action.STOP: ObservedState.STOPPED,
    Action.SHUTDOWN: ObservedState.STOPPED,
}


def observed_after(action: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The guest columns a succeeded op of ``action`` makes true at once (empty: none).

    Power actions set the observed state, a migrate the node; everything else waits for the
    next observation (reconcile) to say what holds.
    """
    try:
        known = Action(action)
    except ValueError:
        return {}
    if known in OBSERVED_AFTER:
        return {"observed_state": OBSERVED_AFTER[known]}
    target = params.get("target")
    if known is Action.MIGRATE and isinstance(target, str) and target:
        return {"node": target}
    return {}


def desired_for(action: str) -> DesiredState | None:
    """The desired state an accepted op of ``action`` sets, if it is a power action."""
    try:
        return DESIRED_BY_ACTION.get(Action(action))
    except ValueError:
        return None


#: The only ops a desired state can supersede: pending ones that reconcile submitted (the
#: journal reads just these for :func:`superseded`, which decides).
SUPERSEDABLE_STATE = OpState.PENDING
SUPERSEDABLE_ORIGIN = Origin.RECONCILE


def superseded(ops: Iterable[Op], desired: DesiredState | None) -> list[tuple[Op, str]]:
    """The guest's ops a new desired state makes obsolete, each with the reason to cancel it:
    its pending reconcile ops whose target is not ``desired`` (``None``: no desired state).

    The one rule: the journal persists it when an accepted op or a release moves the desired
    state, and the reconcile plan applies it to the ops it sees open.
    """
    why = f"superseded: desired state is now {desired or 'unset'}"
    return [
        (op, why)
        for op in ops
        if op.state is SUPERSEDABLE_STATE
        and op.origin is SUPERSEDABLE_ORIGIN
        and desired_for(op.action) != desired
    ]


def observed_from(status: str | None, lock: str | None) -> ObservedState:
    """The observed state for a Proxmox ``status`` (``qmpstatus || status`` in
    ``/cluster/resources``) and config ``lock``."""
    if status == "running":
        return ObservedState.RUNNING
    if status == "stopped":
        return ObservedState.SUSPENDED if lock == "suspended" else ObservedState.STOPPED
    if status == "paused":
        return ObservedState.PAUSED
    if status in ("suspended", "prelaunch"):
        return ObservedState.SUSPENDED if status == "suspended" else ObservedState.UNKNOWN
    return ObservedState.UNKNOWN


def _dict_or_none(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return dict(value) if value is not None else None


def _str_dict(value: Mapping[str, str]) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()}


def _origin(value: GuestOrigin | str | None) -> GuestOrigin | None:
    return None if value is None else GuestOrigin(value)


@attrs.frozen(kw_only=True)
class GuestFacts:
    """What the journal knows about a guest that matters for safety (what the pre-dispatch
    policy reads): its origin, identity fingerprint and protection — not its captured config
    or resources."""

    #: The journal row's origin; ``None``: no row.
    origin: GuestOrigin | None = attrs.field(default=None, converter=_origin)
    fingerprint: Mapping[str, str] = attrs.field(factory=dict)
    protected: bool = False


@attrs.frozen(kw_only=True)
class GuestHead:
    """The part of a guest's journal row a submission reads: where the guest is, whether it
    is managed, its desired state (not its captured config, fingerprint or resources)."""

    vmid: int
    node: str
    kind: GuestKind
    origin: GuestOrigin
    desired_state: DesiredState | None = None
    desired_generation: int = 0

    @property
    def managed(self) -> bool:
        return self.origin.managed


@attrs.frozen(kw_only=True)
class GuestRecord:
    """One row of the guests table."""

    vmid: int
    node: str
    kind: GuestKind
    origin: GuestOrigin
    name: str | None = None
    desired_state: DesiredState | None = None
    desired_generation: int = 0
    observed_state: ObservedState | None = None
    observed_at: float | None = None
    lock: str | None = None
    ha_managed: bool = False
    template: bool = False
    protected: bool = False
    fingerprint: dict[str, str] = attrs.field(factory=dict, converter=_str_dict)
    config_snapshot: dict[str, Any] | None = attrs.field(default=None, converter=_dict_or_none)
    config_digest: str | None = None
    snapshot_at: float | None = None
    observed_digest: str | None = None
    digest_checked_at: float | None = None
    resources: dict[str, Any] | None = attrs.field(default=None, converter=_dict_or_none)
    created_at: float
    updated_at: float
    adopted_at: float | None = None
    released_at: float | None = None
    lost_at: float | None = None

    @property
    def managed(self) -> bool:
        return self.origin.managed

    @property
    def gone(self) -> bool:
        """The last Proxmox read did not find the guest (``missing`` or ``LOST``)."""
        return self.observed_state in (ObservedState.MISSING, ObservedState.LOST)

    @property
    def drifted(self) -> bool:
        """The config changed behind lifecycled's back (managed guests with a snapshot)."""
        return (
            self.managed
            and self.config_digest is not None
            and self.observed_digest is not None
            and self.observed_digest != self.config_digest
        )


#: What ``manage``/``adopt`` records from its Proxmox read (see ``GuestService.capture``).
CAPTURED = (
    "node",
    "kind",
    "origin",
    "name",
    "observed_state",
    "observed_at",
    "lock",
    "ha_managed",
    "template",
    "fingerprint",
    "config_snapshot",
    "config_digest",
    "snapshot_at",
    "observed_digest",
    "digest_checked_at",
    "resources",
    "adopted_at",
)
#: Where a guest is and what proves it is the same: refreshed by a re-take of that guest.
IDENTITY = ("node", "kind", "fingerprint")


def retake(existing: GuestRecord, taken: GuestRecord) -> tuple[tuple[str, ...], str]:
    """What taking a guest that has a row (``manage``/``adopt`` again) changes: the columns
    to copy from ``taken`` (a fresh capture) and why; ``()`` when nothing changes.

    Another origin, or a recorded fingerprint that does not name the guest Proxmox shows
    (the vmid was reused, or the row went wrong): everything captured is recorded anew.
    Same origin and the same guest: only its identity (node, kind, fingerprint, with the
    name) is refreshed when it changed (a ctime Proxmox added, a move); the snapshot is
    kept, so drift stays visible.
    """
    if existing.origin is not taken.origin:
        return CAPTURED, f"ownership {existing.origin} → {taken.origin}"
    same = dict(existing.fingerprint) == dict(taken.fingerprint)  # both empty included
    if not same and not fingerprint_matches(existing.fingerprint, taken.fingerprint):
        return CAPTURED, (
            f"identity refreshed: the recorded fingerprint {dict(existing.fingerprint)} does "
            f"not name the guest Proxmox shows ({dict(taken.fingerprint)})"
        )
    changed = tuple(c for c in IDENTITY if _value(existing, c) != _value(taken, c))
    if not changed:
        return (), ""
    return (*changed, "name"), f"identity refreshed ({', '.join(changed)})"


def _value(record: GuestRecord, column: str) -> Any:
    value = getattr(record, column)
    return dict(value) if isinstance(value, Mapping) else value


class PlacementMismatch(ValidationError):
    """A request names another node or kind than the managed guest's journal row: the
    journal's state refuses it (HTTP 409 ``placement_mismatch``), the request is well-formed."""


def check_placement(record: GuestRecord | GuestHead, *, node: str | None, kind: str | None) -> None:
    """Ops for a managed guest take node and kind from its journal row: raise
    :class:`PlacementMismatch` when a request names another (``pve1\n``, another node, the
    other kind), each field's message naming both values. ``None``: not given."""
    mismatch: dict[str, str] = {}
    if node is not None and node != record.node:
        mismatch["node"] = f"guest {record.vmid} is on node {record.node!r}, not {node!r}"
    if kind is not None and kind != str(record.kind):
        mismatch["kind"] = f"guest {record.vmid} is {str(record.kind)!r}, not {kind!r}"
    if mismatch:
        raise PlacementMismatch(
            f"guest {record.vmid} is a {record.kind} guest on node {record.node} in the "
            "journal; the request names another (omit node and kind to use the journal's)",
            mismatch,
        )


def creation_conflict(record: GuestRecord | None, fingerprint: Mapping[str, str]) -> str | None:
    """Why a create/clone with the expected ``fingerprint`` may not name ``record``'s vmid,
    or ``None``. The vmid is free when the journal has no row for it, when its guest is gone
    (missing, LOST), when the row is this same create's (same fingerprint: a re-armed key)
    or a native row Proxmox never showed (a create that never ran). A submission never
    changes an existing row: the row becomes the new guest's once its create succeeds."""
    if record is None or record.gone:
        return None
    same = bool(fingerprint) and dict(record.fingerprint) == dict(fingerprint)
    if record.origin is GuestOrigin.NATIVE and (same or record.observed_state is None):
        return None
    seen = record.observed_state or "not yet observed"
    return (
        f"vmid {record.vmid} names a {record.origin} guest ({seen}) on {record.node}; "
        "create/clone needs a free vmid"
    )


def is_ha_managed(state: str) -> bool:
    """Whether an HA resource in ``state`` is managed by HA: ``ignored`` takes it out of the
    CRM and LRM, and API calls act on the guest directly (reference §8, §13.10)."""
    return bool(state) and state != "ignored"


@attrs.frozen(kw_only=True)
class Observation:
    """One guest as a ``/cluster/resources?type=vm`` read shows it."""

    vmid: int
    node: str
    kind: GuestKind
    status: str
    name: str | None = None
    lock: str | None = None
    template: bool = False
    hastate: str | None = None

    @property
    def observed(self) -> ObservedState:
        return observed_from(self.status, self.lock)

    @property
    def ha_managed(self) -> bool:
        return self.hastate is not None and is_ha_managed(self.hastate)


_QEMU_DISK_RE = re.compile(r"^(ide|sata|scsi|virtio|efidisk|tpmstate)\d+$")
_LXC_DISK_RE = re.compile(r"^(rootfs|mp\d+)$")


def resources_of(
    kind: GuestKind, config: Mapping[str, Any], *, cpus: float | None, maxmem: int | None
) -> dict[str, Any]:
    """The resources captured at adoption: CPUs, memory (bytes) and every disk's size."""
    pattern = _QEMU_DISK_RE if kind is GuestKind.QEMU else _LXC_DISK_RE
    disks = {
        key: size
        for key in sorted(config)
        if pattern.fullmatch(key)
        and "media=cdrom" not in str(config[key])
        and (size := disk_size(config, key)) is not None
    }
    memory = maxmem
    if memory is None and str(config.get("memory", "")).isdigit():
        memory = int(str(config["memory"])) * 1024 * 1024
    return {
        "cpus": cpus,
        "cores": config.get("cores"),
        "sockets": config.get("sockets"),
        "memory": memory,
        "disks": disks,
    }


def guest_name(kind: GuestKind, config: Mapping[str, Any]) -> str | None:
    key = "name" if kind is GuestKind.QEMU else "hostname"
    value = config.get(key)
    return str(value) if value is not None else None


def observed_hash(records: Iterable[GuestRecord]) -> str:
    """The observed-state hash sent in heartbeats: per guest (sorted by vmid) its observed
    state, lock, node and ownership (origin, desired state, generation) — SPEC §7."""
    lines = sorted(
        (
            r.vmid,
            f"{r.vmid}:{r.observed_state or 'None'}:{r.lock or ''}:{r.node}:{r.origin}:"
            f"{r.desired_state or ''}:{r.desired_generation}",
        )
        for r in records
    )
    text = "\n".join(line for _, line in lines)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def listing_hash(records: Iterable[GuestRecord]) -> str:
    """A hash of everything ``GET /v1/guests`` shows of the guest set: the observed state and
    lock of each guest, plus its node, ownership, desired state and drift (the ETag)."""
    lines = sorted(
        (
            r.vmid,
            ":".join(
                str(v)
                for v in (
                    r.vmid,
                    r.observed_state,
                    r.lock or "",
                    r.node,
                    r.origin,
                    r.desired_state,
                    r.desired_generation,
                    int(r.drifted),
                    int(r.ha_managed),
                    int(r.protected),
                )
            ),
        )
        for r in records
    )
    text = "\n".join(line for _, line in lines)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def guest_to_dict(guest: GuestRecord, *, detail: bool = False) -> dict[str, Any]:
    """A guest as the HTTP API and ``--json`` show it; ``detail`` adds the config snapshot."""
    from lifecycled.domain.serialize import rfc3339

    out: dict[str, Any] = {
        "vmid": guest.vmid,
        "node": guest.node,
        "kind": str(guest.kind),
        "origin": str(guest.origin),
        "name": guest.name,
        "desired_state": str(guest.desired_state) if guest.desired_state else None,
        "desired_generation": guest.desired_generation,
        "observed_state": str(guest.observed_state) if guest.observed_state else None,
        "observed_at": rfc3339(guest.observed_at),
        "lock": guest.lock,
        "ha_managed": guest.ha_managed,
        "template": guest.template,
        "protected": guest.protected,
        "fingerprint": dict(guest.fingerprint),
        "config_digest": guest.config_digest,
        "observed_digest": guest.observed_digest,
        "drifted": guest.drifted,
        "resources": guest.resources,
        "snapshot_at": rfc3339(guest.snapshot_at),
        "created_at": rfc3339(guest.created_at),
        "updated_at": rfc3339(guest.updated_at),
        "adopted_at": rfc3339(guest.adopted_at),
        "released_at": rfc3339(guest.released_at),
        "lost_at": rfc3339(guest.lost_at),
    }
    if detail:
        out["config_snapshot"] = guest.config_snapshot
    return out
