"""The pre-dispatch Check (SPEC §2 step 3) and when a node's live guest listing can settle it.

Before its POST every op reads its guest. Power actions that are not destructive need
``status/current`` only (:func:`reads_status_only`); for those, the node's listing
``GET /nodes/{node}/qemu|lxc`` — read once for all ops claimed together — gives the same
answer for most guests. What the listing holds, from Proxmox's own source:

* QEMU (qemu-server ``API2/Qemu.pm`` ``vmlist`` → ``QemuServer.pm`` ``vmstatus(undef, full)``):
  every VM whose config is on the node (pmxcfs ``vmlist``) and which the caller may audit
  (``VM.Audit``), with ``status`` (``running`` when its pid is alive — the same test as
  ``status/current``), ``lock`` and ``tags`` from the config when set, ``template`` when 1,
  ``name``, and metrics. ``qmpstatus`` (paused, prelaunch, suspended…) only with ``full=1``,
  which queries QMP on every running VM; never ``ha``.
* LXC (pve-container ``API2/LXC.pm`` ``vmlist`` → ``LXC.pm`` ``vmstatus()``): exactly what
  ``status/current`` returns for each container except ``ha`` (containers have no
  ``qmpstatus`` in either).

``status/current`` (``vm_status``) is ``vmstatus(vmid, 1)`` plus ``ha`` (and QEMU's
spice/agent flags). So the listing settles a Check whenever the Check does not need what
only ``status/current`` has: :func:`check_from_listing` says which. ``/cluster/resources``
is never used: its status lags by ~10 s (reference §13.10).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from lifecycled.domain.actions import (
    Action,
    ActionSpec,
    GuestView,
    is_destructive,
    lock_blocks,
    spec_for,
)
from lifecycled.domain.classify import ErrorClass
from lifecycled.domain.op import GuestKind, Op, OpError
from lifecycled.domain.outcome import Decision, Verdict, fail, succeed

#: Actions that need the guest to exist before they are sent.
NEEDS_GUEST = frozenset(set(Action) - {Action.CREATE, Action.CLONE, Action.TERMINATE})

#: Power actions: their target predicate and lock rule read only ``exists``, ``status``,
#: ``qmpstatus`` and ``lock`` — never the config.
POWER_ACTIONS = frozenset(
    {
        Action.START,
        Action.STOP,
        Action.SHUTDOWN,
        Action.REBOOT,
        Action.RESET,
        Action.SUSPEND,
        Action.RESUME,
    }
)

#: Run states QMP may report for a QEMU process that is alive (``status: running``);
#: the listing without ``full`` cannot tell them apart (reference §5.1).
HIDDEN_RUN_STATES = (
    "running",
    "paused",
    "prelaunch",
    "suspended",
    "inmigrate",
    "postmigrate",
    "io-error",
)


def reads_status_only(spec: ActionSpec, params: Mapping[str, Any]) -> bool:
    """Whether the Check of this op reads ``status/current`` alone (no config): a power
    action that is not destructive. Policy needs the config only for destructive actions
    (fingerprint, protection flag) and terminate; every other action reads both."""
    return spec.action in POWER_ACTIONS and not is_destructive(spec.action, spec.kind, params)


@attrs.frozen(kw_only=True)
class Listed:
    """One guest as its node's live listing shows it (``GET /nodes/{node}/qemu|lxc``)."""

    status: str
    lock: str | None = None
    template: bool = False
    #: QEMU's run state: only in a ``full=1`` listing.
    qmpstatus: str | None = None


@attrs.frozen(kw_only=True)
class FromListing:
    """What the listing says for one op: the guest as ``status/current`` would show it
    for this Check, or ``None`` with the reason it must be read per op."""

    view: GuestView | None
    reason: str

    @property
    def settled(self) -> bool:
        return self.view is not None


def _needs_read(reason: str) -> FromListing:
    return FromListing(view=None, reason=reason)


def target_from_listing(
    spec: ActionSpec, params: Mapping[str, Any], node: str, listed: Listed | None
) -> FromListing:
    """Whether the listing decides if ``spec``'s target holds exactly as ``status/current``
    would — the question Recover asks of an op in flight.

    It does not when: the action's target reads the config (anything but a power action);
    the guest is not listed (missing from the node, or not auditable: ``status/current``
    says which, with Proxmox's own error); the status is neither ``running`` nor
    ``stopped``; or a QEMU guest runs and the answer depends on the QMP run state the
    listing leaves out (start or resume of a VM that may be paused, suspend of one that may
    not be).
    """
    if spec.action not in POWER_ACTIONS:
        return _needs_read(f"{spec.action}: the target needs the guest's config")
    if listed is None:
        return _needs_read("not in the node's listing (missing, or not auditable)")
    if listed.status not in ("running", "stopped"):
        return _needs_read(f"listed with status {listed.status!r}")
    view = GuestView(
        exists=True,
        node=node,
        status=listed.status,
        qmpstatus=listed.qmpstatus,
        lock=listed.lock,
        template=listed.template,
    )
    if (
        spec.kind is GuestKind.QEMU
        and listed.status == "running"
        and listed.qmpstatus is None
        and len(
            {spec.holds(attrs.evolve(view, qmpstatus=state), params) for state in HIDDEN_RUN_STATES}
        )
        > 1
    ):
        return _needs_read("running VM: its QMP run state decides (paused or not)")
    return FromListing(view=view, reason="settled from the node's listing")


def check_from_listing(
    spec: ActionSpec, params: Mapping[str, Any], node: str, listed: Listed | None
) -> FromListing:
    """Whether the listing settles this op's pre-dispatch Check (policy, then
    :func:`precheck`) with the verdict ``status/current`` would give.

    Only ops that read ``status/current`` alone (:func:`reads_status_only`) qualify; for
    them the Check reads ``exists``, ``status``, ``qmpstatus`` (through the target) and
    ``lock`` — never ``ha`` nor the config — so :func:`target_from_listing` decides.
    """
    if not reads_status_only(spec, params):
        return _needs_read(f"{spec.action}: the Check reads the guest's config")
    return target_from_listing(spec, params, node, listed)


def precheck(op: Op, view: GuestView) -> Decision | None:
    """Step 3 "Check" of SPEC §2: target held, guest missing, config lock; ``None``: send."""
    spec = spec_for(op.guest.kind, op.action)
    if spec.holds(view, op.params):
        return succeed("target already held; nothing sent")
    if not view.exists and spec.action in NEEDS_GUEST:
        return fail(
            "guest does not exist",
            ErrorClass.PERMANENT,
            f"{op.guest.kind} {op.guest.vmid} does not exist on node {op.guest.node}",
        )
    if (
        view.exists
        and spec.action in (Action.CREATE, Action.CLONE)
        and view.lock not in ("create", "clone")
    ):
        return fail(
            "vmid already taken",
            ErrorClass.PERMANENT,
            f"vmid {op.guest.vmid} already exists with a different identity",
        )
    lock = view.lock
    if lock and lock_blocks(op.guest.kind, spec.action, lock):
        kind = "CT" if op.guest.kind == "lxc" else "VM"
        return Decision(
            verdict=Verdict.RETRY,
            reason=f"guest locked ({lock}); waiting",
            error=OpError(error_class=ErrorClass.LOCKED, message=f"{kind} is locked ({lock})"),
        )
    return None
