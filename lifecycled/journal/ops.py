"""Ops: the op records, their rows, the op write units and the :class:`Ops` part.

A unit here is a plain function of the writer's ``sqlite3`` connection; it runs in the
journal's writer thread inside a transaction the caller does not see (the group commit of
:meth:`~lifecycled.journal.store.Writer.write`, reference/sqlite-performance.md §1–2). A
unit that raises rolls back only its own changes.

Every state change reads the op, asks :func:`lifecycled.domain.lifecycle.step` what the verb
does to it, and :func:`persist` writes exactly that: the row updated guarded by its current
state (``WHERE id = ? AND state = ?``) and the history row — in the same transaction, so a
crash leaves either both or neither. ``persist`` is the only code that changes an op's row.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import uuid
from collections.abc import Collection
from typing import Any

import attrs

from lifecycled.domain.actions import Action, expected_fingerprint
from lifecycled.domain.classify import ErrorClass
from lifecycled.domain.guests import (
    SUPERSEDABLE_ORIGIN,
    SUPERSEDABLE_STATE,
    DesiredState,
    observed_after,
    superseded,
)
from lifecycled.domain.lifecycle import (
    FINISHING,
    INITIAL,
    REQUIREMENTS,
    TABLE,
    Change,
    Refused,
    Verb,
    error_columns,
    step,
)
from lifecycled.domain.op import (
    GuestKind,
    GuestRef,
    HistoryEntry,
    Op,
    OpError,
    Origin,
    canonical_json,
)
from lifecycled.domain.states import IN_FLIGHT, REARMABLE, TERMINAL, OpState
from lifecycled.errors import Conflict, InvalidTransition, NotFound, UpidTaken
from lifecycled.journal.store import (
    Part,
    fetch_all,
    fetch_one,
    writer_connection,
    written_ops,
)


@attrs.frozen(kw_only=True)
class SubmitRequest:
    """A new op as a client asks for it."""

    #: ``None``: the journal generates a key (uuid4 hex) and no deduplication happens.
    idempotency_key: str | None
    action: str
    guest: GuestRef
    params: dict[str, Any]
    origin: Origin
    #: Who submitted it (``api:<token-name>``, ``cli``, ``reconcile``); kept with the op.
    actor: str = "api"


@attrs.frozen(kw_only=True)
class SubmitResult:
    """What a submission did: a new op, a deduplicated one, or a re-armed one."""

    op: Op
    deduplicated: bool
    rearmed: bool


@attrs.frozen(kw_only=True)
class OpPage:
    """One page of a listing, newest first; pass ``next_cursor`` to get the next page."""

    items: list[Op]
    next_cursor: int | None


#: The ops columns every op query selects (and ``RETURNING`` returns), in this order.
OP_COLUMNS = (
    "id, idempotency_key, action, node, kind, vmid, params, origin, state, attempts, "
    "next_attempt_at, upid, exitstatus, error_class, error_message, created_at, updated_at, "
    "finished_at, claimed_at, ambiguous_since, dispatched, actor, discarded_at"
)

HISTORY_COLUMNS = "op_id, at, from_state, to_state, reason, attempt, upid"


def _ts(value: float | None) -> float | None:
    # RETURNING yields values before column affinity: an int ``now`` would come back as int.
    return None if value is None else float(value)


_STATES = {state.value: state for state in OpState}
#: Stored text → GuestKind (guests.py decodes its rows with the same table).
KINDS = {kind.value: kind for kind in GuestKind}
_ACTIONS = {action.value: action for action in Action}
_ORIGINS = {origin.value: origin for origin in Origin}
#: How many columns OP_COLUMNS names.
OP_WIDTH = OP_COLUMNS.count(",") + 1


def _error(error_class: str | None, message: str | None) -> OpError | None:
    if error_class is None:
        return None
    return OpError(error_class=ErrorClass(error_class), message=message or "")


def op_from_row(row: sqlite3.Row | tuple[Any, ...]) -> Op:
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
        actor,
        discarded_at,
    ) = tuple(row)[:OP_WIDTH]
    return Op(
        id=op_id,
        idempotency_key=key,
        action=_ACTIONS[action],
        guest=GuestRef(node=node, kind=KINDS[kind], vmid=vmid),
        params={} if params == "{}" else json.loads(params),
        origin=_ORIGINS[origin],
        state=_STATES[state],
        attempts=attempts,
        next_attempt_at=_ts(next_attempt_at),
        upid_text=upid,
        exitstatus=exitstatus,
        error=_error(error_class, error_message),
        created_at=float(created_at),
        updated_at=float(updated_at),
        finished_at=_ts(finished_at),
        claimed_at=_ts(claimed_at),
        ambiguous_since=_ts(ambiguous_since),
        dispatched=bool(dispatched),
        actor=actor,
        discarded_at=_ts(discarded_at),
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


HISTORY_INSERT = (
    "INSERT INTO op_history (op_id, at, from_state, to_state, reason, attempt, upid, "
    "error_class, error_message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

# ``phase`` is not written: it is generated from ``state`` (migration 0007).
_INSERT_OP = (
    "INSERT INTO ops (idempotency_key, action, node, kind, vmid, params, origin, actor, "
    "state, attempts, due_at, created_at, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?) "
    "ON CONFLICT (idempotency_key) DO NOTHING"
)

_SELECT_OP = f"SELECT {OP_COLUMNS} FROM ops WHERE id = ?"
_SELECT_BY_KEY = f"SELECT {OP_COLUMNS} FROM ops WHERE idempotency_key = ?"

#: Columns a step may set; anything else is a programming error.
_SETTABLE = frozenset(
    {
        "state",
        "updated_at",
        "attempts",
        "next_attempt_at",
        "due_at",
        "upid",
        "exitstatus",
        "error_class",
        "error_message",
        "finished_at",
        "claimed_at",
        "ambiguous_since",
        "dispatched",
        "discarded_at",
    }
)

# `phase = 1` / `phase = 2` are written literally: the partial indexes need the same
# constant in the query (reference/sqlite-performance.md §5).
CLAIM_HEAD = f"SELECT {OP_COLUMNS} FROM ops AS o WHERE o.phase = 1 AND o.due_at <= ?"
CLAIM_NODES = " AND o.node IN (SELECT value FROM json_each(?))"
CLAIM_GUEST_FREE = " AND NOT EXISTS (SELECT 1 FROM ops AS f WHERE f.phase = 2 AND f.vmid = o.vmid)"
# The full nodes are found once per claim (not once per candidate: with hundreds of ops in
# flight on a node and thousands pending, a per-candidate count is quadratic).
CLAIM_NODE_CAP = (
    " AND o.node NOT IN (SELECT f.node FROM ops AS f WHERE f.phase = 2"
    " GROUP BY f.node HAVING count(*) >= ?)"
)
#: The same with the full nodes given (a JSON list).
CLAIM_NOT_FULL = " AND o.node NOT IN (SELECT value FROM json_each(?))"
CLAIM_TAIL = " ORDER BY o.due_at, o.id LIMIT 1"


#: Open ops the writer remembers at most (then it forgets them all and reads rows again).
_REMEMBERED = 4096


def remember(conn: sqlite3.Connection, op: Op) -> Op:
    """Note ``op`` as its row now reads (after this unit's write), so that a later unit of
    this writer reads it from here instead of the row (:func:`load`); a terminal op is
    forgotten (few are written again). See :func:`lifecycled.journal.store.written_ops`.

    The record remembered is the one returned: it cannot change (its params are
    :class:`~lifecycled.domain.op.FrozenParams`), so no caller's edit can reach what a later
    unit writes.
    """
    written = written_ops(conn)
    if op.state in TERMINAL:
        written.pop(op.id, None)
    else:
        if len(written) >= _REMEMBERED:
            written.clear()
        written[op.id] = op
    return op


def load(conn: sqlite3.Connection, op_id: int) -> Op:
    """The op with ``op_id`` (as this writer last wrote it, or its row); :class:`NotFound`
    if there is none."""
    op: Op | None = written_ops(conn).get(op_id)
    if op is not None:
        return op
    row = fetch_one(conn, _SELECT_OP, (op_id,))
    if row is None:
        raise NotFound(f"op {op_id} not found")
    return op_from_row(row)


@functools.lru_cache(maxsize=64)
def _update_sql(columns: tuple[str, ...], unless: str | None = None) -> str:
    """The guarded UPDATE for this set of columns (a handful of shapes, built once each)."""
    unknown = set(columns) - _SETTABLE
    if unknown:
        raise ValueError(f"not a settable ops column: {sorted(unknown)}")
    assignments = ", ".join(f"{column} = ?" for column in columns)
    sql = f"UPDATE ops SET {assignments} WHERE id = ? AND state = ?"
    return sql if unless is None else f"{sql} AND NOT EXISTS ({unless})"


#: :func:`persist`'s ``unless`` for a new task id: another op's history holds it (another
#: op's *row* holding it is refused by the ``ops_upid_unique`` index).
_UPID_IN_OTHER_HISTORY = "SELECT 1 FROM op_history WHERE upid = ? AND op_id != ?"


def persist(
    conn: sqlite3.Connection,
    change: Change,
    *,
    reason: str,
    unless: tuple[str, tuple[Any, ...]] | None = None,
) -> Op:
    """Write what :func:`~lifecycled.domain.lifecycle.step` decided: the op's row, guarded by
    the state the step started from, and its history row, in the caller's transaction.

    ``unless``: a query and its parameters; while it finds a row the op is not changed
    (:class:`InvalidTransition`, nothing written) — a check folded into the UPDATE.

    The only place the journal changes an op's state.
    """
    op, sets = change.op, change.sets
    guard, guard_params = unless if unless is not None else (None, ())
    cursor = conn.execute(
        _update_sql(tuple(sets), guard), (*sets.values(), op.id, str(change.before), *guard_params)
    )
    if cursor.rowcount != 1:  # something wrote outside the journal, or ``unless`` found a row
        written_ops(conn).pop(op.id, None)
        raise InvalidTransition(f"op {op.id} is no longer {change.before}; nothing changed")
    err = error_columns(change.history_error)
    conn.execute(
        HISTORY_INSERT,
        (
            op.id,
            sets["updated_at"],
            str(change.before),
            sets["state"],
            reason,
            op.attempts,
            change.history_upid,
            err["error_class"],
            err["error_message"],
        ),
    )
    writer = writer_connection(conn)
    if writer is not None and writer.in_flight is not None:
        entered, left = op.state in IN_FLIGHT, change.before in IN_FLIGHT
        if entered != left:  # an op's node is not a column a step sets
            node = op.guest.node
            writer.in_flight[node] = writer.in_flight.get(node, 0) + (1 if entered else -1)
    return remember(conn, op)


def transition(
    conn: sqlite3.Connection,
    op: Op,
    verb: Verb,
    *,
    now: float,
    reason: str,
    upid: str | None = None,
    exitstatus: str | None = None,
    error: OpError | None = None,
    next_attempt_at: float | None = None,
    ambiguous: bool = False,
    unless: tuple[str, tuple[Any, ...]] | None = None,
) -> Op:
    """Take ``op`` one step with ``verb`` and persist it (``unless``: see :func:`persist`);
    :class:`InvalidTransition` when the state machine refuses."""
    result = step(
        op,
        verb,
        now=now,
        upid=upid,
        exitstatus=exitstatus,
        error=error,
        next_attempt_at=next_attempt_at,
        ambiguous=ambiguous,
    )
    if isinstance(result, Refused):
        raise InvalidTransition(f"op {op.id} is {op.state}: {result.reason}")
    return persist(conn, result, reason=reason, unless=unless)


#: Another op holding a UPID: in its row, or in its history.
_UPID_HOLDER = (
    "SELECT id FROM ops WHERE upid = ? AND id != ?"
    " UNION ALL SELECT op_id FROM op_history WHERE upid = ? AND op_id != ? LIMIT 1"
)
#: :func:`take_upid`'s one read: the op (its columns first, as ``op_from_row`` reads them;
#: ``NULL``s when there is none) and another op holding the UPID, if any — in its row or in
#: its history (a requeued op keeps its earlier tasks there).
_TAKE_UPID_READ = (
    "SELECT "
    + ", ".join(f"o.{c.strip()}" for c in OP_COLUMNS.split(","))
    + f", ({_UPID_HOLDER}) FROM (SELECT 1) AS one LEFT JOIN ops AS o ON o.id = ?"
)


def take_upid(
    conn: sqlite3.Connection, op_id: int, upid: str, verb: Verb, *, now: float, reason: str
) -> Op:
    """Record ``upid`` as the op's task (→ running), unless another op recorded it first.

    A UPID belongs to one op: the ``ops_upid_unique`` index refuses a second holder and the
    history counts too (a requeued op keeps its earlier tasks there), so :class:`UpidTaken`
    names the op that holds it. An op this writer remembers is written at once, the history
    check folded into its UPDATE (the holder is read only when it refuses); any other op is
    read together with the holder, in one statement.
    """
    op: Op | None = written_ops(conn).get(op_id)
    if op is None:
        row = fetch_one(conn, _TAKE_UPID_READ, (upid, op_id, upid, op_id, op_id))
        assert row is not None  # one row always (a LEFT join on one row)
        values = tuple(row)
        if values[-1] is not None:
            raise UpidTaken(upid, int(values[-1]))
        if values[0] is None:
            raise NotFound(f"op {op_id} not found")
        op = op_from_row(values)
    unless = (_UPID_IN_OTHER_HISTORY, (upid, op_id))
    try:
        return transition(conn, op, verb, now=now, reason=reason, upid=upid, unless=unless)
    except (InvalidTransition, sqlite3.IntegrityError):
        holder = fetch_one(conn, _UPID_HOLDER, (upid, op_id, upid, op_id))
        if holder is not None:
            raise UpidTaken(upid, int(holder[0])) from None
        raise


def same_request(op: Op, req: SubmitRequest, params_json: str) -> bool:
    """Whether ``req`` asks for exactly what ``op`` is (action, guest, canonical params)."""
    return op.action == req.action and op.guest == req.guest and op.params_json == params_json


def conflict(op: Op) -> Conflict:
    return Conflict(
        f"idempotency key {op.idempotency_key!r} is already used by op {op.id} "
        f"({op.action} {op.guest.vmid} on {op.guest.node}) with a different action, guest "
        "or params: use a new key"
    )


def by_key(conn: sqlite3.Connection, key: str) -> Op | None:
    """The op holding idempotency key ``key``, if any."""
    row = fetch_one(conn, _SELECT_BY_KEY, (key,))
    return op_from_row(row) if row is not None else None


def submit(
    conn: sqlite3.Connection, req: SubmitRequest, *, now: float, params_json: str | None = None
) -> SubmitResult:
    """Insert a new op, or deduplicate / re-arm the op holding the same idempotency key.

    ``params_json``: ``req.params`` as canonical JSON, when the caller has it already.
    """
    if params_json is None:
        params_json = canonical_json(req.params)
    key = req.idempotency_key if req.idempotency_key is not None else uuid.uuid4().hex
    guest = req.guest
    # Insert unless the key is taken (one statement for the common, new-key case).
    cursor = conn.execute(
        _INSERT_OP,
        (
            key,
            req.action,
            guest.node,
            str(guest.kind),
            guest.vmid,
            params_json,
            str(req.origin),
            req.actor,
            str(INITIAL),
            now,
            now,
            now,
        ),
    )
    if cursor.rowcount == 0:
        existing = by_key(conn, key)
        assert existing is not None
        if not same_request(existing, req, params_json):
            raise conflict(existing)
        if existing.state in REARMABLE:
            op = transition(conn, existing, Verb.REARM, now=now, reason="re-armed by resubmission")
            return SubmitResult(op=op, deduplicated=False, rearmed=True)
        return SubmitResult(op=existing, deduplicated=True, rearmed=False)
    assert cursor.lastrowid is not None
    at = float(now)
    op = Op(  # what the row now reads (no RETURNING and decode needed)
        id=cursor.lastrowid,
        idempotency_key=key,
        action=req.action,
        guest=guest,
        params={} if params_json == "{}" else json.loads(params_json),
        origin=req.origin,
        created_at=at,
        updated_at=at,
        actor=req.actor,
    )
    conn.execute(
        HISTORY_INSERT,
        (op.id, now, None, str(INITIAL), f"submitted by {req.actor}", 0, None, None, None),
    )
    return SubmitResult(op=remember(conn, op), deduplicated=False, rearmed=False)


def claim_query(
    *,
    now: float,
    node_cap: int | None,
    nodes: Collection[str] | None,
    columns: str = OP_COLUMNS,
    full_nodes: Collection[str] | None = None,
) -> tuple[str, list[Any]]:
    """The claim's SELECT and its parameters (also used by the query-plan test).

    ``full_nodes``: the nodes at ``node_cap``, when the caller knows them (the writer keeps
    the counts, :func:`_full_nodes`); otherwise the query finds them itself.
    """
    sql = CLAIM_HEAD.replace(OP_COLUMNS, columns, 1)
    params: list[Any] = [now]
    if nodes is not None:
        sql += CLAIM_NODES
        params.append(json.dumps(sorted(nodes)))
    sql += CLAIM_GUEST_FREE
    if node_cap is not None and full_nodes is None:
        sql += CLAIM_NODE_CAP
        params.append(node_cap)
    elif node_cap is not None and full_nodes:
        sql += CLAIM_NOT_FULL
        params.append(json.dumps(sorted(full_nodes)))
    return sql + CLAIM_TAIL, params


#: The in-flight count of every node (what ``CLAIM_NODE_CAP`` counts).
_IN_FLIGHT_BY_NODE = "SELECT node, count(*) FROM ops WHERE phase = 2 GROUP BY node"


def _full_nodes(conn: sqlite3.Connection, node_cap: int) -> list[str] | None:
    """The nodes with ``node_cap`` ops in flight, from the counts the writer keeps (counted
    once after it forgot them, then moved by every :func:`persist`); ``None`` on any other
    connection (the claim's query counts)."""
    writer = writer_connection(conn)
    if writer is None:
        return None
    if writer.in_flight is None:
        writer.in_flight = {str(n): int(c) for n, c in fetch_all(conn, _IN_FLIGHT_BY_NODE)}
    return [node for node, count in writer.in_flight.items() if count >= node_cap]


def claim(
    conn: sqlite3.Connection,
    *,
    now: float,
    node_cap: int | None,
    nodes: Collection[str] | None,
) -> Op | None:
    """Claim the oldest due pending op whose guest is free and whose node is under its cap."""
    if node_cap is not None and node_cap <= 0:
        return None
    full = _full_nodes(conn, node_cap) if node_cap is not None else None
    sql, params = claim_query(now=now, node_cap=node_cap, nodes=nodes, full_nodes=full)
    row = fetch_one(conn, sql, params)
    if row is None:
        return None
    op = written_ops(conn).get(row[0]) or op_from_row(row)  # the same, when remembered
    return transition(conn, op, Verb.CLAIM, now=now, reason=f"claimed (attempt {op.attempts + 1})")


def finish(
    conn: sqlite3.Connection,
    op_id: int,
    state: OpState,
    *,
    now: float,
    reason: str,
    exitstatus: str | None,
    error: OpError | None,
) -> Op:
    """End an in-flight op (see :meth:`Journal.finish`)."""
    op = load(conn, op_id)
    verb = FINISHING.get(state)
    if verb is None:  # not a final state; an op that cannot finish hears that first
        why = REQUIREMENTS[Verb.SUCCEED] if (Verb.SUCCEED, op.state) not in TABLE else None
        raise InvalidTransition(
            f"op {op.id} is {op.state}: {why or f'finish cannot take an op to {state}'}"
        )
    done = transition(conn, op, verb, now=now, reason=reason, exitstatus=exitstatus, error=error)
    if state is OpState.SUCCEEDED:
        if op.action in _CREATING:
            _record_created(conn, done, now=now)
        _observe_success(conn, done, now=now)
    return done


#: :func:`_observe_success`'s one statement: each of ``observed_state`` and ``node`` is set
#: only when given (``NULL`` keeps the row's value); ``observed_at`` moves with the state.
_OBSERVE_SUCCESS = (
    "UPDATE guests SET observed_state = coalesce(?1, observed_state),"
    " observed_at = CASE WHEN ?1 IS NULL THEN observed_at ELSE ?3 END,"
    " node = coalesce(?2, node), updated_at = ?3 WHERE vmid = ?4"
)


def _observe_success(conn: sqlite3.Connection, op: Op, *, now: float) -> None:
    """What a succeeded op made true, on its guest's row in the same transaction.

    The guest's observed state no longer waits for the next reconcile pass (up to minutes) to
    say that a started guest runs. Only a row already observed by this node is touched.
    """
    seen = observed_after(str(op.action), op.params)
    state, node = seen.get("observed_state"), seen.get("node")
    if state is None and node is None:
        return
    conn.execute(
        _OBSERVE_SUCCESS,
        (None if state is None else str(state), node, now, op.guest.vmid),
    )


#: Actions that make a new guest at the op's vmid.
_CREATING = frozenset({"create", "clone"})


def _record_created(conn: sqlite3.Connection, op: Op, *, now: float) -> None:
    """A create/clone succeeded: its vmid now names the guest this op made (``native``, with
    the op's expected fingerprint), whatever the row said before. Only this success — never
    the submission — rewrites an existing guest's identity."""
    fingerprint = expected_fingerprint(op.guest.kind, op.params)
    row = fetch_one(
        conn, "SELECT origin, node, kind, fingerprint FROM guests WHERE vmid = ?", (op.guest.vmid,)
    )
    if row is None:
        return  # the row is recorded at submission; reconcile finds a guest without one
    if (
        row["origin"] == "native"
        and row["node"] == op.guest.node
        and row["kind"] == str(op.guest.kind)
        and json.loads(row["fingerprint"] or "{}") == fingerprint
    ):
        return
    conn.execute(
        "UPDATE guests SET origin = 'native', node = ?, kind = ?, fingerprint = ?, "
        "released_at = NULL, lost_at = NULL, config_snapshot = NULL, config_digest = NULL, "
        "observed_digest = NULL, updated_at = ? WHERE vmid = ?",
        (
            op.guest.node,
            str(op.guest.kind),
            json.dumps(fingerprint, sort_keys=True),
            now,
            op.guest.vmid,
        ),
    )


def requeue(
    conn: sqlite3.Connection,
    op_id: int,
    *,
    now: float,
    next_attempt_at: float,
    reason: str,
    error: OpError | None,
    ambiguous: bool,
) -> Op:
    """Back to pending after a transient failure (see :meth:`Journal.requeue`)."""
    return transition(
        conn,
        load(conn, op_id),
        Verb.REQUEUE,
        now=now,
        reason=reason,
        error=error,
        next_attempt_at=next_attempt_at,
        ambiguous=ambiguous,
    )


def discard(conn: sqlite3.Connection, op_id: int, *, now: float, reason: str) -> Op:
    """Mark a dead letter discarded (idempotent; see :meth:`Journal.discard`)."""
    op = load(conn, op_id)
    if op.state is OpState.DEAD_LETTERED and op.discarded_at is not None:
        return op
    return transition(conn, op, Verb.DISCARD, now=now, reason=reason)


def delete_returning(conn: sqlite3.Connection, sql: str, params: Any) -> int:
    """Run a ``DELETE … RETURNING id`` and count the deleted ops (history cascades)."""
    deleted = fetch_all(conn, sql, params)
    written = written_ops(conn)
    for row in deleted:
        written.pop(row[0], None)
    writer = writer_connection(conn)
    if writer is not None and deleted:
        writer.in_flight = None  # (only terminal ops are deleted; counted again all the same)
    return len(deleted)


def open_ops(conn: sqlite3.Connection, vmid: int) -> list[Op]:
    """The guest's pending and in-flight ops, oldest first."""
    found = fetch_all(
        conn,
        f"SELECT {OP_COLUMNS} FROM ops WHERE vmid = ? AND phase IN (1, 2) ORDER BY id",
        (vmid,),
    )
    return [op_from_row(r) for r in found]


# Literal constants, so the partial index ``ops_reconcile_by_vmid`` serves the query.
_SUPERSEDABLE_WHERE = (
    f"vmid = ? AND origin = '{SUPERSEDABLE_ORIGIN}' AND state = '{SUPERSEDABLE_STATE}'"
)
_SUPERSEDABLE = f"SELECT {OP_COLUMNS} FROM ops WHERE {_SUPERSEDABLE_WHERE} ORDER BY id"
#: Whether the guest (``?``: its vmid) has an op :func:`cancel_superseded` reads.
SUPERSEDABLE_EXISTS = f"SELECT 1 FROM ops WHERE {_SUPERSEDABLE_WHERE}"


def cancel_superseded(
    conn: sqlite3.Connection, vmid: int, desired: DesiredState | None, *, now: float
) -> list[int]:
    """Persist :func:`lifecycled.domain.guests.superseded` for the guest: cancel the ops it
    names (the domain decides which; this only writes). Only the guest's ops the domain
    calls supersedable are read (usually none: nothing to decode)."""
    candidates = [op_from_row(r) for r in fetch_all(conn, _SUPERSEDABLE, (vmid,))]
    cancelled = []
    for op, reason in superseded(candidates, desired):
        transition(conn, op, Verb.CANCEL, now=now, reason=reason)
        cancelled.append(op.id)
    return cancelled


_DELETE_BATCH = 500


class Ops(Part):
    """The op verbs that write (Journal delegates to them)."""

    async def submit(self, req: SubmitRequest, *, now: float) -> SubmitResult:
        """Journal a new op, or deduplicate / re-arm by idempotency key (SPEC §1).

        The plain journal verb, for tools and tests that set up ops directly: the daemon's
        faces submit through :meth:`Guests.submit_guest_op` (guest ownership and desired
        state too), which runs the same :func:`submit` unit inside its own write.

        A client's retry of a key in flight or succeeded is answered from inside the group
        commit (a read, no change): a separate read first would cost every submission a
        thread hop.
        """
        return await self._store.write(lambda c: submit(c, req, now=now))

    async def claim_next(
        self,
        *,
        now: float,
        node_cap: int | None = None,
        nodes: Collection[str] | None = None,
    ) -> Op | None:
        """Claim the oldest due pending op (→ dispatching, attempts + 1), or ``None``.

        Skips ops whose guest already has an op in flight and, with ``node_cap``, ops on a
        node with that many ops in flight; with ``nodes``, only ops on those nodes. Safe
        across OS processes: the pick and the update are one ``BEGIN IMMEDIATE``.
        """
        if nodes is not None and not nodes:
            return None
        return await self._store.write(lambda c: claim(c, now=now, node_cap=node_cap, nodes=nodes))

    async def record_upid(
        self, op_id: int, upid: str, *, now: float, reason: str = "task started"
    ) -> Op:
        """Journal the task id Proxmox returned: dispatching → running (survives cancellation).

        :class:`UpidTaken` when another op already recorded ``upid``."""
        return await self._store.write(
            lambda c: take_upid(c, op_id, upid, Verb.RECORD_UPID, now=now, reason=reason),
            durable=True,
        )

    async def set_upid_in_flight(self, op_id: int, upid: str, *, now: float, reason: str) -> Op:
        """Adopt a task id for an in-flight op (recover/janitor); a dispatching op → running.

        :class:`UpidTaken` when another op already recorded ``upid``."""
        return await self._store.write(
            lambda c: take_upid(c, op_id, upid, Verb.SET_UPID, now=now, reason=reason),
            durable=True,
        )

    async def finish(
        self,
        op_id: int,
        state: OpState,
        *,
        now: float,
        reason: str,
        exitstatus: str | None = None,
        error: OpError | None = None,
    ) -> Op:
        """End an in-flight op (succeeded / failed); survives cancellation.

        ``error`` becomes the op's error; without one a success clears it and a failure
        keeps the last error recorded (e.g. by a requeue).
        """
        return await self._store.write(
            lambda c: finish(
                c, op_id, state, now=now, reason=reason, exitstatus=exitstatus, error=error
            ),
            durable=True,
        )

    async def requeue(
        self,
        op_id: int,
        *,
        now: float,
        next_attempt_at: float,
        reason: str,
        error: OpError | None = None,
        ambiguous: bool = False,
    ) -> Op:
        """Back to pending after a transient failure, due at ``next_attempt_at``.

        The task id is cleared (it stays in the history). ``ambiguous`` records when the
        failed attempt was claimed, so the next attempt searches the task list since then.
        """
        return await self._store.write(
            lambda c: requeue(
                c,
                op_id,
                now=now,
                next_attempt_at=next_attempt_at,
                reason=reason,
                error=error,
                ambiguous=ambiguous,
            ),
            durable=True,
        )

    async def dead_letter(
        self, op_id: int, *, now: float, reason: str, error: OpError | None = None
    ) -> Op:
        """An in-flight op gives up (retries exhausted): → dead_lettered; survives cancellation."""
        return await self._store.write(
            lambda c: transition(
                c, load(c, op_id), Verb.DEAD_LETTER, now=now, reason=reason, error=error
            ),
            durable=True,
        )

    async def cancel(self, op_id: int, *, now: float, reason: str) -> Op:
        """Cancel a pending op (any other state: :class:`InvalidTransition`)."""
        return await self._store.write(
            lambda c: transition(c, load(c, op_id), Verb.CANCEL, now=now, reason=reason)
        )

    async def retry(self, op_id: int, *, now: float, reason: str) -> Op:
        """An operator's retry: failed / dead_lettered / cancelled → pending, fresh attempts."""
        return await self._store.write(
            lambda c: transition(c, load(c, op_id), Verb.RETRY, now=now, reason=reason)
        )

    async def discard(self, op_id: int, *, now: float, reason: str) -> Op:
        """Take a dead letter out of the DLQ listing (state unchanged). Idempotent."""
        return await self._store.write(lambda c: discard(c, op_id, now=now, reason=reason))

    async def _delete_in_batches(self, sql: str, params: list[Any]) -> int:
        # Short transactions: a big prune never holds up other writers for long.
        total = 0
        while True:
            n = await self._store.write(lambda c: delete_returning(c, sql, params))
            total += n
            if n < _DELETE_BATCH:
                return total

    async def purge_discarded(self, *, before: float | None = None) -> int:
        """Delete discarded dead letters (and their history); with ``before``, only older."""
        cond = "state = 'dead_lettered' AND discarded_at IS NOT NULL"
        params: list[Any] = []
        if before is not None:
            cond += " AND discarded_at < ?"
            params.append(before)
        sql = (
            f"DELETE FROM ops WHERE id IN (SELECT id FROM ops WHERE {cond} LIMIT {_DELETE_BATCH})"
            " RETURNING id"
        )
        return await self._delete_in_batches(sql, params)

    async def prune(self, *, before: float) -> int:
        """Delete terminal ops finished before ``before`` (and their history).

        Never touches open ops nor dead letters an operator has not discarded.
        """
        sql = (
            "DELETE FROM ops WHERE id IN (SELECT id FROM ops WHERE phase = 0 AND finished_at < ?"
            " AND (state <> 'dead_lettered' OR discarded_at IS NOT NULL)"
            f" LIMIT {_DELETE_BATCH}) RETURNING id"
        )
        return await self._delete_in_batches(sql, [before])

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
            op = load(conn, op_id)
            change = step(op, Verb.DEFER, now=now, next_attempt_at=next_attempt_at)
            if isinstance(change, Refused):
                raise InvalidTransition(f"op {op.id} is {op.state}: {change.reason}")
            child_op = submit(conn, child, now=now).op if child else None
            return persist(conn, change, reason=reason), child_op

        return await self._store.write(unit)

    async def note_stuck(self, op_id: int, *, now: float, reason: str) -> bool:
        """Append a history row saying why an in-flight op is stuck (its state is unchanged;
        ``updated_at`` moves, so the janitor looks again only after another ``stale_after``).
        False when the op is no longer in flight."""

        def unit(conn: sqlite3.Connection) -> bool:
            op = load(conn, op_id)
            change = step(op, Verb.NOTE_STUCK, now=now)
            if isinstance(change, Refused):
                return False
            persist(conn, change, reason=reason)
            return True

        return await self._store.write(unit)
