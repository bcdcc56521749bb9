"""Guest rows: the column list, the named constructor, and the small SQL units on one row.

Every function here runs inside the caller's transaction (a unit of :meth:`Store.write`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from typing import Any

from lifecycled.domain.guests import DesiredState, GuestOrigin, GuestRecord, ObservedState
from lifecycled.domain.lifecycle import Verb
from lifecycled.domain.op import GuestKind, Op, Origin, canonical_json
from lifecycled.domain.states import OpState
from lifecycled.errors import NotFound
from lifecycled.journal.rows import OP_COLUMNS, op_from_row
from lifecycled.journal.store import fetch_all, fetch_one
from lifecycled.journal.units import transition

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
    return json.loads(value) if value else None


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)


def guest_from_row(row: sqlite3.Row) -> GuestRecord:
    """A :class:`GuestRecord` from a row selected with :data:`GUEST_COLUMNS`."""
    desired = row["desired_state"]
    observed = row["observed_state"]
    return GuestRecord(
        vmid=int(row["vmid"]),
        node=str(row["node"]),
        kind=GuestKind(row["kind"]),
        origin=GuestOrigin(row["origin"]),
        name=row["name"],
        desired_state=DesiredState(desired) if desired is not None else None,
        desired_generation=int(row["desired_generation"]),
        observed_state=ObservedState(observed) if observed is not None else None,
        observed_at=_float(row["observed_at"]),
        lock=row["lock"],
        ha_managed=bool(row["ha_managed"]),
        template=bool(row["template"]),
        protected=bool(row["protected"]),
        fingerprint=_json(row["fingerprint"]) or {},
        config_snapshot=_json(row["config_snapshot"]),
        config_digest=row["config_digest"],
        snapshot_at=_float(row["snapshot_at"]),
        observed_digest=row["observed_digest"],
        digest_checked_at=_float(row["digest_checked_at"]),
        resources=_json(row["resources"]),
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
        adopted_at=_float(row["adopted_at"]),
        released_at=_float(row["released_at"]),
        lost_at=_float(row["lost_at"]),
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


def update_guest(
    conn: sqlite3.Connection, vmid: int, changes: Mapping[str, Any], *, now: float
) -> GuestRecord:
    """Set ``changes`` (and ``updated_at``) on the guest's row; the row after the change."""
    sets = {**changes, "updated_at": now}
    unknown = set(sets) - _SETTABLE
    if unknown:
        raise ValueError(f"not a settable guests column: {sorted(unknown)}")
    assignments = ", ".join(f"{c} = ?" for c in sets)
    row = fetch_one(
        conn,
        f"UPDATE guests SET {assignments} WHERE vmid = ? RETURNING {GUEST_COLUMNS}",
        [*(_encode(c, v) for c, v in sets.items()), vmid],
    )
    if row is None:
        raise NotFound(f"guest {vmid} is not known to lifecycled")
    return guest_from_row(row)


def open_ops(conn: sqlite3.Connection, vmid: int) -> list[Op]:
    """The guest's pending and in-flight ops, oldest first."""
    found = fetch_all(
        conn,
        f"SELECT {OP_COLUMNS} FROM ops WHERE vmid = ? AND phase IN (1, 2) ORDER BY id",
        (vmid,),
    )
    return [op_from_row(r) for r in found]


def cancel_superseded(
    conn: sqlite3.Connection, vmid: int, desired: DesiredState | None, *, now: float
) -> list[int]:
    """Cancel the guest's pending reconcile ops whose target is no longer desired."""
    from lifecycled.domain.guests import desired_for

    cancelled = []
    for op in open_ops(conn, vmid):
        if (
            op.state is OpState.PENDING
            and op.origin is Origin.RECONCILE
            and desired_for(op.action) != desired
        ):
            transition(
                conn,
                op,
                Verb.CANCEL,
                now=now,
                reason=f"superseded: desired state is now {desired or 'unset'}",
            )
            cancelled.append(op.id)
    return cancelled


def snapshot_json(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config snapshot as stored (a canonical copy)."""
    result: dict[str, Any] = json.loads(canonical_json(dict(config)))
    return result
