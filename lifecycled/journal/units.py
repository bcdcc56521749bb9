"""Units of work for the journal's op writes: plain functions of the ``sqlite3`` connection.

Each runs in the journal's writer thread inside a transaction the caller does not see: the
group commit of :meth:`~lifecycled.journal.store.Writer.write` runs many callers' units in one
``BEGIN IMMEDIATE … COMMIT`` (reference/sqlite-performance.md §1–2). A unit that raises
rolls back only its own changes.

Every state change reads the op, checks the verb's rule and the state machine, updates the
row guarded by its current state (``WHERE id = ? AND state = ?``) and appends the history
row — in the same transaction, so a crash leaves either both or neither.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import uuid
from collections.abc import Collection, Mapping
from typing import Any

import attrs

from lifecycled.domain.actions import expected_fingerprint
from lifecycled.domain.classify import ErrorClass
from lifecycled.domain.guests import observed_after
from lifecycled.domain.op import Op, OpError, canonical_json
from lifecycled.domain.states import REARMABLE, OpState
from lifecycled.errors import Conflict, InvalidTransition, NotFound, UpidTaken
from lifecycled.journal.records import SubmitRequest, SubmitResult
from lifecycled.journal.rows import OP_COLUMNS, op_from_row
from lifecycled.journal.rules import PHASE, RULES, Verb, refusal

HISTORY_INSERT = (
    "INSERT INTO op_history (op_id, at, from_state, to_state, reason, attempt, upid, "
    "error_class, error_message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

_INSERT_OP = (
    "INSERT INTO ops (idempotency_key, action, node, kind, vmid, params, origin, actor, "
    "state, phase, attempts, due_at, created_at, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', 1, 0, ?, ?, ?) "
    "ON CONFLICT (idempotency_key) DO NOTHING"
)

_SELECT_OP = f"SELECT {OP_COLUMNS} FROM ops WHERE id = ?"
_SELECT_BY_KEY = f"SELECT {OP_COLUMNS} FROM ops WHERE idempotency_key = ?"

#: Columns a transition may set; anything else is a programming error.
_SETTABLE = frozenset(
    {
        "state",
        "phase",
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
        "actor",
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
CLAIM_TAIL = " ORDER BY o.due_at, o.id LIMIT 1"


def fetch_one(conn: sqlite3.Connection, sql: str, params: Any = ()) -> sqlite3.Row | None:
    """Run one statement to completion; its first row or ``None``."""
    found: list[sqlite3.Row] = conn.execute(sql, params).fetchall()
    return found[0] if found else None


def fetch_all(conn: sqlite3.Connection, sql: str, params: Any = ()) -> list[sqlite3.Row]:
    """Run one statement to completion; all its rows."""
    found: list[sqlite3.Row] = conn.execute(sql, params).fetchall()
    return found


def error_columns(error: OpError | None) -> dict[str, Any]:
    """The ops/history columns for ``error`` (``None`` clears them)."""
    if error is None:
        return {"error_class": None, "error_message": None}
    return {"error_class": str(error.error_class), "error_message": error.message}


def fresh_series(now: float) -> dict[str, Any]:
    """The column values of an op re-armed as a new attempt series (retry or resubmission)."""
    return {
        "attempts": 0,
        "next_attempt_at": None,
        "due_at": now,
        "upid": None,
        "exitstatus": None,
        "finished_at": None,
        "claimed_at": None,
        "ambiguous_since": None,
        "dispatched": 0,
        "discarded_at": None,
        **error_columns(None),
    }


def load(conn: sqlite3.Connection, op_id: int) -> Op:
    """The op with ``op_id``; :class:`NotFound` if there is none."""
    row = fetch_one(conn, _SELECT_OP, (op_id,))
    if row is None:
        raise NotFound(f"op {op_id} not found")
    return op_from_row(row)


def check(op: Op, verb: Verb, dst: OpState) -> None:
    """Raise :class:`InvalidTransition` unless ``verb`` may take ``op`` to ``dst``."""
    why = refusal(verb, op.state, dst)
    if why is not None:
        raise InvalidTransition(f"op {op.id} is {op.state}: {why}")


@functools.lru_cache(maxsize=64)
def _update_sql(columns: tuple[str, ...]) -> str:
    """The guarded UPDATE for this set of columns (a handful of shapes, built once each)."""
    unknown = set(columns) - _SETTABLE
    if unknown:
        raise ValueError(f"not a settable ops column: {sorted(unknown)}")
    assignments = ", ".join(f"{column} = ?" for column in columns)
    return f"UPDATE ops SET {assignments} WHERE id = ? AND state = ?"


_OP_FIELDS = tuple(field.name for field in attrs.fields(Op))

_TIMES = ("updated_at", "next_attempt_at", "finished_at", "claimed_at", "ambiguous_since")


def _evolved(op: Op, dst: OpState, sets: Mapping[str, Any]) -> Op:
    """The op as the row now reads, from the values just written (no ``RETURNING``, no
    second decode: the UPDATE sets exactly these columns)."""
    fields: dict[str, Any] = {"state": dst}
    for name in _TIMES:
        if name in sets:
            value = sets[name]
            fields[name] = None if value is None else float(value)
    if "attempts" in sets:
        fields["attempts"] = int(sets["attempts"])
    for name in ("upid", "exitstatus"):
        if name in sets:
            fields[name] = sets[name]
    if "dispatched" in sets:
        fields["dispatched"] = bool(sets["dispatched"])
    if "error_class" in sets:
        cls = sets["error_class"]
        fields["error"] = (
            None
            if cls is None
            else OpError(error_class=ErrorClass(cls), message=sets.get("error_message") or "")
        )
    # attrs.evolve, without its per-call introspection (this runs on every transition).
    return Op(**{name: getattr(op, name) for name in _OP_FIELDS} | fields)


def apply(
    conn: sqlite3.Connection,
    op: Op,
    dst: OpState,
    *,
    now: float,
    reason: str,
    changes: Mapping[str, Any],
    history_error: OpError | None = None,
) -> Op:
    """Update ``op`` to ``dst`` (guarded by its current state) and append its history row."""
    sets: dict[str, Any] = {"state": str(dst), "phase": PHASE[dst], "updated_at": now, **changes}
    cursor = conn.execute(_update_sql(tuple(sets)), (*sets.values(), op.id, str(op.state)))
    if cursor.rowcount != 1:  # only possible if something wrote outside the journal
        raise InvalidTransition(f"op {op.id} is no longer {op.state}; nothing changed")
    new = _evolved(op, dst, sets)
    err = error_columns(history_error)
    conn.execute(
        HISTORY_INSERT,
        (
            op.id,
            now,
            str(op.state),
            str(dst),
            reason,
            new.attempts,
            new.upid if new.upid is not None else op.upid,
            err["error_class"],
            err["error_message"],
        ),
    )
    return new


def transition(
    conn: sqlite3.Connection,
    op_id: int,
    verb: Verb,
    dst: OpState,
    *,
    now: float,
    reason: str,
    changes: Mapping[str, Any],
    history_error: OpError | None = None,
) -> Op:
    """Load, check and apply one state change.

    A verb with a single source state (record UPID, cancel) is one guarded
    ``UPDATE … RETURNING`` instead of a read and an update; only when it matches nothing is
    the op read, for the precise error.
    """
    src = _single_source(verb, dst)
    if src is not None:
        sets: dict[str, Any] = {
            "state": str(dst),
            "phase": PHASE[dst],
            "updated_at": now,
            **changes,
        }
        row = fetch_one(
            conn,
            f"{_update_sql(tuple(sets))} RETURNING {OP_COLUMNS}",
            (*sets.values(), op_id, str(src)),
        )
        if row is not None:
            new = op_from_row(row)
            _history(conn, new, src, now=now, reason=reason, error=history_error)
            return new
    op = load(conn, op_id)
    check(op, verb, dst)
    return apply(
        conn, op, dst, now=now, reason=reason, changes=changes, history_error=history_error
    )


def take_upid(
    conn: sqlite3.Connection, op_id: int, upid: str, verb: Verb, *, now: float, reason: str
) -> Op:
    """Record ``upid`` as the op's task (→ running), unless another op recorded it first.

    A UPID belongs to one op: the ``ops_upid_unique`` index refuses a second holder and the
    history counts too (a requeued op keeps its earlier tasks there), so :class:`UpidTaken`
    names the op that holds it.
    """
    holder = fetch_one(
        conn,
        "SELECT id FROM ops WHERE upid = ? AND id != ?"
        " UNION ALL SELECT op_id FROM op_history WHERE upid = ? AND op_id != ? LIMIT 1",
        (upid, op_id, upid, op_id),
    )
    if holder is not None:
        raise UpidTaken(upid, int(holder[0]))
    changes = {"upid": upid, "dispatched": 1, "ambiguous_since": None}
    return transition(conn, op_id, verb, OpState.RUNNING, now=now, reason=reason, changes=changes)


@functools.lru_cache(maxsize=64)
def _single_source(verb: Verb, dst: OpState) -> OpState | None:
    """The one state ``verb`` takes to ``dst`` from, when there is exactly one."""
    rule = RULES[verb]
    if len(rule.sources) != 1:
        return None
    (src,) = rule.sources
    return src if refusal(verb, src, dst) is None else None


def _history(
    conn: sqlite3.Connection,
    new: Op,
    src: OpState | None,
    *,
    now: float,
    reason: str,
    error: OpError | None,
) -> None:
    """Append the history row of a change that left the op as ``new``."""
    err = error_columns(error)
    conn.execute(
        HISTORY_INSERT,
        (
            new.id,
            now,
            None if src is None else str(src),
            str(new.state),
            reason,
            new.attempts,
            new.upid,
            err["error_class"],
            err["error_message"],
        ),
    )


def rearm(conn: sqlite3.Connection, op: Op, verb: Verb, *, now: float, reason: str) -> Op:
    """Take a failed/dead-lettered/cancelled op back to pending as a new attempt series.

    The error it ended with is kept in the history row of the re-arm.
    """
    check(op, verb, OpState.PENDING)
    return apply(
        conn,
        op,
        OpState.PENDING,
        now=now,
        reason=reason,
        changes=fresh_series(now),
        history_error=op.error,
    )


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


def submit(conn: sqlite3.Connection, req: SubmitRequest, *, now: float) -> SubmitResult:
    """Insert a new op, or deduplicate / re-arm the op holding the same idempotency key."""
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
            op = rearm(conn, existing, Verb.REARM, now=now, reason="re-armed by resubmission")
            return SubmitResult(op=op, deduplicated=False, rearmed=True)
        return SubmitResult(op=existing, deduplicated=True, rearmed=False)
    assert cursor.lastrowid is not None
    at = float(now)
    op = Op(  # what the row now reads (no RETURNING and decode needed)
        id=cursor.lastrowid,
        idempotency_key=key,
        action=req.action,
        guest=guest,
        params=json.loads(params_json),
        origin=req.origin,
        created_at=at,
        updated_at=at,
    )
    conn.execute(
        HISTORY_INSERT,
        (op.id, now, None, str(OpState.PENDING), f"submitted by {req.actor}", 0, None, None, None),
    )
    return SubmitResult(op=op, deduplicated=False, rearmed=False)


def claim_query(
    *, now: float, node_cap: int | None, nodes: Collection[str] | None, columns: str = OP_COLUMNS
) -> tuple[str, list[Any]]:
    """The claim's SELECT and its parameters (also used by the query-plan test)."""
    sql = CLAIM_HEAD.replace(OP_COLUMNS, columns, 1)
    params: list[Any] = [now]
    if nodes is not None:
        sql += CLAIM_NODES
        params.append(json.dumps(sorted(nodes)))
    sql += CLAIM_GUEST_FREE
    if node_cap is not None:
        sql += CLAIM_NODE_CAP
        params.append(node_cap)
    return sql + CLAIM_TAIL, params


_CLAIM_UPDATE = (
    "UPDATE ops SET state = 'dispatching', phase = 2, updated_at = ?, attempts = attempts + 1,"
    " claimed_at = ?, next_attempt_at = NULL WHERE id = ({pick}) AND state = 'pending'"
    f" RETURNING {OP_COLUMNS}"
)


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
    # The pick and the change in one statement (the pick is the indexed claim query).
    pick, params = claim_query(now=now, node_cap=node_cap, nodes=nodes, columns="o.id")
    row = fetch_one(conn, _CLAIM_UPDATE.format(pick=pick), (now, now, *params))
    if row is None:
        return None
    op = op_from_row(row)
    _history(
        conn,
        op,
        OpState.PENDING,
        now=now,
        reason=f"claimed (attempt {op.attempts})",
        error=None,
    )
    return op


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
    check(op, Verb.FINISH, state)
    changes: dict[str, Any] = {
        "finished_at": now,
        "next_attempt_at": None,
        "exitstatus": exitstatus if exitstatus is not None else op.exitstatus,
    }
    if error is not None or state is OpState.SUCCEEDED:
        changes.update(error_columns(error))
    done = apply(conn, op, state, now=now, reason=reason, changes=changes, history_error=error)
    if state is OpState.SUCCEEDED:
        if op.action in _CREATING:
            _record_created(conn, done, now=now)
        _observe_success(conn, done, now=now)
    return done


#: Guest columns a success may set at once (see ``domain.guests.observed_after``).
_OBSERVED_COLUMNS = frozenset({"observed_state", "node"})


def _observe_success(conn: sqlite3.Connection, op: Op, *, now: float) -> None:
    """What a succeeded op made true, on its guest's row in the same transaction.

    The guest's observed state no longer waits for the next reconcile pass (up to minutes) to
    say that a started guest runs. Only a row already observed by this node is touched.
    """
    seen = observed_after(str(op.action), op.params)
    columns: dict[str, Any] = {k: str(v) for k, v in seen.items() if k in _OBSERVED_COLUMNS}
    if not columns:
        return
    if "observed_state" in columns:
        columns["observed_at"] = now
    columns["updated_at"] = now
    sets = ", ".join(f"{c} = ?" for c in columns)
    conn.execute(f"UPDATE guests SET {sets} WHERE vmid = ?", [*columns.values(), op.guest.vmid])


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
    op = load(conn, op_id)
    check(op, Verb.REQUEUE, OpState.PENDING)
    changes: dict[str, Any] = {
        "next_attempt_at": next_attempt_at,
        "due_at": next_attempt_at,
        "upid": None,
    }
    if error is not None:
        changes.update(error_columns(error))
    if ambiguous and op.ambiguous_since is None:
        changes["ambiguous_since"] = op.claimed_at if op.claimed_at is not None else now
    return apply(
        conn, op, OpState.PENDING, now=now, reason=reason, changes=changes, history_error=error
    )


def discard(conn: sqlite3.Connection, op_id: int, *, now: float, reason: str) -> Op:
    """Mark a dead letter discarded (idempotent; see :meth:`Journal.discard`)."""
    op = load(conn, op_id)
    check(op, Verb.DISCARD, OpState.DEAD_LETTERED)
    row = fetch_one(conn, "SELECT discarded_at FROM ops WHERE id = ?", (op_id,))
    if row is not None and row["discarded_at"] is not None:
        return op
    return apply(
        conn, op, OpState.DEAD_LETTERED, now=now, reason=reason, changes={"discarded_at": now}
    )


def delete_returning(conn: sqlite3.Connection, sql: str, params: Any) -> int:
    """Run a ``DELETE … RETURNING id`` and count the deleted ops (history cascades)."""
    return len(fetch_all(conn, sql, params))
