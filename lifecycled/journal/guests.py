"""Guests: their rows, the :class:`Guests` part (ownership, desired state, observations,
drift — SPEC §1, §3), and the op writes guarded by a guest's row.

Ownership changes only through :meth:`Guests.take_guest` (manage, adopt, or
``--manage-discovered``) and :meth:`Guests.release_guest`, each audited in the same
transaction. Observed state is only written by :meth:`Guests.apply_observations` and the
digest verbs, from Proxmox reads; they never touch the desired state.

The guarded op writes (:meth:`Guests.submit_guest_op`, :meth:`Guests.enqueue_reconcile`,
:meth:`Guests.soft_delete`) are each one transaction, so the check (is the guest managed?
is an op already open?) and the write it allows cannot be separated by another writer,
even in another process.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from lifecycled.audit import AuditRecord
from lifecycled.domain.actions import Action
from lifecycled.domain.guests import (
    CAPTURED,
    MANAGED_ORIGINS,
    SUPERSEDABLE_ORIGIN,
    DesiredState,
    GuestFacts,
    GuestHead,
    GuestOrigin,
    GuestRecord,
    Observation,
    ObservedState,
    check_placement,
    creation_conflict,
    listing_hash,
    observed_hash,
    retake,
)
from lifecycled.domain.lifecycle import Verb
from lifecycled.domain.node import NodeState
from lifecycled.domain.op import GuestKind, Op, canonical_json
from lifecycled.domain.ownership import after_own_write, digest_read
from lifecycled.domain.states import REARMABLE
from lifecycled.errors import InvalidTransition, NotFound, PolicyRefused, ValidationError
from lifecycled.journal import ops
from lifecycled.journal.events import insert_audit
from lifecycled.journal.ops import (
    KINDS,
    OP_COLUMNS,
    OP_WIDTH,
    SUPERSEDABLE_EXISTS,
    SubmitRequest,
    SubmitResult,
    cancel_superseded,
    op_from_row,
    open_ops,
)
from lifecycled.journal.store import Part, fetch_one

GUEST_COLUMNS = (
    "vmid, node, kind, origin, name, desired_state, desired_generation, observed_state, "
    "observed_at, lock, ha_managed, template, protected, fingerprint, config_snapshot, "
    "config_digest, snapshot_at, observed_digest, digest_checked_at, resources, created_at, "
    "updated_at, adopted_at, released_at, lost_at"
)

#: Columns a guest update may set (JSON columns take Python values and are encoded here).
_SETTABLE = frozenset(GUEST_COLUMNS.replace(" ", "").split(",")) - {"vmid", "created_at"}
_JSON = frozenset({"fingerprint", "config_snapshot", "resources"})
_BOOL = frozenset({"ha_managed", "template", "protected"})


def _json(value: str | None) -> Any:
    if value == "{}":  # most fingerprints and snapshots read back empty
        return {}
    return json.loads(value) if value else None


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)


_GUEST_ORIGINS = {origin.value: origin for origin in GuestOrigin}
_DESIRED = {state.value: state for state in DesiredState}
_OBSERVED = {state.value: state for state in ObservedState}
_GUEST_WIDTH = GUEST_COLUMNS.count(",") + 1


def guest_from_row(row: sqlite3.Row) -> GuestRecord:
    """A :class:`GuestRecord` from a row selected with :data:`GUEST_COLUMNS` (first, in that
    order).

    Positional, with the enums looked up in dicts (as ``ops.op_from_row``): every
    submission's ownership guard builds one.
    """
    (
        vmid,
        node,
        kind,
        origin,
        name,
        desired,
        desired_generation,
        observed,
        observed_at,
        lock,
        ha_managed,
        template,
        protected,
        fingerprint,
        config_snapshot,
        config_digest,
        snapshot_at,
        observed_digest,
        digest_checked_at,
        resources,
        created_at,
        updated_at,
        adopted_at,
        released_at,
        lost_at,
    ) = tuple(row)[:_GUEST_WIDTH]
    return GuestRecord(
        vmid=int(vmid),
        node=str(node),
        kind=KINDS[kind],
        origin=_GUEST_ORIGINS[origin],
        name=name,
        desired_state=_DESIRED[desired] if desired is not None else None,
        desired_generation=int(desired_generation),
        observed_state=_OBSERVED[observed] if observed is not None else None,
        observed_at=_float(observed_at),
        lock=lock,
        ha_managed=bool(ha_managed),
        template=bool(template),
        protected=bool(protected),
        fingerprint=_json(fingerprint) or {},
        config_snapshot=_json(config_snapshot),
        config_digest=config_digest,
        snapshot_at=_float(snapshot_at),
        observed_digest=observed_digest,
        digest_checked_at=_float(digest_checked_at),
        resources=_json(resources),
        created_at=float(created_at),
        updated_at=float(updated_at),
        adopted_at=_float(adopted_at),
        released_at=_float(released_at),
        lost_at=_float(lost_at),
    )


def _encode(column: str, value: Any) -> Any:
    if value is None:
        return None
    if column in _JSON:
        return json.dumps(value, sort_keys=True, default=str)
    if column in _BOOL:
        return int(bool(value))
    if isinstance(value, GuestKind | GuestOrigin | DesiredState | ObservedState):
        return str(value)
    return value


def load_guest(conn: sqlite3.Connection, vmid: int) -> GuestRecord | None:
    row = fetch_one(conn, f"SELECT {GUEST_COLUMNS} FROM guests WHERE vmid = ?", (vmid,))
    return guest_from_row(row) if row is not None else None


def require_guest(conn: sqlite3.Connection, vmid: int) -> GuestRecord:
    guest = load_guest(conn, vmid)
    if guest is None:
        raise NotFound(f"guest {vmid} is not known to lifecycled")
    return guest


def insert_guest(conn: sqlite3.Connection, rec: GuestRecord) -> GuestRecord:
    """Insert ``rec`` as a new row (its vmid must be free)."""
    columns = GUEST_COLUMNS.replace(" ", "").split(",")
    values = [_encode(c, getattr(rec, c)) for c in columns]
    placeholders = ", ".join("?" for _ in columns)
    row = fetch_one(
        conn,
        f"INSERT INTO guests ({GUEST_COLUMNS}) VALUES ({placeholders}) RETURNING {GUEST_COLUMNS}",
        values,
    )
    assert row is not None
    return guest_from_row(row)


@functools.lru_cache(maxsize=64)
def _guest_set_sql(columns: tuple[str, ...]) -> str:
    """The UPDATE for this set of guest columns (a handful of shapes, built once each)."""
    unknown = set(columns) - _SETTABLE
    if unknown:
        raise ValueError(f"not a settable guests column: {sorted(unknown)}")
    assignments = ", ".join(f"{c} = ?" for c in columns)
    return f"UPDATE guests SET {assignments} WHERE vmid = ?"


def _guest_update(vmid: int, changes: Mapping[str, Any], now: float) -> tuple[str, list[Any]]:
    """The UPDATE setting ``changes`` (and ``updated_at``) on the guest's row, and its
    parameters."""
    sets = {**changes, "updated_at": now}
    params = [_encode(c, v) for c, v in sets.items()]
    params.append(vmid)
    return _guest_set_sql(tuple(sets)), params


def update_guest(
    conn: sqlite3.Connection, vmid: int, changes: Mapping[str, Any], *, now: float
) -> GuestRecord:
    """Set ``changes`` (and ``updated_at``) on the guest's row; the row after the change."""
    sql, params = _guest_update(vmid, changes, now)
    row = fetch_one(conn, f"{sql} RETURNING {GUEST_COLUMNS}", params)
    if row is None:
        raise NotFound(f"guest {vmid} is not known to lifecycled")
    return guest_from_row(row)


def set_guest_columns(
    conn: sqlite3.Connection, vmid: int, changes: Mapping[str, Any], *, now: float
) -> None:
    """:func:`update_guest` for a caller that does not need the row back (no ``RETURNING``
    and no record to build: the submission path)."""
    sql, params = _guest_update(vmid, changes, now)
    if conn.execute(sql, params).rowcount != 1:
        raise NotFound(f"guest {vmid} is not known to lifecycled")


def snapshot_json(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config snapshot as stored (a canonical copy)."""
    result: dict[str, Any] = json.loads(canonical_json(dict(config)))
    return result


MAX_PAGE = 1000

#: The managed origins as an SQL list (the set is the domain's).
_MANAGED_SQL = ", ".join(f"'{o}'" for o in sorted(MANAGED_ORIGINS))


@attrs.frozen(kw_only=True)
class GuestPage:
    """One page of guests in vmid order; pass ``next_cursor`` (a vmid) for the next page."""

    items: list[GuestRecord]
    next_cursor: int | None


@attrs.frozen(kw_only=True)
class Ownership:
    """What an ownership request did: the guest after it, and whether anything changed."""

    guest: GuestRecord
    changed: bool


def not_managed(vmid: int, origin: GuestOrigin | None) -> PolicyRefused:
    what = "unknown to lifecycled" if origin is None else f"{origin}, not managed"
    return PolicyRefused(
        "guest_not_managed",
        f"guest {vmid} is {what}: manage or adopt it first (lifecycled guests manage|adopt {vmid})",
    )


#: A :class:`GuestHead`'s columns, in its fields' order.
_HEAD_COLUMNS = ("vmid", "node", "kind", "origin", "desired_state", "desired_generation")
_HEAD_WIDTH = len(_HEAD_COLUMNS)
_HEAD_SELECT = ", ".join(f"g.{c}" for c in _HEAD_COLUMNS)


def _head(values: Sequence[Any]) -> GuestHead | None:
    """A :class:`GuestHead` from its columns' values (``None`` when the row is absent)."""
    vmid, node, kind, origin, desired, generation = values
    if vmid is None:
        return None
    return GuestHead(
        vmid=int(vmid),
        node=str(node),
        kind=KINDS[kind],
        origin=_GUEST_ORIGINS[origin],
        desired_state=_DESIRED[desired] if desired is not None else None,
        desired_generation=int(generation),
    )


#: The submission unit's one read of an existing guest's op (:func:`submission_read`): the
#: key's op (its columns first, as ``op_from_row`` reads them), the guest's head, and
#: whether the guest has an op a new desired state may supersede — each at most one row,
#: one statement. The supersedable test is ``cancel_superseded``'s own condition.
_SUBMISSION_READ = (
    "SELECT "
    + ", ".join(f"o.{c.strip()}" for c in OP_COLUMNS.split(","))
    + ", "
    + _HEAD_SELECT
    + f", EXISTS ({SUPERSEDABLE_EXISTS}) FROM (SELECT 1) AS one"
    " LEFT JOIN ops AS o ON o.idempotency_key = ?"
    " LEFT JOIN guests AS g ON g.vmid = ?"
)
#: The same without a key (no op is looked up).
_SUBMISSION_READ_NO_KEY = (
    "SELECT "
    + ", ".join(["NULL"] * OP_WIDTH)
    + ", "
    + _HEAD_SELECT
    + f", EXISTS ({SUPERSEDABLE_EXISTS}) FROM (SELECT 1) AS one"
    " LEFT JOIN guests AS g ON g.vmid = ?"
)


@attrs.frozen(kw_only=True)
class SubmissionRead:
    """What a submission unit reads of an existing guest's op, in one statement."""

    existing: Op | None
    head: GuestHead | None
    #: Whether the guest had a supersedable op when the unit read it.
    supersedable: bool


def submission_read(conn: sqlite3.Connection, key: str | None, vmid: int) -> SubmissionRead:
    """The key's op (``None`` key: not looked up), the guest's head and whether it has a
    supersedable op, in one statement inside the submission's transaction."""
    if key is None:
        row = fetch_one(conn, _SUBMISSION_READ_NO_KEY, (vmid, vmid))
    else:
        row = fetch_one(conn, _SUBMISSION_READ, (vmid, key, vmid))
    assert row is not None  # one row always (the joins are LEFT joins on one row)
    values = tuple(row)
    return SubmissionRead(
        existing=None if values[0] is None else op_from_row(values),
        head=_head(values[OP_WIDTH : OP_WIDTH + _HEAD_WIDTH]),
        supersedable=bool(values[-1]),
    )


#: :meth:`Guests.submission_context`: the key's op (its columns first, as ``op_from_row``
#: reads them), the guest's row, the served node's state — each at most one row (unique
#: key, primary keys), one statement, so one snapshot.
_SUBMISSION_CONTEXT = (
    "SELECT "
    + ", ".join(f"o.{c.strip()}" for c in OP_COLUMNS.split(","))
    + ", "
    + _HEAD_SELECT
    + ", n.state FROM (SELECT 1) AS one"
    " LEFT JOIN ops AS o ON o.idempotency_key = ?"
    " LEFT JOIN guests AS g ON g.vmid = ?"
    " LEFT JOIN node_state AS n ON n.node = ?"
)
#: The same without a key (no op is looked up).
_SUBMISSION_CONTEXT_NO_KEY = (
    "SELECT "
    + ", ".join(["NULL"] * OP_WIDTH)
    + ", "
    + _HEAD_SELECT
    + ", n.state FROM (SELECT 1) AS one"
    " LEFT JOIN guests AS g ON g.vmid = ?"
    " LEFT JOIN node_state AS n ON n.node = ?"
)


@attrs.frozen(kw_only=True)
class SubmissionContext:
    """What a submission on a journaled guest reads before its write, read at once."""

    #: The guest's row, its head only (``None``: the journal has none).
    guest: GuestHead | None
    #: The served node's state (``None``: the node is not registered).
    served_state: NodeState | None
    #: The op holding the submission's key (``None``: none, or no key was asked for).
    existing: Op | None


class Guests(Part):
    """Guest verbs, and the op writes guarded by a guest's row (Journal delegates to them)."""

    # --- reads ----------------------------------------------------------------------------

    async def find_guest(self, vmid: int) -> GuestRecord | None:
        row = await self._store.one(f"SELECT {GUEST_COLUMNS} FROM guests WHERE vmid = ?", (vmid,))
        return guest_from_row(row) if row is not None else None

    async def submission_context(
        self, vmid: int, *, served: str, key: str | None
    ) -> SubmissionContext:
        """The guest's row (its head: no JSON column is decoded), the served node's state
        and the op holding ``key`` (not read when ``None``) in one statement: what
        :meth:`find_guest`, ``Nodes.get_node`` and ``OpQueries.by_key`` would read, in one
        thread hop instead of three."""
        if key is None:
            (row,) = await self._store.rows(_SUBMISSION_CONTEXT_NO_KEY, (vmid, served))
        else:
            (row,) = await self._store.rows(_SUBMISSION_CONTEXT, (key, vmid, served))
        values = tuple(row)
        state = values[-1]
        return SubmissionContext(
            guest=_head(values[OP_WIDTH : OP_WIDTH + _HEAD_WIDTH]),
            served_state=None if state is None else NodeState(state),
            existing=None if values[0] is None else op_from_row(row),
        )

    async def guest_safety(self, vmid: int) -> GuestFacts:
        """The guest's origin, fingerprint and protection (what the policy reads; no other
        JSON column is decoded); empty facts (``origin=None``) when the journal has no row."""
        row = await self._store.one(
            "SELECT origin, fingerprint, protected FROM guests WHERE vmid = ?", (vmid,)
        )
        if row is None:
            return GuestFacts()
        origin, fingerprint, protected = tuple(row)
        return GuestFacts(
            origin=_GUEST_ORIGINS[origin],
            fingerprint=_json(fingerprint) or {},
            protected=bool(protected),
        )

    async def get_guest(self, vmid: int) -> GuestRecord:
        """The guest's row; :class:`~lifecycled.errors.NotFound` when lifecycled never saw it."""
        guest = await self.find_guest(vmid)
        if guest is None:
            raise NotFound(f"guest {vmid} is not known to lifecycled")
        return guest

    async def all_guests(self) -> list[GuestRecord]:
        found = await self._store.rows(f"SELECT {GUEST_COLUMNS} FROM guests ORDER BY vmid")
        return [guest_from_row(r) for r in found]

    async def list_guests(
        self,
        *,
        origin: GuestOrigin | None = None,
        observed: ObservedState | None = None,
        node: str | None = None,
        drifted: bool | None = None,
        limit: int = 50,
        cursor: int | None = None,
    ) -> GuestPage:
        """Guests in vmid order, filtered; ``cursor`` is the last vmid of the previous page."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValidationError(
                f"limit must be between 1 and {MAX_PAGE}, not {limit}", {"limit": "out of range"}
            )
        conds: list[str] = []
        params: list[Any] = []
        for column, value in (("origin", origin), ("observed_state", observed), ("node", node)):
            if value is not None:
                conds.append(f"{column} = ?")
                params.append(str(value))
        if drifted is not None:
            test = (
                f"origin IN ({_MANAGED_SQL}) AND config_digest IS NOT NULL "
                "AND observed_digest IS NOT NULL AND observed_digest <> config_digest"
            )
            conds.append(f"({test})" if drifted else f"NOT ({test})")
        if cursor is not None:
            conds.append("vmid > ?")
            params.append(cursor)
        where = f" WHERE {' AND '.join(conds)}" if conds else ""
        sql = f"SELECT {GUEST_COLUMNS} FROM guests{where} ORDER BY vmid LIMIT ?"
        params.append(limit + 1)
        found = await self._store.rows(sql, params)
        items = [guest_from_row(r) for r in found[:limit]]
        more = len(found) > limit
        return GuestPage(items=items, next_cursor=items[-1].vmid if more and items else None)

    async def guest_hashes(self) -> tuple[str, str]:
        """``(observed_hash, listing_hash)`` of the whole guest set (heartbeat, ETag)."""
        guests = await self.all_guests()
        return observed_hash(guests), listing_hash(guests)

    async def guest_counts(
        self, *, nodes: Sequence[str] | None = None
    ) -> dict[tuple[str, str], int]:
        """How many guests per (origin, observed state); never-observed rows count as unknown.
        ``nodes``: only guests on these nodes (so a cluster counts each guest once, SPEC §7)."""
        where = ""
        params: list[Any] = []
        if nodes is not None:
            where = f" WHERE node IN ({', '.join('?' for _ in nodes)})"
            params = list(nodes)
        found = await self._store.rows(
            "SELECT origin, COALESCE(observed_state, 'unknown') AS observed, count(*) AS n "
            f"FROM guests{where} GROUP BY 1, 2",
            params,
        )
        return {(r["origin"], r["observed"]): int(r["n"]) for r in found}

    # --- ownership --------------------------------------------------------------------------

    async def take_guest(self, rec: GuestRecord, *, audit: AuditRecord, now: float) -> Ownership:
        """Manage (native) or adopt a guest: record its identity, snapshot and status.

        Taking a guest that already has this origin changes nothing but a stale identity
        (its snapshot is kept, so drift stays visible); a row whose fingerprint does not name
        the guest, or another origin, is recorded anew. Every change is audited, saying why
        (:func:`~lifecycled.domain.guests.retake`).
        """
        if not rec.origin.managed:
            raise ValueError("take_guest records a native or adopted guest")

        def unit(conn: sqlite3.Connection) -> Ownership:
            existing = load_guest(conn, rec.vmid)
            if existing is None:
                guest = insert_guest(conn, rec)
                insert_audit(conn, audit)
                return Ownership(guest=guest, changed=True)
            columns, why = retake(existing, rec)
            if not columns:
                return Ownership(guest=existing, changed=False)
            changes = {c: getattr(rec, c) for c in columns}
            if columns == CAPTURED:
                changes.update(released_at=None, lost_at=None)
                if existing.desired_state != rec.desired_state:
                    changes["desired_state"] = rec.desired_state
                    changes["desired_generation"] = max(
                        rec.desired_generation, existing.desired_generation + 1
                    )
            guest = update_guest(conn, rec.vmid, changes, now=now)
            if columns == CAPTURED:
                cancel_superseded(conn, rec.vmid, guest.desired_state, now=now)
            insert_audit(conn, attrs.evolve(audit, reason=f"{audit.reason}; {why}"))
            return Ownership(guest=guest, changed=True)

        return await self._store.write(unit)

    async def release_guest(
        self, vmid: int, *, audit: AuditRecord, now: float, generation: int = 0
    ) -> Ownership:
        """Release a managed guest: kept as ``released``, observed only, never acted on.

        Pending reconcile ops of the guest are cancelled; any other pending op is refused by
        the policy when it is claimed. Releasing a released guest changes nothing.
        """

        def unit(conn: sqlite3.Connection) -> Ownership:
            guest = require_guest(conn, vmid)
            if guest.origin is GuestOrigin.RELEASED:
                return Ownership(guest=guest, changed=False)
            if not guest.managed:
                raise InvalidTransition(
                    f"guest {vmid} is {guest.origin}: only a managed guest can be released"
                )
            guest = update_guest(
                conn,
                vmid,
                {
                    "origin": GuestOrigin.RELEASED,
                    "released_at": now,
                    "desired_state": None,
                    "desired_generation": max(generation, guest.desired_generation + 1),
                },
                now=now,
            )
            cancel_superseded(conn, vmid, None, now=now)
            insert_audit(conn, audit)
            return Ownership(guest=guest, changed=True)

        return await self._store.write(unit)

    async def set_desired(
        self, vmid: int, state: DesiredState, *, now: float, generation: int = 0
    ) -> GuestRecord:
        """Set a managed guest's desired power state; a change bumps ``desired_generation``
        and cancels pending reconcile ops aiming elsewhere."""

        def unit(conn: sqlite3.Connection) -> GuestRecord:
            guest = require_guest(conn, vmid)
            if not guest.managed:
                raise not_managed(vmid, guest.origin)
            if guest.desired_state is state:
                return guest
            guest = update_guest(
                conn,
                vmid,
                {
                    "desired_state": state,
                    "desired_generation": max(generation, guest.desired_generation + 1),
                },
                now=now,
            )
            cancel_superseded(conn, vmid, state, now=now)
            return guest

        return await self._store.write(unit)

    async def sync_ownership(
        self, vmid: int, *, changes: Mapping[str, Any], fresh: GuestRecord, now: float
    ) -> GuestRecord:
        """Refresh the cached ownership of a guest from the cluster's record (its tags): the
        row gets ``changes`` (pending reconcile ops no longer aiming at its desired state are
        cancelled); a guest this journal never saw is inserted as ``fresh``."""

        def unit(conn: sqlite3.Connection) -> GuestRecord:
            existing = load_guest(conn, vmid)
            if existing is None:
                guest = insert_guest(conn, fresh)
                if guest.managed:  # arrived from a node this journal never saw it on
                    conn.execute(
                        "INSERT INTO outbox (vmid, kind, payload, created_at) VALUES (?, ?, ?, ?)",
                        (vmid, "guest.moved", _moved_payload(guest, None), now),
                    )
                return guest
            guest = update_guest(conn, vmid, dict(changes), now=now)
            cancel_superseded(conn, vmid, guest.desired_state, now=now)
            return guest

        return await self._store.write(unit)

    async def follow_digest(
        self, vmid: int, over_digest: str, over: Mapping[str, Any], tags: str, *, now: float
    ) -> None:
        """lifecycled's own tag write over the config it read (``over_digest``, ``over``):
        the drift baseline follows it without a read (:func:`after_own_write`)."""

        def unit(conn: sqlite3.Connection) -> None:
            guest = load_guest(conn, vmid)
            changes = after_own_write(guest, over_digest, over, tags) if guest else {}
            if changes:
                update_guest(conn, vmid, changes, now=now)

        await self._store.write(unit)

    # --- observations (Proxmox reads only) -------------------------------------------------

    async def apply_observations(
        self,
        *,
        now: float,
        seen: Sequence[Observation] = (),
        discovered: Sequence[Observation] = (),
        missing: Sequence[int] = (),
        lost: Sequence[AuditRecord] = (),
        found: Sequence[tuple[Observation, AuditRecord]] = (),
    ) -> None:
        """Write one reconcile pass's observations in one transaction.

        ``seen``: known guests as Proxmox shows them; ``discovered``: new unmanaged rows;
        ``missing``: gone as expected; ``lost``: managed guests gone unexpectedly (audited,
        never deleted); ``found``: LOST guests back with their fingerprint (audited).
        """

        def unit(conn: sqlite3.Connection) -> None:
            for obs in seen:
                update_guest(conn, obs.vmid, _observed_columns(obs, now), now=now)
            for obs in discovered:
                if load_guest(conn, obs.vmid) is None:
                    insert_guest(conn, discovered_record(obs, now))
            for vmid in missing:
                update_guest(
                    conn,
                    vmid,
                    {"observed_state": ObservedState.MISSING, "observed_at": now, "lock": None},
                    now=now,
                )
            for rec in lost:
                assert rec.vmid is not None
                update_guest(
                    conn,
                    rec.vmid,
                    {"observed_state": ObservedState.LOST, "observed_at": now, "lost_at": now},
                    now=now,
                )
                insert_audit(conn, rec)
            for obs, rec in found:
                changes = {**_observed_columns(obs, now), "lost_at": None}
                update_guest(conn, obs.vmid, changes, now=now)
                insert_audit(conn, rec)

        await self._store.write(unit)

    async def record_digests(
        self, reads: Mapping[int, tuple[str, Mapping[str, Any]]], *, now: float
    ) -> list[int]:
        """Each guest's latest config read (digest, values), as :func:`digest_read` takes it
        against the row as it is now; the vmids among them that are drifted after it."""

        def unit(conn: sqlite3.Connection) -> list[int]:
            drifted: list[int] = []
            for vmid, (digest, values) in reads.items():
                guest = load_guest(conn, vmid)
                if guest is None:
                    continue
                changes = {**digest_read(guest, digest, values), "digest_checked_at": now}
                if update_guest(conn, vmid, changes, now=now).drifted:
                    drifted.append(vmid)
            return drifted

        return await self._store.write(unit)

    async def rebaseline(
        self,
        vmid: int,
        config: Mapping[str, Any],
        digest: str,
        *,
        now: float,
        fingerprint: Mapping[str, str] | None = None,
    ) -> GuestRecord:
        """A new config snapshot: the first one of a guest lifecycled created, or one after
        lifecycled's own config change (neither is drift). ``fingerprint`` completes the
        identity recorded at creation (a VM's ``meta`` ctime is only known afterwards)."""
        changes: dict[str, Any] = {
            "config_snapshot": snapshot_json(config),
            "config_digest": digest,
            "snapshot_at": now,
            "observed_digest": digest,
            "digest_checked_at": now,
        }
        if fingerprint:
            changes["fingerprint"] = dict(fingerprint)
        return await self._store.write(lambda c: update_guest(c, vmid, changes, now=now))

    # --- op writes guarded by the guest's row ----------------------------------------------

    async def submit_guest_op(
        self,
        req: SubmitRequest,
        *,
        now: float,
        desired: DesiredState | None = None,
        create_fingerprint: Mapping[str, str] | None = None,
        generation: int = 0,
        read_key: bool = False,
        existing: Op | None = None,
    ) -> SubmitResult:
        """Journal an op for a guest under the ownership rule, and set the guest's desired
        state to ``desired`` — in the same transaction.

        A key whose op is in flight or succeeded deduplicates before any guest check (the
        client's retry gets its op back); a new or re-armed op needs a managed guest on its
        row's node and kind, except create/clone, which needs a free vmid and records a new
        one as ``native`` (an existing row changes only when the create succeeds).

        The key is looked up once per submission. ``read_key``: the caller already read it
        (:meth:`by_key`) and found ``existing`` — an op in flight or succeeded is answered
        from that read (a deduplication writes nothing), no op makes the insert the only
        check (a key taken meanwhile still deduplicates, conflicts or re-arms there), and
        a re-armable op is read again in the transaction that re-arms it.
        """
        params_json = canonical_json(req.params)
        if read_key and existing is not None and existing.state not in REARMABLE:
            if not ops.same_request(existing, req, params_json):
                raise ops.conflict(existing)
            return SubmitResult(op=existing, deduplicated=True, rearmed=False)
        look_up = req.idempotency_key is not None and (not read_key or existing is not None)
        vmid = req.guest.vmid
        creating = Action(req.action) in _CREATING

        def unit(conn: sqlite3.Connection) -> SubmitResult:
            found: Op | None = None
            head: GuestHead | None = None
            supersedable = True  # unknown: the supersedable ops are read
            if creating:  # the guard may insert the guest's row: the key is read first
                if look_up:
                    assert req.idempotency_key is not None
                    found = ops.by_key(conn, req.idempotency_key)
            else:
                read = submission_read(conn, req.idempotency_key if look_up else None, vmid)
                found, head, supersedable = read.existing, read.head, read.supersedable
            if found is not None:
                if not ops.same_request(found, req, params_json):
                    raise ops.conflict(found)
                if found.state not in REARMABLE:
                    return SubmitResult(op=found, deduplicated=True, rearmed=False)
                supersedable = True  # the re-armed op itself may be one
            if creating:
                guest: GuestRecord | GuestHead = _guard_creation(
                    conn, req, now=now, create_fingerprint=create_fingerprint
                )
            else:
                guest = _guard_head(head, req)
            if found is not None:  # the key's op ended failed/dead-lettered/cancelled
                op = ops.transition(
                    conn, found, Verb.REARM, now=now, reason="re-armed by resubmission"
                )
                result = SubmitResult(op=op, deduplicated=False, rearmed=True)
            else:
                result = ops.submit(conn, req, now=now, params_json=params_json)
                if result.deduplicated:  # the key was taken since the caller's read
                    return result
                if result.rearmed or result.op.origin is SUPERSEDABLE_ORIGIN:
                    supersedable = True
            if desired is not None and guest.desired_state is not desired:
                set_guest_columns(
                    conn,
                    guest.vmid,
                    {
                        "desired_state": desired,
                        "desired_generation": max(generation, guest.desired_generation + 1),
                    },
                    now=now,
                )
                if supersedable:
                    cancel_superseded(conn, guest.vmid, desired, now=now)
            elif generation > guest.desired_generation:  # the shared record moved on (§7)
                set_guest_columns(conn, guest.vmid, {"desired_generation": generation}, now=now)
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
            result = ops.submit(conn, req, now=now)
            return None if result.deduplicated else result.op

        return await self._store.write(unit)

    async def soft_delete(self, op_id: int, *, now: float, reason: str, audit: AuditRecord) -> Op:
        """Terminate of an adopted guest: the op succeeds with no Proxmox call, the guest is
        released (kept, untouched) and the decision audited — one transaction."""

        def unit(conn: sqlite3.Connection) -> Op:
            op = ops.load(conn, op_id)
            done = ops.transition(conn, op, Verb.SUCCEED, now=now, reason=reason)
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


_CREATING = frozenset({Action.CREATE, Action.CLONE})


def _guard_head(head: GuestHead | None, req: SubmitRequest) -> GuestHead:
    """The submission rule for an existing guest's op: a managed guest on the node and of
    the kind its row says (its head is all that reads). Raises (nothing is written)."""
    if head is None or not head.managed:
        raise not_managed(req.guest.vmid, head.origin if head is not None else None)
    check_placement(head, node=req.guest.node, kind=str(req.guest.kind))
    return head


def _guard_creation(
    conn: sqlite3.Connection,
    req: SubmitRequest,
    *,
    now: float,
    create_fingerprint: Mapping[str, str] | None,
) -> GuestRecord:
    """The submission rule for create/clone: a free vmid (a new row is recorded ``native``;
    an existing row is never changed here). Raises (nothing is written)."""
    vmid = req.guest.vmid
    guest = load_guest(conn, vmid)
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


def _moved_payload(guest: GuestRecord, from_node: str | None) -> str:
    """The ``guest.moved`` payload, as the ``outbox_guest_moved`` trigger writes it."""
    import json

    return json.dumps(
        {
            "vmid": guest.vmid,
            "kind": str(guest.kind),
            "origin": str(guest.origin),
            "from_node": from_node,
            "to_node": guest.node,
            "generation": guest.desired_generation,
            "desired_state": str(guest.desired_state) if guest.desired_state else None,
        }
    )


def _observed_columns(obs: Observation, now: float) -> dict[str, Any]:
    return {
        "node": obs.node,
        "name": obs.name,
        "observed_state": obs.observed,
        "observed_at": now,
        "lock": obs.lock,
        "ha_managed": obs.ha_managed,
        "template": obs.template,
    }


def discovered_record(obs: Observation, now: float) -> GuestRecord:
    """The row of an unmanaged guest seen for the first time."""
    return GuestRecord(
        vmid=obs.vmid,
        node=obs.node,
        kind=obs.kind,
        origin=GuestOrigin.DISCOVERED,
        name=obs.name,
        observed_state=obs.observed,
        observed_at=now,
        lock=obs.lock,
        ha_managed=obs.ha_managed,
        template=obs.template,
        created_at=now,
        updated_at=now,
    )
