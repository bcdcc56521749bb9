"""Node lifecycle verbs of the journal (SPEC §4 "Node lifecycle").

Every change of a node's row is validated by :mod:`lifecycled.domain.node` and audited in
the same transaction; a refused change writes only its audit record.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from typing import Any

import attrs

from lifecycled.audit import AuditRecord, Decision
from lifecycled.domain.guests import MANAGED_ORIGINS
from lifecycled.domain.node import (
    NodeRecord,
    NodeState,
    Refusal,
    decommission_refusal,
    transition_refusal,
)
from lifecycled.journal.events import insert_audit
from lifecycled.journal.store import Part, fetch_all, fetch_one

_COLUMNS = "node, state, since, is_system, first_seen, reason"
#: Origins of the guests lifecycled manages (they keep a node from being decommissioned).
_MANAGED = tuple(sorted(str(o) for o in MANAGED_ORIGINS))


@attrs.frozen(kw_only=True)
class NodeChange:
    """The outcome of a node verb: the row after it, and the refusal if there was one."""

    record: NodeRecord
    previous: NodeState
    refusal: Refusal | None = None
    changed: bool = False
    #: Decommission only: the guests found on the node (managed ones and those Proxmox shows).
    guests: tuple[int, ...] = ()


def node_from_row(row: sqlite3.Row) -> NodeRecord:
    return NodeRecord(
        node=str(row["node"]),
        state=NodeState(row["state"]),
        since=float(row["since"]),
        is_system=bool(row["is_system"]),
        first_seen=float(row["first_seen"]),
        reason=str(row["reason"]),
    )


def load_node(conn: sqlite3.Connection, node: str) -> NodeRecord | None:
    row = fetch_one(conn, f"SELECT {_COLUMNS} FROM node_state WHERE node = ?", (node,))
    return None if row is None else node_from_row(row)


def _audit(
    *,
    now: float,
    actor: str,
    action: str,
    decision: Decision,
    reason: str,
    record: NodeRecord,
    **extra: Any,
) -> AuditRecord:
    snapshot: dict[str, Any] = {
        "state": str(record.state),
        "since": record.since,
        "first_seen": record.first_seen,
        "is_system": record.is_system,
    }
    snapshot.update(extra)
    return AuditRecord(
        at=now,
        actor=actor,
        action=action,
        decision=decision,
        reason=reason,
        node=record.node,
        snapshot=snapshot,
    )


def _ensure(
    conn: sqlite3.Connection, node: str, *, now: float, actor: str, is_system: bool = False
) -> NodeRecord:
    """The node's row, inserted as ``ready`` (first seen now, audited) when absent."""
    found = load_node(conn, node)
    if found is not None:
        return found
    record = NodeRecord(
        node=node,
        state=NodeState.READY,
        since=now,
        is_system=is_system,
        first_seen=now,
        reason="first seen",
    )
    conn.execute(
        "INSERT INTO node_state (node, state, since, is_system, first_seen, reason) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (node, str(record.state), now, int(is_system), now, record.reason),
    )
    insert_audit(
        conn,
        _audit(
            now=now,
            actor=actor,
            action="register",
            decision=Decision.NODE_TRANSITION,
            reason="node first seen",
            record=record,
            to=str(record.state),
        ),
    )
    return record


def _move(
    conn: sqlite3.Connection,
    record: NodeRecord,
    target: NodeState,
    *,
    now: float,
    actor: str,
    action: str,
    reason: str,
    refusal: Refusal | None,
    extra: dict[str, Any] | None = None,
) -> NodeChange:
    """Apply (or refuse, when ``refusal``) ``record`` → ``target``, audited either way."""
    facts = {"from": str(record.state), "to": str(target), **(extra or {})}
    if refusal is not None:
        insert_audit(
            conn,
            _audit(
                now=now,
                actor=actor,
                action=action,
                decision=Decision.REFUSED,
                reason=f"{refusal.code}: {refusal.reason}",
                record=record,
                **facts,
            ),
        )
        return NodeChange(record=record, previous=record.state, refusal=refusal)
    conn.execute(
        "UPDATE node_state SET state = ?, since = ?, reason = ? WHERE node = ?",
        (str(target), now, reason, record.node),
    )
    after = attrs.evolve(record, state=target, since=now, reason=reason)
    insert_audit(
        conn,
        _audit(
            now=now,
            actor=actor,
            action=action,
            decision=Decision.NODE_TRANSITION,
            reason=reason,
            record=after,
            **facts,
        ),
    )
    return NodeChange(record=after, previous=record.state, changed=True)


class Nodes(Part):
    """Node verbs (Journal delegates to them)."""

    async def get_node(self, node: str) -> NodeRecord | None:
        """The node's row, or ``None`` when lifecycled never registered it."""
        row = await self._store.one(f"SELECT {_COLUMNS} FROM node_state WHERE node = ?", (node,))
        return None if row is None else node_from_row(row)

    async def registered_nodes(self) -> list[str]:
        """Every node lifecycled ever served from this journal, by name."""
        found = await self._store.rows("SELECT node FROM node_state ORDER BY node")
        return [str(r["node"]) for r in found]

    async def ensure_node(self, node: str, *, now: float, actor: str) -> NodeRecord:
        """The node's row; created as ``ready`` (``first_seen`` = now, audited) when absent."""
        found = await self.get_node(node)
        if found is not None:
            return found

        def unit(conn: sqlite3.Connection) -> NodeRecord:
            return _ensure(conn, node, now=now, actor=actor)

        return await self._store.write(unit)

    async def transition_node(
        self,
        node: str,
        target: NodeState,
        *,
        now: float,
        actor: str,
        action: str,
        reason: str,
    ) -> NodeChange:
        """Move the node to ``target`` if the lifecycle allows it; audited either way.

        Already in ``target``: nothing changes and nothing is audited. Not a way to
        decommission (see :meth:`decommission_node`).
        """
        if target is NodeState.DECOMMISSIONED:
            raise ValueError("decommission through decommission_node (it checks guests and age)")

        def unit(conn: sqlite3.Connection) -> NodeChange:
            record = _ensure(conn, node, now=now, actor=actor)
            if record.state is target:
                return NodeChange(record=record, previous=record.state)
            refusal = transition_refusal(node, record.state, target)
            return _move(
                conn,
                record,
                target,
                now=now,
                actor=actor,
                action=action,
                reason=reason,
                refusal=refusal,
            )

        return await self._store.write(unit)

    async def refuse_node_change(
        self,
        node: str,
        target: NodeState,
        refusal: Refusal,
        *,
        now: float,
        actor: str,
        action: str,
    ) -> NodeChange:
        """Audit a node change refused by a rule outside the state machine; nothing else."""

        def unit(conn: sqlite3.Connection) -> NodeChange:
            record = _ensure(conn, node, now=now, actor=actor)
            return _move(
                conn,
                record,
                target,
                now=now,
                actor=actor,
                action=action,
                reason="",
                refusal=refusal,
            )

        return await self._store.write(unit)

    async def decommission_node(
        self,
        node: str,
        *,
        now: float,
        actor: str,
        min_age: float,
        system: bool,
        live_guests: Collection[int] = (),
        reason: str = "decommissioned",
    ) -> NodeChange:
        """Decommission a draining node; refused (and audited) for a system node, a node
        younger than ``min_age``, or while guests remain.

        Remaining guests are the managed guests (native, adopted) the journal places on the
        node, counted in this transaction, plus ``live_guests`` (vmids Proxmox shows there).
        """

        def unit(conn: sqlite3.Connection) -> NodeChange:
            record = _ensure(conn, node, now=now, actor=actor)
            if record.state is NodeState.DECOMMISSIONED:
                return NodeChange(record=record, previous=record.state)
            managed = fetch_all(
                conn,
                f"SELECT vmid FROM guests WHERE node = ? AND origin IN ({', '.join('?' for _ in _MANAGED)})"
                " ORDER BY vmid",
                (node, *_MANAGED),
            )
            remaining = sorted({int(r["vmid"]) for r in managed} | set(live_guests))
            refusal = decommission_refusal(
                record, now=now, min_age=min_age, system=system, guests_remaining=len(remaining)
            )
            change = _move(
                conn,
                record,
                NodeState.DECOMMISSIONED,
                now=now,
                actor=actor,
                action="decommission",
                reason=reason,
                refusal=refusal,
                extra={"guests": remaining[:100], "guests_remaining": len(remaining)},
            )
            return attrs.evolve(change, guests=tuple(remaining))

        return await self._store.write(unit)

    async def mark_system_node(
        self, node: str, is_system: bool, *, now: float, actor: str
    ) -> NodeRecord:
        """Set whether the node is a system node (never decommissioned); audited on change."""

        def unit(conn: sqlite3.Connection) -> NodeRecord:
            record = _ensure(conn, node, now=now, actor=actor, is_system=is_system)
            if record.is_system == is_system:
                return record
            conn.execute(
                "UPDATE node_state SET is_system = ? WHERE node = ?", (int(is_system), node)
            )
            after = attrs.evolve(record, is_system=is_system)
            insert_audit(
                conn,
                _audit(
                    now=now,
                    actor=actor,
                    action="system_node",
                    decision=Decision.NODE_TRANSITION,
                    reason="marked as a system node" if is_system else "no longer a system node",
                    record=after,
                ),
            )
            return after

        return await self._store.write(unit)
