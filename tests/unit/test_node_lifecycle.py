"""The node lifecycle state machine and its refusals (SPEC §4 "Node lifecycle"; pure)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lifecycled.domain.node import (
    CLOSED,
    TRANSITIONS,
    NodeRecord,
    NodeState,
    admission_refusal,
    decommission_refusal,
    is_legal,
    transition_refusal,
)

N = NodeState
DAY = 86400.0
#: The lifecycle, written out independently of the module's table.
EXPECTED = {
    (N.READY, N.ACTIVE),
    (N.READY, N.IDLE),
    (N.READY, N.DRAINING),
    (N.READY, N.UNHEALTHY),
    (N.ACTIVE, N.IDLE),
    (N.ACTIVE, N.DRAINING),
    (N.ACTIVE, N.UNHEALTHY),
    (N.IDLE, N.ACTIVE),
    (N.IDLE, N.DRAINING),
    (N.IDLE, N.UNHEALTHY),
    (N.DRAINING, N.ACTIVE),
    (N.DRAINING, N.IDLE),
    (N.DRAINING, N.DECOMMISSIONED),
    (N.DRAINING, N.UNHEALTHY),
    (N.UNHEALTHY, N.READY),
    (N.UNHEALTHY, N.ACTIVE),
    (N.UNHEALTHY, N.IDLE),
    (N.UNHEALTHY, N.DRAINING),
}


def record(
    state: NodeState = N.DRAINING, *, age: float = 30 * DAY, system: bool = False
) -> NodeRecord:
    now = 1_000_000_000.0
    return NodeRecord(
        node="pve1", state=state, since=now, is_system=system, first_seen=now - age, reason=""
    )


NOW = 1_000_000_000.0


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(NodeState, NodeState)))
def test_every_transition_is_legal_exactly_when_listed(src: NodeState, dst: NodeState) -> None:
    """is_legal and transition_refusal agree with the written-out lifecycle for every pair."""
    legal = (src, dst) in EXPECTED
    assert is_legal(src, dst) is legal
    refusal = transition_refusal("pve1", src, dst)
    assert (refusal is None) is legal
    if refusal is not None:
        assert refusal.code in ("invalid_node_transition", "node_decommissioned")
        assert "pve1" in refusal.reason


def test_the_table_matches_the_written_lifecycle() -> None:
    """TRANSITIONS lists exactly the expected pairs, and no self-loops."""
    table = {(src, dst) for src, targets in TRANSITIONS.items() for dst in targets}
    assert table == EXPECTED
    assert all(src != dst for src, dst in table)


def test_decommissioned_is_final_and_says_so() -> None:
    """Nothing leaves decommissioned; the refusal names it as final."""
    assert TRANSITIONS[N.DECOMMISSIONED] == frozenset()
    refusal = transition_refusal("pve1", N.DECOMMISSIONED, N.ACTIVE)
    assert refusal is not None and refusal.code == "node_decommissioned"
    assert "final" in refusal.reason


def test_decommission_only_from_draining_tells_to_drain_first() -> None:
    """An active node cannot be decommissioned directly: the reason says to drain it first."""
    refusal = transition_refusal("pve1", N.ACTIVE, N.DECOMMISSIONED)
    assert refusal is not None and "drain it first" in refusal.reason


def test_every_live_state_can_become_unhealthy_and_recover() -> None:
    """Any state but decommissioned may go unhealthy, and unhealthy may come back to it."""
    for state in NodeState:
        if state in (N.DECOMMISSIONED, N.UNHEALTHY):
            continue
        assert is_legal(state, N.UNHEALTHY)
        assert is_legal(N.UNHEALTHY, state)


@given(st.lists(st.sampled_from(list(NodeState)), max_size=50))
def test_no_path_leaves_decommissioned(steps: list[NodeState]) -> None:
    """Applying any sequence of attempted transitions, once decommissioned, it stays so."""
    state = N.READY
    reached = False
    for target in steps:
        if transition_refusal("pve1", state, target) is None:
            assert not reached, f"left decommissioned for {target}"
            state = target
        reached = reached or state is N.DECOMMISSIONED
    assert not reached or state is N.DECOMMISSIONED


@given(st.lists(st.sampled_from(list(NodeState)), max_size=50))
def test_decommissioned_is_reached_only_through_draining(steps: list[NodeState]) -> None:
    """The state before decommissioned is always draining."""
    state = N.READY
    for target in steps:
        if transition_refusal("pve1", state, target) is None:
            if target is N.DECOMMISSIONED:
                assert state is N.DRAINING
            state = target


# --- admission --------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["start", "create", "clone"])
def test_draining_refuses_placing_a_guest_on_the_node(action: str) -> None:
    """start/create/clone on the draining node: node_draining, with a reason."""
    refusal = admission_refusal(
        N.DRAINING, served="pve1", action=action, guest_node="pve1", params={}
    )
    assert refusal is not None and refusal.code == "node_draining"
    assert action in refusal.reason and "pve1" in refusal.reason


def test_draining_refuses_inbound_migrate_but_not_outbound() -> None:
    """A migrate whose target is the served node is refused; migrating away is how it drains."""
    inbound = admission_refusal(
        N.DRAINING, served="pve1", action="migrate", guest_node="pve2", params={"target": "pve1"}
    )
    assert inbound is not None and inbound.code == "node_draining"
    outbound = admission_refusal(
        N.DRAINING, served="pve1", action="migrate", guest_node="pve1", params={"target": "pve2"}
    )
    assert outbound is None


def test_draining_refuses_a_clone_targeting_the_node() -> None:
    """A clone from another node whose target is the served node places a guest on it."""
    refusal = admission_refusal(
        N.DRAINING, served="pve1", action="clone", guest_node="pve2", params={"target": "pve1"}
    )
    assert refusal is not None


@pytest.mark.parametrize(
    "action", ["stop", "shutdown", "terminate", "reboot", "reset", "suspend", "configure"]
)
def test_draining_still_accepts_what_empties_or_keeps_the_node(action: str) -> None:
    """stop, shutdown, terminate … are accepted while draining."""
    assert (
        admission_refusal(N.DRAINING, served="pve1", action=action, guest_node="pve1", params={})
        is None
    )


def test_other_nodes_guests_are_not_refused() -> None:
    """A start for a guest on another node is not the served node's business."""
    assert (
        admission_refusal(N.DRAINING, served="pve1", action="start", guest_node="pve2", params={})
        is None
    )


@pytest.mark.parametrize("state", [s for s in NodeState if s not in CLOSED])
def test_open_states_admit_everything(state: NodeState) -> None:
    """Only draining and decommissioned refuse admissions."""
    for action in ("start", "create", "clone", "migrate"):
        assert (
            admission_refusal(
                state, served="pve1", action=action, guest_node="pve1", params={"target": "pve1"}
            )
            is None
        )


def test_decommissioned_refuses_with_its_own_code() -> None:
    """A decommissioned node refuses placements for good (node_decommissioned)."""
    refusal = admission_refusal(
        N.DECOMMISSIONED, served="pve1", action="start", guest_node="pve1", params={}
    )
    assert refusal is not None and refusal.code == "node_decommissioned"


# --- decommission -----------------------------------------------------------------------------


def test_decommission_allowed_for_an_old_empty_draining_node() -> None:
    """Draining, old enough, not a system node, no guests: allowed."""
    assert (
        decommission_refusal(record(), now=NOW, min_age=7 * DAY, system=False, guests_remaining=0)
        is None
    )


def test_decommission_refusals_in_order() -> None:
    """Wrong state, then system node, then too young, then guests remain."""
    young_system_busy = record(N.ACTIVE, age=DAY, system=True)
    first = decommission_refusal(
        young_system_busy, now=NOW, min_age=7 * DAY, system=False, guests_remaining=3
    )
    assert first is not None and first.code == "invalid_node_transition"
    second = decommission_refusal(
        record(age=DAY, system=True), now=NOW, min_age=7 * DAY, system=False, guests_remaining=3
    )
    assert second is not None and second.code == "system_node"
    third = decommission_refusal(
        record(age=DAY), now=NOW, min_age=7 * DAY, system=False, guests_remaining=3
    )
    assert third is not None and third.code == "node_too_young"
    assert "1d" in third.reason and "1w" in third.reason
    fourth = decommission_refusal(
        record(), now=NOW, min_age=7 * DAY, system=False, guests_remaining=3
    )
    assert fourth is not None and fourth.code == "guests_remain"
    assert "3 guest(s)" in fourth.reason


def test_system_setting_refuses_even_an_unmarked_node() -> None:
    """system=True (the --system-node setting) refuses although the row is not marked."""
    refusal = decommission_refusal(record(), now=NOW, min_age=0, system=True, guests_remaining=0)
    assert refusal is not None and refusal.code == "system_node"


def test_node_record_reports_its_age() -> None:
    """age() counts from first_seen and never goes negative."""
    rec = record(age=100.0)
    assert rec.age(NOW) == 100.0
    assert rec.age(NOW - 1000) == 0.0
    assert rec.to_dict(now=NOW)["age_seconds"] == 100.0
