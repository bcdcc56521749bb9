"""The pure reconcile plan (SPEC §3): examples for each rule, and properties over random
cluster reads and journals (hypothesis)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from lifecycled.domain.actions import Action
from lifecycled.domain.guests import (
    DesiredState,
    GuestOrigin,
    GuestRecord,
    Observation,
    ObservedState,
    superseded,
)
from lifecycled.domain.node import NodeState, admission_refusal
from lifecycled.domain.op import GuestKind, GuestRef, Op, Origin
from lifecycled.domain.reconcile import (
    RECONCILE_ACTIONS,
    OrphanKind,
    ReconcileInput,
    parse_key,
    plan,
    reconcile_key,
    with_live_status,
)
from lifecycled.domain.states import OpState

NODE = "pve1"
NOW = 1_000_000.0


def guest(vmid: int, **kw: Any) -> GuestRecord:
    values: dict[str, Any] = {
        "vmid": vmid,
        "node": NODE,
        "kind": GuestKind.QEMU,
        "origin": GuestOrigin.NATIVE,
        "desired_state": DesiredState.RUNNING,
        "observed_state": ObservedState.RUNNING,
        "fingerprint": {"name": f"g{vmid}"},
        "config_digest": "d0",
        "snapshot_at": 1.0,
        "created_at": 1.0,
        "updated_at": 1.0,
    }
    values.update(kw)
    return GuestRecord(**values)


def seen(vmid: int, status: str = "running", **kw: Any) -> Observation:
    values: dict[str, Any] = {"vmid": vmid, "node": NODE, "kind": GuestKind.QEMU, "status": status}
    values.update(kw)
    return Observation(**values)


def op(op_id: int, vmid: int, action: str, **kw: Any) -> Op:
    values: dict[str, Any] = {
        "id": op_id,
        "idempotency_key": f"k{op_id}",
        "action": action,
        "guest": GuestRef(node=NODE, kind=GuestKind.QEMU, vmid=vmid),
        "state": OpState.PENDING,
        "created_at": 1.0,
        "updated_at": 1.0,
    }
    values.update(kw)
    return Op(**values)


def run(guests: list[GuestRecord], obs: list[Observation], **kw: Any) -> Any:
    return plan(
        ReconcileInput(
            node=NODE, now=NOW, observations=obs, guests={g.vmid: g for g in guests}, **kw
        )
    )


def test_stopped_guest_desired_running_gets_one_start_keyed_by_generation() -> None:
    """Observed stopped, desired running, nothing open → one start, key from the generation."""
    p = run([guest(101, desired_generation=3)], [seen(101, "stopped")])
    assert [(c.guest.vmid, c.action) for c in p.commands] == [(101, Action.START)]
    assert p.commands[0].key == "reconcile:101:3:start:1"
    assert p.commands[0].generation == 3 and p.commands[0].after is None


def test_running_guest_desired_stopped_gets_a_shutdown_never_a_stop() -> None:
    """Desired stopped → ACPI shutdown (forced for native, plain for adopted); never `stop`."""
    p = run(
        [
            guest(101, desired_state=DesiredState.STOPPED),
            guest(102, origin=GuestOrigin.ADOPTED, desired_state=DesiredState.STOPPED),
        ],
        [seen(101), seen(102)],
    )
    by_vmid = {c.guest.vmid: c for c in p.commands}
    assert by_vmid[101].action is Action.SHUTDOWN and by_vmid[101].params == {"force_stop": True}
    assert by_vmid[102].action is Action.SHUTDOWN and by_vmid[102].params == {}


def test_paused_guest_desired_running_is_resumed() -> None:
    """A paused VM whose desired state is running gets resume."""
    p = run([guest(101)], [seen(101, "paused")])
    assert [c.action for c in p.commands] == [Action.RESUME]


def test_converged_locked_ha_template_and_open_guests_are_left_alone() -> None:
    """No op when converged, locked, HA-managed, a template, or an op is already open."""
    guests = [guest(v, observed_state=ObservedState.STOPPED) for v in (101, 102, 103, 104, 105)]
    obs = [
        seen(101, "running"),
        seen(102, "stopped", lock="backup"),
        seen(103, "stopped", hastate="started"),
        seen(104, "stopped", template=True),
        seen(105, "stopped"),
    ]
    p = run(guests, obs, open_ops={105: [op(9, 105, "configure")]})
    assert p.commands == []
    reasons = dict(p.skipped)
    assert "locked" in reasons[102] and "HA-managed" in reasons[103]
    assert reasons[104] == "template" and "op 9" in reasons[105]


def test_unmanaged_guests_are_discovered_and_never_acted_on() -> None:
    """A new guest on the node becomes discovered; discovered/released rows get no op."""
    p = run(
        [guest(102, origin=GuestOrigin.DISCOVERED), guest(103, origin=GuestOrigin.RELEASED)],
        [seen(101, "stopped"), seen(102, "stopped"), seen(103, "stopped"), seen(104, node="pve2")],
    )
    assert [o.vmid for o in p.discovered] == [101]
    assert p.commands == []


def test_manage_discovered_takes_new_guests_under_management() -> None:
    """With --manage-discovered adopted, a guest first seen on the node is to be adopted."""
    p = run([], [seen(101)], manage_discovered="adopted")
    assert [(o.vmid, origin) for o, origin in p.to_manage] == [(101, GuestOrigin.ADOPTED)]
    assert p.discovered == []


def test_missing_managed_guest_is_lost_unless_expected() -> None:
    """Gone with no terminate in flight → LOST; desired absent, an open terminate or a
    migrate lock → expected orphan (missing); LOST and missing rows are not re-reported; a
    managed guest last seen on a node another daemon serves is only marked missing here."""
    guests = [
        guest(101),
        guest(102, desired_state=DesiredState.ABSENT),
        guest(103),
        guest(104, lock="migrate"),
        guest(105, observed_state=ObservedState.LOST),
        guest(106, origin=GuestOrigin.DISCOVERED),
        guest(107, node="pve2"),
    ]
    p = run(guests, [], open_ops={103: [op(7, 103, "terminate", state=OpState.RUNNING)]})
    kinds = {o.vmid: o.kind for o in p.orphans}
    assert kinds == {
        101: OrphanKind.ANOMALOUS,
        102: OrphanKind.EXPECTED,
        103: OrphanKind.EXPECTED,
        104: OrphanKind.EXPECTED,
    }
    assert [o.vmid for o in p.lost] == [101]
    assert p.vanished == [106, 107]
    assert sorted(p.missing) == [102, 103, 104, 106, 107]


def test_lost_guest_seen_again_is_rechecked_not_acted_on() -> None:
    """A LOST guest in the cluster read goes to the fingerprint re-check, nothing else."""
    p = run([guest(101, observed_state=ObservedState.LOST)], [seen(101, "stopped")])
    assert [o.vmid for o in p.recheck_lost] == [101]
    assert p.commands == [] and p.seen == []


def test_pending_reconcile_op_with_an_old_target_is_superseded() -> None:
    """A pending reconcile start while desired is now stopped is cancelled."""
    pending = op(5, 101, "start", origin=Origin.RECONCILE)
    p = run(
        [guest(101, desired_state=DesiredState.STOPPED)],
        [seen(101, "stopped")],
        open_ops={101: [pending]},
    )
    assert [op_id for op_id, _ in p.cancels] == [5]
    assert p.commands == []


def test_draining_node_is_an_input_of_the_plan() -> None:
    """A draining or decommissioned node gets no start in the plan (the submission's
    admission rule), the skip says why; a shutdown there is still planned; active: started."""
    world = [guest(101), guest(102, desired_state=DesiredState.STOPPED)]
    obs = [seen(101, "stopped"), seen(102)]
    for state in (NodeState.DRAINING, NodeState.DECOMMISSIONED):
        p = run(world, obs, node_states={NODE: state})
        assert [(c.guest.vmid, c.action) for c in p.commands] == [(102, Action.SHUTDOWN)]
        assert p.held == [(101, Action.START)]
        (why,) = [reason for vmid, reason in p.skipped if vmid == 101]
        assert why.startswith(f"node_{state}:")
    p = run(world, obs, node_states={NODE: NodeState.ACTIVE})
    assert sorted(c.action for c in p.commands) == [Action.SHUTDOWN, Action.START]


def test_superseded_is_one_rule_for_the_plan_and_the_journal() -> None:
    """`superseded` names only pending reconcile ops whose target is not the desired state;
    the plan cancels exactly what it names, with its reason."""
    ops = [
        op(5, 101, "start", origin=Origin.RECONCILE),
        op(6, 101, "shutdown", origin=Origin.RECONCILE),
        op(7, 101, "start", origin=Origin.API),
        op(8, 101, "start", origin=Origin.RECONCILE, state=OpState.RUNNING),
    ]
    assert superseded(ops, DesiredState.STOPPED) == [
        (ops[0], "superseded: desired state is now stopped")
    ]
    assert [o.id for o, _ in superseded(ops, None)] == [5, 6]
    p = run([guest(101, desired_state=DesiredState.STOPPED)], [seen(101)], open_ops={101: ops})
    assert p.cancels == [(o.id, why) for o, why in superseded(ops, DesiredState.STOPPED)]


def test_failed_reconcile_op_blocks_its_generation_and_a_new_generation_unblocks() -> None:
    """After a failed reconcile op for generation g reconcile waits for an operator; a newer
    desired generation gets a fresh op; a succeeded one is followed by the next sequence."""
    failed = op(
        5,
        101,
        "start",
        origin=Origin.RECONCILE,
        state=OpState.FAILED,
        idempotency_key=reconcile_key(101, 2, Action.START, 1),
    )
    blocked = run(
        [guest(101, desired_generation=2)], [seen(101, "stopped")], latest_reconcile={101: failed}
    )
    assert blocked.commands == [] and "waiting for an operator" in dict(blocked.skipped)[101]
    fresh = run(
        [guest(101, desired_generation=3)], [seen(101, "stopped")], latest_reconcile={101: failed}
    )
    assert [c.key for c in fresh.commands] == ["reconcile:101:3:start:1"]
    done = op(
        6,
        101,
        "start",
        origin=Origin.RECONCILE,
        state=OpState.SUCCEEDED,
        idempotency_key=reconcile_key(101, 2, Action.START, 1),
    )
    again = run(
        [guest(101, desired_generation=2)], [seen(101, "stopped")], latest_reconcile={101: done}
    )
    assert [c.key for c in again.commands] == ["reconcile:101:2:start:2"]
    assert again.commands[0].after == 6


def test_desired_absent_is_never_converged_by_reconcile() -> None:
    """Reconcile never destroys: a present guest whose desired state is absent gets no op."""
    p = run([guest(101, desired_state=DesiredState.ABSENT)], [seen(101)])
    assert p.commands == []


def test_drift_checks_and_rebaseline() -> None:
    """Guests with a snapshot are digest-checked (oldest first, bounded); a snapshot older
    than lifecycled's own config change, or none, is re-taken instead."""
    guests = [
        guest(101, digest_checked_at=50.0),
        guest(102, digest_checked_at=10.0),
        guest(103, digest_checked_at=None),
        guest(104, config_digest=None),
        guest(105, snapshot_at=5.0),
        guest(106, observed_digest="other"),
    ]
    p = run(guests, [seen(v) for v in range(101, 107)], config_changes={105: 9.0}, drift_checks=3)
    assert p.digest_checks == [103, 106, 102]
    assert sorted(p.rebaseline) == [104, 105]
    assert p.drifted == [106]


def test_reconcile_keys_round_trip() -> None:
    """parse_key reads back the generation and sequence; other keys are not reconcile keys."""
    assert parse_key(reconcile_key(101, 7, Action.SHUTDOWN, 3)) == (7, 3)
    assert parse_key("order-1") is None
    assert parse_key("reconcile:101:x:start:1") is None


# --- properties --------------------------------------------------------------------------

STATUSES = ["running", "stopped", "paused", "unknown"]
LOCKS = [None, None, None, "backup", "migrate", "suspended"]


@st.composite
def worlds(draw: st.DrawFn) -> ReconcileInput:
    vmids = draw(st.lists(st.integers(100, 140), unique=True, max_size=25))
    guests: dict[int, GuestRecord] = {}
    observations: list[Observation] = []
    open_ops: dict[int, list[Op]] = {}
    next_id = 1
    for vmid in vmids:
        present = draw(st.booleans())
        node = draw(st.sampled_from([NODE, NODE, "pve2"]))
        if draw(st.booleans()):
            guests[vmid] = guest(
                vmid,
                node=node,
                origin=draw(st.sampled_from(list(GuestOrigin))),
                desired_state=draw(st.sampled_from([None, *DesiredState])),
                observed_state=draw(st.sampled_from([None, *ObservedState])),
                lock=draw(st.sampled_from(LOCKS)),
            )
        if present:
            observations.append(
                seen(
                    vmid,
                    draw(st.sampled_from(STATUSES)),
                    node=node,
                    lock=draw(st.sampled_from(LOCKS)),
                    hastate=draw(st.sampled_from([None, None, "started", "ignored"])),
                    template=draw(st.booleans()),
                )
            )
        if draw(st.integers(0, 3)) == 0:
            open_ops[vmid] = [
                op(
                    next_id,
                    vmid,
                    draw(st.sampled_from(["start", "shutdown", "terminate", "migrate"])),
                    origin=draw(st.sampled_from(list(Origin))),
                    state=draw(st.sampled_from([OpState.PENDING, OpState.RUNNING])),
                )
            ]
            next_id += 1
    return ReconcileInput(
        node=NODE,
        now=NOW,
        observations=observations,
        guests=guests,
        open_ops=open_ops,
        max_commands=draw(st.integers(0, 5)),
        manage_discovered=draw(st.sampled_from(["off", "native", "adopted"])),
        node_states=draw(st.dictionaries(st.just(NODE), st.sampled_from(list(NodeState)))),
    )


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_plan_never_breaks_the_reconcile_rules(inp: ReconcileInput) -> None:
    """Never more than max_commands; never an op for a guest with an op open, a lock, HA or
    a template, nor for an unmanaged guest; never a destructive action; nothing twice."""
    p = plan(inp)
    assert len(p.commands) <= inp.max_commands
    by_vmid = {o.vmid: o for o in inp.observations}
    targeted = [c.guest.vmid for c in p.commands]
    assert len(targeted) == len(set(targeted))
    for cmd in p.commands:
        obs = by_vmid[cmd.guest.vmid]
        rec = inp.guests[cmd.guest.vmid]
        assert cmd.action in RECONCILE_ACTIONS
        assert cmd.action is not Action.TERMINATE and cmd.action is not Action.STOP
        assert rec.origin in (GuestOrigin.NATIVE, GuestOrigin.ADOPTED)
        assert rec.observed_state is not ObservedState.LOST
        assert not inp.open_ops.get(cmd.guest.vmid)
        assert obs.lock is None and not obs.ha_managed and not obs.template
        assert obs.node == inp.node
        state = inp.node_states.get(obs.node)
        assert state is None or (
            admission_refusal(
                state, served=obs.node, action=cmd.action, guest_node=obs.node, params=cmd.params
            )
            is None
        )
        assert cmd.key.startswith(f"reconcile:{cmd.guest.vmid}:{rec.desired_generation}:")


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_plan_never_loses_what_it_can_see_nor_unmanaged_guests(inp: ReconcileInput) -> None:
    """LOST only for a managed guest of the served node absent from the whole read; a
    cancel only for a pending reconcile op."""
    p = plan(inp)
    present = {o.vmid for o in inp.observations}
    for orphan in p.lost:
        rec = inp.guests[orphan.vmid]
        assert orphan.vmid not in present
        assert rec.managed and rec.node == inp.node
        assert rec.observed_state not in (ObservedState.LOST, ObservedState.MISSING, None)
    pending_reconcile = {
        o.id
        for ops in inp.open_ops.values()
        for o in ops
        if o.state is OpState.PENDING and o.origin is Origin.RECONCILE
    }
    assert {op_id for op_id, _ in p.cancels} <= pending_reconcile


def test_live_status_replaces_the_lagging_one_on_the_served_node() -> None:
    """The served node's guests take the live list's status and lock; other nodes keep the
    cluster's; a guest the live list lacks reads unknown; a live "running" keeps "paused"."""
    observed = [
        seen(100, "stopped"),
        seen(101, "running", lock="backup"),
        seen(102, "running", node="pve2"),
        seen(103, "running"),
        seen(104, "paused"),
    ]
    live = {
        (GuestKind.QEMU, 100): ("running", None),
        (GuestKind.QEMU, 101): ("stopped", None),
        (GuestKind.QEMU, 104): ("running", None),
    }
    got = with_live_status(observed, node=NODE, live=live)
    assert [(o.vmid, o.status, o.lock) for o in got] == [
        (100, "running", None),
        (101, "stopped", None),
        (102, "running", None),
        (103, "unknown", None),
        (104, "paused", None),
    ]
