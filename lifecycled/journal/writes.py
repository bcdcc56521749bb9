"""The op units of :mod:`lifecycled.journal.units` for ``async`` units of work.

An ``async`` unit (a :meth:`Database.write` unit: guests, nodes, outbox, …) runs inside the
group commit's transaction with the aiosqlite connection; each function here runs its
synchronous counterpart in SQLite's thread in **one** hop instead of one await per
statement. The pure helpers are the same objects as in :mod:`~lifecycled.journal.units`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import aiosqlite

from lifecycled.domain.op import Op, OpError
from lifecycled.domain.states import OpState
from lifecycled.journal import units
from lifecycled.journal.db import in_thread
from lifecycled.journal.records import SubmitRequest, SubmitResult
from lifecycled.journal.rules import Verb
from lifecycled.journal.units import (
    check,
    conflict,
    error_columns,
    fresh_series,
    same_request,
)

__all__ = [
    "apply",
    "check",
    "claim",
    "conflict",
    "delete_returning",
    "error_columns",
    "fresh_series",
    "load",
    "rearm",
    "same_request",
    "submit",
    "transition",
]


async def load(conn: aiosqlite.Connection, op_id: int) -> Op:
    """The op with ``op_id``; :class:`~lifecycled.errors.NotFound` if there is none."""
    return await in_thread(conn, lambda c: units.load(c, op_id))


async def apply(
    conn: aiosqlite.Connection,
    op: Op,
    dst: OpState,
    *,
    now: float,
    reason: str,
    changes: Mapping[str, Any],
    history_error: OpError | None = None,
) -> Op:
    """Update ``op`` to ``dst`` (guarded by its current state) and append its history row."""
    return await in_thread(
        conn,
        lambda c: units.apply(
            c, op, dst, now=now, reason=reason, changes=changes, history_error=history_error
        ),
    )


async def transition(
    conn: aiosqlite.Connection,
    op_id: int,
    verb: Verb,
    dst: OpState,
    *,
    now: float,
    reason: str,
    changes: Mapping[str, Any],
    history_error: OpError | None = None,
) -> Op:
    """Load, check and apply one state change."""
    return await in_thread(
        conn,
        lambda c: units.transition(
            c,
            op_id,
            verb,
            dst,
            now=now,
            reason=reason,
            changes=changes,
            history_error=history_error,
        ),
    )


async def rearm(conn: aiosqlite.Connection, op: Op, verb: Verb, *, now: float, reason: str) -> Op:
    """Take a failed/dead-lettered/cancelled op back to pending as a new attempt series."""
    return await in_thread(conn, lambda c: units.rearm(c, op, verb, now=now, reason=reason))


async def submit(conn: aiosqlite.Connection, req: SubmitRequest, *, now: float) -> SubmitResult:
    """Insert a new op, or deduplicate / re-arm the op holding the same idempotency key."""
    return await in_thread(conn, lambda c: units.submit(c, req, now=now))


async def claim(
    conn: aiosqlite.Connection,
    *,
    now: float,
    node_cap: int | None,
    nodes: Collection[str] | None,
) -> Op | None:
    """Claim the oldest due pending op whose guest is free and whose node is under its cap."""
    return await in_thread(conn, lambda c: units.claim(c, now=now, node_cap=node_cap, nodes=nodes))


async def delete_returning(conn: aiosqlite.Connection, sql: str, params: list[Any]) -> int:
    """Run a ``DELETE … RETURNING id`` and count the deleted ops (history cascades)."""
    return await in_thread(conn, lambda c: units.delete_returning(c, sql, params))
