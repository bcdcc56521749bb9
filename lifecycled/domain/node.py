"""The served node's lifecycle (SPEC §4 "Node lifecycle") — pure: states, their legal
transitions, and the refusals (as values, with a reason) of what a state forbids.

=============== =====================================================
from            to
=============== =====================================================
ready           active, idle, draining, unhealthy
active          idle, draining, unhealthy
idle            active, draining, unhealthy
draining        active, idle (undrain), decommissioned, unhealthy
unhealthy       ready, active, idle, draining
decommissioned  nothing: final
=============== =====================================================

``draining`` refuses new ``start``/``create``/``clone`` on the node and inbound ``migrate``;
``decommissioned`` is reached only from ``draining`` and refuses them for good. A decommission
is refused for a system node, a node younger than ``node_min_age`` or one where guests remain.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import attrs

from lifecycled.errors import PolicyRefused


class NodeState(enum.StrEnum):
    """Where the served node is in its life."""

    READY = "ready"  # registered, not serving yet
    ACTIVE = "active"  # serving: every action accepted
    IDLE = "idle"  # serving, marked as carrying no work
    DRAINING = "draining"  # no new guests: start/create/clone/inbound migrate refused
    DECOMMISSIONED = "decommissioned"  # out of service for good
    UNHEALTHY = "unhealthy"  # marked sick by an operator or a probe


_N = NodeState
TRANSITIONS: dict[NodeState, frozenset[NodeState]] = {
    _N.READY: frozenset({_N.ACTIVE, _N.IDLE, _N.DRAINING, _N.UNHEALTHY}),
    _N.ACTIVE: frozenset({_N.IDLE, _N.DRAINING, _N.UNHEALTHY}),
    _N.IDLE: frozenset({_N.ACTIVE, _N.DRAINING, _N.UNHEALTHY}),
    _N.DRAINING: frozenset({_N.ACTIVE, _N.IDLE, _N.DECOMMISSIONED, _N.UNHEALTHY}),
    _N.UNHEALTHY: frozenset({_N.READY, _N.ACTIVE, _N.IDLE, _N.DRAINING}),
    _N.DECOMMISSIONED: frozenset(),
}

#: States in which the node takes no new guests.
CLOSED: frozenset[NodeState] = frozenset({_N.DRAINING, _N.DECOMMISSIONED})
#: States the runtime moves to ``active`` when it starts.
ACTIVATABLE: frozenset[NodeState] = frozenset({_N.READY, _N.IDLE})
#: Actions that place a guest on the node (refused while it is closed).
PLACING_ACTIONS = frozenset({"start", "create", "clone"})


@attrs.frozen(kw_only=True)
class Refusal:
    """Why something is refused: a stable ``code`` and a ``reason`` for people."""

    code: str
    reason: str


@attrs.frozen(kw_only=True)
class NodeRecord:
    """The journal's row for one node."""

    node: str
    state: NodeState
    since: float
    is_system: bool
    first_seen: float
    reason: str = ""

    def age(self, now: float) -> float:
        """Seconds since lifecycled first saw the node."""
        return max(0.0, now - self.first_seen)

    def to_dict(self, *, now: float | None = None) -> dict[str, Any]:
        from lifecycled.domain.serialize import rfc3339

        out: dict[str, Any] = {
            "node": self.node,
            "state": str(self.state),
            "since": rfc3339(self.since),
            "is_system": self.is_system,
            "first_seen": rfc3339(self.first_seen),
            "reason": self.reason,
        }
        if now is not None:
            out["age_seconds"] = round(self.age(now), 3)
        return out


class NodeRefused(PolicyRefused):
    """A request refused because of the node's lifecycle state (draining, decommissioned)."""

    def __init__(self, refusal: Refusal, *, state: NodeState) -> None:
        super().__init__(refusal.code, refusal.reason)
        self.refusal = refusal
        self.state = state


def is_legal(src: NodeState, dst: NodeState) -> bool:
    """Whether ``src`` → ``dst`` is a transition of the node lifecycle."""
    return dst in TRANSITIONS[src]


def transition_refusal(node: str, src: NodeState, dst: NodeState) -> Refusal | None:
    """Why ``src`` → ``dst`` is not allowed, or ``None`` when it is."""
    if is_legal(src, dst):
        return None
    if src is NodeState.DECOMMISSIONED:
        return Refusal(
            code="node_decommissioned",
            reason=f"node {node} is decommissioned; that is final",
        )
    if dst is NodeState.DECOMMISSIONED:
        return Refusal(
            code="invalid_node_transition",
            reason=f"node {node} is {src}: drain it first (lifecycled node drain)",
        )
    allowed = ", ".join(sorted(TRANSITIONS[src])) or "nothing"
    return Refusal(
        code="invalid_node_transition",
        reason=f"node {node} cannot go from {src} to {dst} (from {src}: {allowed})",
    )


def admission_refusal(
    state: NodeState,
    *,
    served: str,
    action: str,
    guest_node: str,
    params: Mapping[str, Any],
) -> Refusal | None:
    """Why a new op is refused by the served node's state, or ``None`` (SPEC §4).

    While ``served`` is draining (or decommissioned) it takes no new guests: ``start``,
    ``create`` and ``clone`` placing a guest on it, and a ``migrate`` whose ``target`` is it.
    Everything else (stop, shutdown, migrate away, terminate, …) is still accepted: that is
    how a node is emptied.
    """
    if state not in CLOSED:
        return None
    placing = action in PLACING_ACTIONS and (
        guest_node == served or (action == "clone" and params.get("target") == served)
    )
    inbound = action == "migrate" and params.get("target") == served
    if not (placing or inbound):
        return None
    what = f"inbound migrate to {served}" if inbound else f"{action} on {served}"
    if state is NodeState.DRAINING:
        return Refusal(
            code="node_draining",
            reason=f"node {served} is draining: {what} is refused until it is undrained",
        )
    return Refusal(
        code="node_decommissioned",
        reason=f"node {served} is decommissioned: {what} is refused for good",
    )


def decommission_refusal(
    record: NodeRecord,
    *,
    now: float,
    min_age: float,
    system: bool,
    guests_remaining: int,
) -> Refusal | None:
    """Why ``record``'s node may not be decommissioned now, or ``None``.

    In this order: the transition itself (only a draining node), a system node, a node
    younger than ``min_age``, guests remaining on the node.
    """
    refusal = transition_refusal(record.node, record.state, NodeState.DECOMMISSIONED)
    if refusal is not None:
        return refusal
    if system or record.is_system:
        return Refusal(
            code="system_node",
            reason=f"node {record.node} is a system node; it is never decommissioned",
        )
    age = record.age(now)
    if age < min_age:
        from lifecycled.domain.durations import format_duration

        return Refusal(
            code="node_too_young",
            reason=(
                f"node {record.node} was first seen {format_duration(round(age))} ago; "
                f"a node younger than node_min_age ({format_duration(round(min_age))}) "
                "is not decommissioned"
            ),
        )
    if guests_remaining > 0:
        return Refusal(
            code="guests_remain",
            reason=(
                f"{guests_remaining} guest(s) remain on node {record.node}; "
                "migrate or terminate them first"
            ),
        )
    return None
