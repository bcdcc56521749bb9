"""Rows to records: the column lists the journal selects and the named constructors."""

from __future__ import annotations

import json
import sqlite3

from lifecycled.domain.classify import ErrorClass
from lifecycled.domain.op import GuestKind, GuestRef, HistoryEntry, Op, OpError, Origin
from lifecycled.domain.states import OpState

#: The ops columns every op query selects (and ``RETURNING`` returns), in this order.
OP_COLUMNS = (
    "id, idempotency_key, action, node, kind, vmid, params, origin, state, attempts, "
    "next_attempt_at, upid, exitstatus, error_class, error_message, created_at, updated_at, "
    "finished_at, claimed_at, ambiguous_since, dispatched"
)

HISTORY_COLUMNS = "op_id, at, from_state, to_state, reason, attempt, upid"


def _ts(value: float | None) -> float | None:
    # RETURNING yields values before column affinity: an int ``now`` would come back as int.
    return None if value is None else float(value)


def _error(error_class: str | None, message: str | None) -> OpError | None:
    if error_class is None:
        return None
    return OpError(error_class=ErrorClass(error_class), message=message or "")


def op_from_row(row: sqlite3.Row) -> Op:
    """An :class:`Op` from a row selected with :data:`OP_COLUMNS`."""
    return Op(
        id=row["id"],
        idempotency_key=row["idempotency_key"],
        action=row["action"],
        guest=GuestRef(node=row["node"], kind=GuestKind(row["kind"]), vmid=row["vmid"]),
        params=json.loads(row["params"]),
        origin=Origin(row["origin"]),
        state=OpState(row["state"]),
        attempts=row["attempts"],
        next_attempt_at=_ts(row["next_attempt_at"]),
        upid=row["upid"],
        exitstatus=row["exitstatus"],
        error=_error(row["error_class"], row["error_message"]),
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
        finished_at=_ts(row["finished_at"]),
        claimed_at=_ts(row["claimed_at"]),
        ambiguous_since=_ts(row["ambiguous_since"]),
        dispatched=bool(row["dispatched"]),
    )


def history_from_row(row: sqlite3.Row) -> HistoryEntry:
    """A :class:`HistoryEntry` from a row selected with :data:`HISTORY_COLUMNS`."""
    from_state = row["from_state"]
    return HistoryEntry(
        op_id=row["op_id"],
        at=float(row["at"]),
        from_state=OpState(from_state) if from_state is not None else None,
        to_state=OpState(row["to_state"]),
        reason=row["reason"],
        attempt=row["attempt"],
        upid=row["upid"],
    )
