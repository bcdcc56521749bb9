"""The served node's lifecycle, as the CLI, the HTTP API and the runtime use it (SPEC §4).

Thin: the decisions are :mod:`lifecycled.domain.node`'s and every write is one journal verb
(validated and audited in one transaction). What lives here is the gathering: the node's
state before admitting an op, and the guests Proxmox still shows on a node to decommission.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lifecycled.audit import AuditRecord, Decision
from lifecycled.domain.node import (
    ACTIVATABLE,
    NodeRecord,
    NodeRefused,
    NodeState,
    Refusal,
    admission_refusal,
)
from lifecycled.domain.op import GuestRef, Op
from lifecycled.domain.states import REARMABLE
from lifecycled.errors import PveError
from lifecycled.journal import Journal
from lifecycled.journal.nodes import NodeChange
from lifecycled.pve.port import PveClient

if TYPE_CHECKING:
    from lifecycled.engine.cluster import Cluster

log = logging.getLogger("lifecycled.node")


class Unread(enum.Enum):
    """The idempotency key was not read by the caller."""

    UNREAD = "unread"


UNREAD = Unread.UNREAD


async def admit(
    journal: Journal,
    *,
    served: str,
    action: str,
    guest: GuestRef,
    params: Mapping[str, Any],
    idempotency_key: str | None,
    actor: str,
    now: float,
    cluster: Cluster | None = None,
    existing: Op | Unread | None = UNREAD,
    served_state: NodeState | Unread | None = UNREAD,
) -> None:
    """Raise :class:`NodeRefused` (audited) when the served node's state refuses a new op —
    or, with ``cluster``, the state another node publishes in its Proxmox description
    (SPEC §7: every daemon respects a draining node: no start on it, no migrate into it);
    another node this daemon serves is refused by its journal row as the served node is.

    A resubmitted key whose op is in flight or succeeded is not a new op: it is answered by
    deduplication, so the node's state does not refuse it. ``existing``: the key's op as the
    caller already read it (else the key is read here, only when the state refuses).
    ``served_state``: the served node's state as the caller already read it (``None``: not
    registered; else it is read here).
    """
    if isinstance(served_state, Unread):
        record = await journal.get_node(served)
        served_state = record.state if record is not None else None
    refusal: Refusal | None = None
    state: NodeState | None = None
    if served_state is not None:
        state = served_state
        refusal = admission_refusal(
            served_state, served=served, action=action, guest_node=guest.node, params=params
        )
    if refusal is None and cluster is not None:
        for other in placed_on(action, guest, params) - {served}:
            # Another node this daemon serves: its journal row first (``node drain --node``
            # takes effect at once; the next reconcile pass publishes it), else its mark.
            mark = None
            if cluster.serves(other):
                own = await journal.get_node(other)
                mark = own.state if own is not None else None
            if mark is None:
                mark = await cluster.node_state(other)
            if mark is None:
                continue
            refusal = admission_refusal(
                mark, served=other, action=action, guest_node=guest.node, params=params
            )
            if refusal is not None:
                state = mark
                break
    if refusal is None or state is None:
        return
    if idempotency_key is not None:
        if isinstance(existing, Unread):
            existing = await journal.by_key(idempotency_key)
        if existing is not None and existing.state not in REARMABLE:
            return
    await journal.append_audit(
        AuditRecord(
            at=now,
            actor=actor,
            action=action,
            decision=Decision.REFUSED,
            reason=f"{refusal.code}: {refusal.reason}",
            vmid=guest.vmid,
            node=guest.node,
            snapshot={
                "node_state": str(state),
                "served_node": served,
                "guest": {"node": guest.node, "kind": str(guest.kind), "vmid": guest.vmid},
                "params": dict(params),
            },
        )
    )
    log.warning(
        "node.op_refused",
        extra={
            "action": action,
            "vmid": guest.vmid,
            "node": served,
            "code": refusal.code,
            "actor": actor,
        },
    )
    raise NodeRefused(refusal, state=state)


def placed_on(action: str, guest: GuestRef, params: Mapping[str, Any]) -> set[str]:
    """The nodes an op would put a guest on (whose lifecycle state may refuse it)."""
    out: set[str] = set()
    if action in ("start", "create", "clone"):
        out.add(guest.node)
    target = params.get("target")
    if action in ("migrate", "clone") and isinstance(target, str) and target:
        out.add(target)
    return out


async def activate(journal: Journal, node: str, *, system: bool, now: float) -> NodeRecord:
    """At start: register the node (first seen now), sync its system mark, and move a
    ``ready`` or ``idle`` node to ``active``. A draining, decommissioned or unhealthy node
    keeps its state."""
    record = await journal.ensure_node(node, now=now, actor="runtime")
    if record.is_system != system:
        record = await journal.mark_system_node(node, system, now=now, actor="runtime")
    if record.state in ACTIVATABLE:
        change = await journal.transition_node(
            node,
            NodeState.ACTIVE,
            now=now,
            actor="runtime",
            action="activate",
            reason="lifecycled started",
        )
        record = change.record
    if record.state is not NodeState.ACTIVE:
        log.warning("node.not_active", extra={"node": node, "state": str(record.state)})
    else:
        log.info("node.active", extra={"node": node})
    return record


async def live_guests(pve: PveClient, node: str) -> list[int]:
    """The vmids Proxmox shows on ``node`` (``/cluster/resources``); raises :class:`PveError`."""
    resources = await pve.cluster_resources()
    return sorted(res.vmid for res in resources if res.node == node)


async def decommission(
    journal: Journal,
    node: str,
    *,
    pve: PveClient | None,
    actor: str,
    min_age: float,
    system: bool,
    now: float,
    reason: str = "decommissioned",
) -> tuple[NodeChange, str | None]:
    """Decommission the node (audited, refused while guests remain, …).

    Guests Proxmox shows on the node count when it can be read; when it cannot, only the
    journal's managed guests count and the second value says why Proxmox was not read.
    """
    seen: list[int] = []
    unread: str | None = None
    if pve is None:
        unread = "Proxmox was not asked (no connection options given)"
    else:
        try:
            seen = await live_guests(pve, node)
        except PveError as exc:
            unread = f"Proxmox could not be read: {exc.reason}"
            log.warning("node.decommission_pve_unreadable", extra={"node": node, "error": unread})
    change = await journal.decommission_node(
        node,
        now=now,
        actor=actor,
        min_age=min_age,
        system=system,
        live_guests=seen,
        reason=reason,
    )
    return change, unread


async def drain(journal: Journal, node: str, *, actor: str, reason: str, now: float) -> NodeChange:
    """Stop taking new guests on the node (idempotent; refused from decommissioned)."""
    return await journal.transition_node(
        node, NodeState.DRAINING, now=now, actor=actor, action="drain", reason=reason
    )


async def undrain(
    journal: Journal, node: str, *, actor: str, reason: str, now: float
) -> NodeChange:
    """A draining node takes guests again (→ active); an active or idle node is left as is.

    From any other state (ready, unhealthy, decommissioned) it is refused, and audited.
    """
    record = await journal.ensure_node(node, now=now, actor=actor)
    if record.state in (NodeState.ACTIVE, NodeState.IDLE):
        return NodeChange(record=record, previous=record.state)
    if record.state is not NodeState.DRAINING:
        return await journal.refuse_node_change(
            node,
            NodeState.ACTIVE,
            Refusal(
                code="node_not_draining",
                reason=f"node {node} is {record.state}, not draining: nothing to undrain",
            ),
            now=now,
            actor=actor,
            action="undrain",
        )
    return await journal.transition_node(
        node, NodeState.ACTIVE, now=now, actor=actor, action="undrain", reason=reason
    )
