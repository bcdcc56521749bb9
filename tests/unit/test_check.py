"""The pre-dispatch Check from a node's listing gives status/current's verdict, or defers."""

from __future__ import annotations

import itertools
from typing import Any

import attrs
import pytest

from lifecycled.domain.actions import Action, ActionSpec, GuestView, all_specs, spec_for
from lifecycled.domain.check import (
    Listed,
    check_from_listing,
    precheck,
    reads_status_only,
    target_from_listing,
)
from lifecycled.domain.guests import GuestFacts
from lifecycled.domain.op import GuestKind, GuestRef, Op
from lifecycled.domain.outcome import Verdict
from lifecycled.policy import decide
from lifecycled.pve.schema import config_locks

#: Every config lock either kind knows (Proxmox's schema), and none.
LOCKS = (None, *config_locks())
#: (status, qmpstatus) of a QEMU guest as status/current reports them; ``None``: missing.
QEMU_STATES: tuple[tuple[str, str] | None, ...] = (
    ("stopped", "stopped"),
    ("running", "running"),
    ("running", "paused"),
    ("running", "prelaunch"),
    ("running", "suspended"),
    ("running", "inmigrate"),
    ("running", "io-error"),
    None,
)
LXC_STATES: tuple[tuple[str, str] | None, ...] = (
    ("stopped", "stopped"),
    ("running", "running"),
    None,
)
FACTS = (
    GuestFacts(origin="native"),
    GuestFacts(origin="adopted", protected=True),
    GuestFacts(origin="released"),
    GuestFacts(),
)
PARAMS: tuple[dict[str, Any], ...] = ({}, {"force_stop": True}, {"timeout": 30})


@attrs.frozen(kw_only=True)
class Truth:
    """A guest as Proxmox holds it, and what each read shows of it."""

    kind: GuestKind
    state: tuple[str, str] | None
    lock: str | None
    template: bool
    ha: bool

    def status_current(self) -> GuestView:
        """What ``read_guest_status`` makes of ``status/current`` (vmstatus(vmid, 1) + ha)."""
        if self.state is None:
            return GuestView.absent()
        status, qmp = self.state
        return GuestView(
            exists=True,
            node="pve1",
            status=status,
            qmpstatus=qmp if self.kind is GuestKind.QEMU else None,
            lock=self.lock,
            ha_managed=self.ha,
            template=self.template,
        )

    def listed(self) -> Listed | None:
        """The listing item (vmstatus without ``full``: no qmpstatus, no ha)."""
        if self.state is None:
            return None
        return Listed(status=self.state[0], lock=self.lock, template=self.template)


def op_for(spec: ActionSpec, params: dict[str, Any]) -> Op:
    return Op(
        id=1,
        idempotency_key="k",
        action=str(spec.action),
        guest=GuestRef(node="pve1", kind=spec.kind, vmid=100),
        params=params,
        created_at=0.0,
        updated_at=0.0,
    )


def check_verdict(op: Op, spec: ActionSpec, view: GuestView, facts: GuestFacts) -> Any:
    """Everything the dispatcher decides from the view before sending: policy, then precheck."""
    return decide(op, spec, view, facts), precheck(op, view)


def truths(kind: GuestKind) -> list[Truth]:
    states = QEMU_STATES if kind is GuestKind.QEMU else LXC_STATES
    return [
        Truth(kind=kind, state=state, lock=lock, template=template, ha=ha)
        for state, lock, template, ha in itertools.product(
            states, LOCKS, (False, True), (False, True)
        )
    ]


@pytest.mark.parametrize("spec", all_specs(), ids=lambda s: f"{s.kind}-{s.action}")
def test_a_settled_listing_check_has_the_status_current_verdict(spec: ActionSpec) -> None:
    """For every action, guest state (stopped, running, each QMP run state, hibernated,
    missing), lock, template and HA flag, policy facts and params: whenever the listing
    settles the Check, policy's and the precheck's verdict equal those from status/current."""
    settled = 0
    for truth, facts, params in itertools.product(truths(spec.kind), FACTS, PARAMS):
        op = op_for(spec, params)
        found = check_from_listing(spec, params, "pve1", truth.listed())
        if found.view is None:
            continue
        settled += 1
        assert check_verdict(op, spec, found.view, facts) == check_verdict(
            op, spec, truth.status_current(), facts
        ), (truth, facts, params, found.reason)
    if any(reads_status_only(spec, p) for p in PARAMS):
        assert settled, "the listing never settles this action's Check"


@pytest.mark.parametrize("spec", all_specs(), ids=lambda s: f"{s.kind}-{s.action}")
def test_a_settled_listing_target_agrees_with_status_current(spec: ActionSpec) -> None:
    """Recover's question (does the target hold?) gets status/current's answer from the
    listing whenever the listing settles it."""
    for truth, params in itertools.product(truths(spec.kind), PARAMS):
        found = target_from_listing(spec, params, "pve1", truth.listed())
        if found.view is not None:
            assert spec.holds(found.view, params) == spec.holds(truth.status_current(), params)


def _q(action: Action) -> ActionSpec:
    return spec_for(GuestKind.QEMU, action)


@pytest.mark.parametrize(
    ("spec", "params", "listed", "settles"),
    [
        (_q(Action.START), {}, Listed(status="stopped"), True),
        (_q(Action.START), {}, Listed(status="running"), False),  # paused or not: QMP decides
        (_q(Action.RESUME), {}, Listed(status="running"), False),
        (_q(Action.SUSPEND), {}, Listed(status="running"), False),
        (_q(Action.SHUTDOWN), {}, Listed(status="running"), True),
        (_q(Action.REBOOT), {}, Listed(status="running", lock="backup"), True),
        (_q(Action.START), {}, Listed(status="running", qmpstatus="paused"), True),  # full=1
        (_q(Action.START), {}, None, False),  # missing or not auditable
        (_q(Action.START), {}, Listed(status="unknown"), False),
        (_q(Action.STOP), {}, Listed(status="stopped"), False),  # destructive: config needed
        (_q(Action.SHUTDOWN), {"force_stop": True}, Listed(status="stopped"), False),
        (_q(Action.CONFIGURE), {"cores": 2}, Listed(status="stopped"), False),
        (spec_for(GuestKind.LXC, Action.START), {}, Listed(status="running"), True),
    ],
)
def test_which_checks_the_listing_settles(
    spec: ActionSpec, params: dict[str, Any], listed: Listed | None, settles: bool
) -> None:
    """The listing settles a status-only Check unless the guest is missing, its status is
    odd, or a running VM's hidden QMP run state decides the target."""
    assert check_from_listing(spec, params, "pve1", listed).settled is settles


def test_precheck_verdicts() -> None:
    """Target held → succeed; missing → fail; a blocking lock → retry (locked)."""
    op = op_for(_q(Action.START), {})
    held = GuestView(exists=True, node="pve1", status="running", qmpstatus="running")
    assert precheck(op, held) is not None and precheck(op, held).verdict is Verdict.SUCCEED  # type: ignore[union-attr]
    missing = precheck(op, GuestView.absent())
    assert missing is not None and missing.verdict is Verdict.FAIL
    locked = precheck(op, GuestView(exists=True, node="pve1", status="stopped", lock="backup"))
    assert locked is not None and locked.verdict is Verdict.RETRY
    assert precheck(op, GuestView(exists=True, node="pve1", status="stopped")) is None


def test_the_schema_gives_every_config_lock_of_both_kinds() -> None:
    """The locks these tests walk come from Proxmox's schema: QEMU's and LXC's, 13 in all."""
    assert set(config_locks()) >= {"backup", "suspended", "suspending", "fstrim", "mounted"}
    assert len(config_locks()) == 13
