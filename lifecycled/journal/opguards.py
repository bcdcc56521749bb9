"""Op verbs that involve the guest's row: guarded submission, reconcile enqueue, the native
terminate's stop-first deferral, the adopted terminate's soft delete, and janitor notes.

Each is one transaction, so the check (is the guest managed? is an op already open?) and the
write it allows cannot be separated by another writer, even in another process.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from lifecycled.audit import AuditRecord
from lifecycled.domain.actions import Action
from lifecycled.domain.guests import (
    DesiredState,
    GuestOrigin,
    GuestRecord,
    check_placement,
    creation_conflict,
)
from lifecycled.domain.lifecycle import Refused, Verb, step
from lifecycled.domain.op import Op, canonical_json
from lifecycled.domain.states import REARMABLE
from lifecycled.errors import InvalidTransition, PolicyRefused
from lifecycled.journal import units
from lifecycled.journal.audit import insert_audit
from lifecycled.journal.guest_rows import (
    cancel_superseded,
    insert_guest,
    load_guest,
    open_ops,
    update_guest,
)
from lifecycled.journal.guests import not_managed
from lifecycled.journal.records import SubmitRequest, SubmitResult
from lifecycled.journal.rows import OP_COLUMNS, op_from_row
from lifecycled.journal.store import Store, fetch_one

_CREATING = frozenset({Action.CREATE, Action.CLONE})


def _guard_guest(
    conn: sqlite3.Connection,
    req: SubmitRequest,
    *,
    now: float,
    create_fingerprint: Mapping[str, str] | None,
) -> GuestRecord:
    """The submission rule: create/clone needs a free vmid (a new row is recorded
    ``native``; an existing row is never changed here); anything else needs a managed guest
    on the node and of the kind its row says. Raises (nothing is written)."""
    vmid = req.guest.vmid
    guest = load_guest(conn, vmid)
    if Action(req.action) not in _CREATING:
        if guest is None or not guest.managed:
            raise not_managed(vmid, guest.origin if guest is not None else None)
        check_placement(guest, node=req.guest.node, kind=str(req.guest.kind))
        return guest
    fingerprint = dict(create_fingerprint or {})
    if guest is None:
        return insert_guest(
            conn,
            GuestRecord(
                vmid=vmid,
                node=req.guest.node,
                kind=req.guest.kind,
                origin=GuestOrigin.NATIVE,
                fingerprint=fingerprint,
                created_at=now,
                updated_at=now,
            ),
        )
    conflict = creation_conflict(guest, fingerprint)
    if conflict is not None:
        raise PolicyRefused("vmid_in_use", conflict)
    return guest


class OpGuardVerbs:
    """Mixed into :class:`~lifecycled.journal.Journal`."""

    _store: Store

    async def submit_guest_op(
        self,
        req: SubmitRequest,
        *,
        now: float,
        desired: DesiredState | None = None,
        create_fingerprint: Mapping[str, str] | None = None,
        generation: int = 0,
    ) -> SubmitResult:
        """Journal an op for a guest under the ownership rule, and set the guest's desired
        state to ``desired`` — in the same transaction.

        A key whose op is in flight or succeeded deduplicates before any guest check (the
        client's retry gets its op back); a new or re-armed op needs a managed guest on its
        row's node and kind, except create/clone, which needs a free vmid and records a new
        one as ``native`` (an existing row changes only when the create succeeds).
        """
        params_json = canonical_json(req.params)

        def unit(conn: sqlite3.Connection) -> SubmitResult:
            if req.idempotency_key is not None:
                row = fetch_one(
                    conn,
                    f"SELECT {OP_COLUMNS} FROM ops WHERE idempotency_key = ?",
                    (req.idempotency_key,),
                )
                if row is not None:
                    existing = op_from_row(row)
                    if not units.same_request(existing, req, params_json):
                        raise units.conflict(existing)
                    if existing.state not in REARMABLE:
                        return SubmitResult(op=existing, deduplicated=True, rearmed=False)
            guest = _guard_guest(conn, req, now=now, create_fingerprint=create_fingerprint)
            result = units.submit(conn, req, now=now)
            if desired is not None and guest.desired_state is not desired:
                update_guest(
                    conn,
                    guest.vmid,
                    {
                        "desired_state": desired,
                        "desired_generation": max(generation, guest.desired_generation + 1),
                    },
                    now=now,
                )
                cancel_superseded(conn, guest.vmid, desired, now=now)
            elif generation > guest.desired_generation:  # the shared record moved on (§7)
                update_guest(conn, guest.vmid, {"desired_generation": generation}, now=now)
            return result

        return await self._store.write(unit)

    async def enqueue_reconcile(
        self, req: SubmitRequest, *, now: float, generation: int, after: int | None
    ) -> Op | None:
        """Journal a reconcile op unless the situation changed since the plan was made: the
        guest must still be managed at ``generation``, have no open op, and its latest
        reconcile op must still be ``after``. ``None`` when nothing was journaled."""

        def unit(conn: sqlite3.Connection) -> Op | None:
            guest = load_guest(conn, req.guest.vmid)
            if guest is None or not guest.managed or guest.desired_generation != generation:
                return None
            if open_ops(conn, guest.vmid):
                return None
            latest = fetch_one(
                conn,
                "SELECT max(id) AS id FROM ops WHERE vmid = ? AND origin = 'reconcile'",
                (guest.vmid,),
            )
            if (latest["id"] if latest is not None else None) != after:
                return None
            result = units.submit(conn, req, now=now)
            return None if result.deduplicated else result.op

        return await self._store.write(unit)

    async def defer(
        self,
        op_id: int,
        *,
        now: float,
        next_attempt_at: float,
        reason: str,
        child: SubmitRequest | None = None,
    ) -> tuple[Op, Op | None]:
        """Put a claimed op back to pending without counting the attempt (nothing was sent),
        journaling ``child`` first — the op a terminate waits for. Returns both ops."""

        def unit(conn: sqlite3.Connection) -> tuple[Op, Op | None]:
            op = units.load(conn, op_id)
            change = step(op, Verb.DEFER, now=now, next_attempt_at=next_attempt_at)
            if isinstance(change, Refused):
                raise InvalidTransition(f"op {op.id} is {op.state}: {change.reason}")
            child_op = units.submit(conn, child, now=now).op if child else None
            return units.persist(conn, change, reason=reason), child_op

        return await self._store.write(unit)

    async def soft_delete(self, op_id: int, *, now: float, reason: str, audit: AuditRecord) -> Op:
        """Terminate of an adopted guest: the op succeeds with no Proxmox call, the guest is
        released (kept, untouched) and the decision audited — one transaction."""

        def unit(conn: sqlite3.Connection) -> Op:
            op = units.load(conn, op_id)
            done = units.transition(conn, op, Verb.SUCCEED, now=now, reason=reason)
            update_guest(
                conn,
                op.guest.vmid,
                {"origin": GuestOrigin.RELEASED, "released_at": now, "desired_state": None},
                now=now,
            )
            cancel_superseded(conn, op.guest.vmid, None, now=now)
            insert_audit(conn, audit)
            return done

        return await self._store.write(unit)

    async def note_stuck(self, op_id: int, *, now: float, reason: str) -> bool:
        """Append a history row saying why an in-flight op is stuck (its state is unchanged;
        ``updated_at`` moves, so the janitor looks again only after another ``stale_after``).
        False when the op is no longer in flight."""

        def unit(conn: sqlite3.Connection) -> bool:
            op = units.load(conn, op_id)
            change = step(op, Verb.NOTE_STUCK, now=now)
            if isinstance(change, Refused):
                return False
            units.persist(conn, change, reason=reason)
            return True

        return await self._store.write(unit)

    # --- reads for reconcile and the policy ------------------------------------------------

    async def open_ops_by_vmid(self) -> dict[int, list[Op]]:
        """Every pending or in-flight op, grouped by guest."""
        found = await self._read(f"SELECT {OP_COLUMNS} FROM ops WHERE phase IN (1, 2) ORDER BY id")
        grouped: dict[int, list[Op]] = defaultdict(list)
        for row in found:
            op = op_from_row(row)
            grouped[op.guest.vmid].append(op)
        return dict(grouped)

    async def latest_reconcile_ops(self) -> dict[int, Op]:
        """Each guest's most recent reconcile op."""
        sql = (
            f"SELECT {OP_COLUMNS} FROM ops WHERE id IN "
            "(SELECT max(id) FROM ops WHERE origin = 'reconcile' GROUP BY vmid)"
        )
        return {op.guest.vmid: op for op in map(op_from_row, await self._read(sql))}

    async def config_changes(self) -> dict[int, float]:
        """When lifecycled last changed each guest's config (a succeeded configure/resize)."""
        sql = (
            "SELECT vmid, max(finished_at) AS at FROM ops WHERE state = 'succeeded' "
            "AND action IN ('configure', 'resize') GROUP BY vmid"
        )
        return {int(r["vmid"]): float(r["at"]) for r in await self._read(sql)}

    async def op_actor(self, op_id: int) -> str:
        """Who submitted the op (``api:<name>``, ``cli``, ``reconcile``)."""
        found = await self._read("SELECT actor FROM ops WHERE id = ?", (op_id,))
        return str(found[0]["actor"]) if found else "unknown"

    async def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        return await self._store.rows(sql, params)
