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


_STATES = {state.value: state for state in OpState}
_KINDS = {kind.value: kind for kind in GuestKind}
_ORIGINS = {origin.value: origin for origin in Origin}
_WIDTH = OP_COLUMNS.count(",") + 1


def _error(error_class: str | None, message: str | None) -> OpError | None:
    if error_class is None:
        return None
    return OpError(error_class=ErrorClass(error_class), message=message or "")


def op_from_row(row: sqlite3.Row) -> Op:
    """An :class:`Op` from a row selected with :data:`OP_COLUMNS` (first, in that order).

    Positional, with the enums looked up in dicts: this runs several times per journal write
    and by-name ``sqlite3.Row`` access costs a scan of the column names per field.
    """
    (
        op_id,
        key,
        action,
        node,
        kind,
        vmid,
        params,
        origin,
        state,
        attempts,
        next_attempt_at,
        upid,
        exitstatus,
        error_class,
        error_message,
        created_at,
        updated_at,
        finished_at,
        claimed_at,
        ambiguous_since,
        dispatched,
    ) = tuple(row)[:_WIDTH]
    return Op(
        id=op_id,
        idempotency_key=key,
        action=action,
        guest=GuestRef(node=node, kind=_KINDS[kind], vmid=vmid),
        params={} if params == "{}" else json.loads(params),
        origin=_ORIGINS[origin],
        state=_STATES[state],
        attempts=attempts,
        next_attempt_at=_ts(next_attempt_at),
        upid=upid,
        exitstatus=exitstatus,
        error=_error(error_class, error_message),
        created_at=float(created_at),
        updated_at=float(updated_at),
        finished_at=_ts(finished_at),
        claimed_at=_ts(claimed_at),
        ambiguous_since=_ts(ambiguous_since),
        dispatched=bool(dispatched),
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
