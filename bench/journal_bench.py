"""Sections 0 and 1 (journal side): the journal against raw sqlite3 on the same schema.

Every figure is durable (WAL, ``synchronous=FULL``) and runs on a fresh file in the run's
work folder. The raw anchors use the journal's own schema and indexes (created by
``Journal.open``), so the difference is the journal's code, not the table layout.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path

from lifecycled.audit import AuditRecord, Decision
from lifecycled.cli.daemon import _GIL_SWITCH_INTERVAL
from lifecycled.domain.guests import GuestOrigin, GuestRecord, desired_for
from lifecycled.domain.op import GuestKind, GuestRef, Origin
from lifecycled.journal import Journal, SubmitRequest

T0 = 1_700_000_000.0
#: The claim's node cap (the dispatcher always passes one); above the callers, so it never
#: holds a claim back but its in-flight count is part of every claim, as in the daemon.
NODE_CAP = 1024

_INSERT = (
    "INSERT INTO ops (id, idempotency_key, action, node, kind, vmid, params, origin, actor, "
    "state, attempts, due_at, created_at, updated_at) "
    "VALUES (?, ?, 'start', 'pve1', 'qemu', ?, '{}', 'api', 'bench', 'pending', 0, ?, ?, ?)"
)
_HISTORY = (
    "INSERT INTO op_history (op_id, at, from_state, to_state, reason, attempt, upid) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_CLAIM = (
    "UPDATE ops SET state = 'dispatching', attempts = attempts + 1, claimed_at = ?,"
    " updated_at = ? WHERE id = ? AND state = 'pending'"
)
_UPID = (
    "UPDATE ops SET state = 'running', upid = ?, dispatched = 1, updated_at = ?"
    " WHERE id = ? AND state = 'dispatching'"
)
_FINISH = (
    "UPDATE ops SET state = 'succeeded', exitstatus = 'OK', finished_at = ?,"
    " updated_at = ? WHERE id = ? AND state = 'running'"
)
#: The guest rows the daemon's calls write too: an accepted ``start`` sets the guest's desired
#: state (``submit_guest_op``), its success records the observed state (``finish``).
_GUEST = (
    "INSERT INTO guests (vmid, node, kind, origin, name, created_at, updated_at) "
    "VALUES (?, 'pve1', 'qemu', 'native', ?, ?, ?)"
)
_DESIRE = (
    "UPDATE guests SET desired_state = 'running', desired_generation = desired_generation + 1,"
    " updated_at = ? WHERE vmid = ?"
)
_OBSERVE = (
    "UPDATE guests SET observed_state = 'running', observed_at = ?, updated_at = ? WHERE vmid = ?"
)


async def fresh_journal(path: Path) -> None:
    """An empty journal file with the real schema (then closed)."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    async with await Journal.open(path):
        pass


def _raw(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    # The journal's connection enforces the schema's foreign keys (a history row's op must
    # exist): the same checks here.
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA temp_store = MEMORY")
    return conn


Rows = list[tuple[object, ...]]


def _raw_guests(conn: sqlite3.Connection, n_ops: int) -> None:
    """The managed guests the ops act on, one per op (set-up, not measured)."""
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(_GUEST, [(100 + i, f"bench-{100 + i}", T0, T0) for i in range(1, n_ops + 1)])
    conn.execute("COMMIT")


def _stage_rows(ids: range, stage: int) -> tuple[Rows, Rows, Rows]:
    """The op rows, history rows and guest rows of one stage for ``ids``."""
    now = T0 + stage
    ops: Rows
    hist: Rows
    guests: Rows = []
    if stage == 0:
        ops = [(i, f"k{i}", 100 + i, now, now, now) for i in ids]
        hist = [(i, now, None, "pending", "submitted", 0, None) for i in ids]
        guests = [(now, 100 + i) for i in ids]
    elif stage == 1:
        ops = [(now, now, i) for i in ids]
        hist = [(i, now, "pending", "dispatching", "claimed", 1, None) for i in ids]
    elif stage == 2:
        ops = [(f"UPID:pve1:{i:08X}:bench:", now, i) for i in ids]
        hist = [(i, now, "dispatching", "running", "task", 1, f"UPID:{i}") for i in ids]
    else:
        ops = [(now, now, i) for i in ids]
        hist = [(i, now, "running", "succeeded", "OK", 1, None) for i in ids]
        guests = [(now, now, 100 + i) for i in ids]
    return ops, hist, guests


_STAGE_SQL = (_INSERT, _CLAIM, _UPID, _FINISH)
#: The guest write of each stage, if any (see ``_DESIRE`` and ``_OBSERVE``).
_STAGE_GUEST_SQL = (_DESIRE, None, None, _OBSERVE)


def raw_lifecycle_grouped(path: Path, n_ops: int, group: int = 100) -> float:
    """Raw sqlite3: the four transitions and the guest writes, ``group`` ops per transaction
    per stage; ops/s."""
    asyncio.run(fresh_journal(path))
    conn = _raw(path)
    try:
        _raw_guests(conn, n_ops)
        started = time.perf_counter()
        for first in range(1, n_ops + 1, group):
            ids = range(first, min(first + group, n_ops + 1))
            for stage, sql in enumerate(_STAGE_SQL):
                ops, hist, guests = _stage_rows(ids, stage)
                guest_sql = _STAGE_GUEST_SQL[stage]
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(sql, ops)
                conn.executemany(_HISTORY, hist)
                if guest_sql is not None:
                    conn.executemany(guest_sql, guests)
                conn.execute("COMMIT")
        return n_ops / (time.perf_counter() - started)
    finally:
        conn.close()


def raw_lifecycle_per_transition(path: Path, n_ops: int) -> float:
    """Raw sqlite3: the four transitions and the guest writes, each transition its own
    durable commit; ops/s."""
    asyncio.run(fresh_journal(path))
    conn = _raw(path)
    try:
        _raw_guests(conn, n_ops)
        started = time.perf_counter()
        for i in range(1, n_ops + 1):
            for stage, sql in enumerate(_STAGE_SQL):
                ops, hist, guests = _stage_rows(range(i, i + 1), stage)
                guest_sql = _STAGE_GUEST_SQL[stage]
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(sql, ops[0])
                conn.execute(_HISTORY, hist[0])
                if guest_sql is not None:
                    conn.execute(guest_sql, guests[0])
                conn.execute("COMMIT")
        return n_ops / (time.perf_counter() - started)
    finally:
        conn.close()


def raw_one_row_commits(path: Path, n: int) -> float:
    """Raw sqlite3: one op row inserted per durable commit; rows/s (the fsync ceiling)."""
    asyncio.run(fresh_journal(path))
    conn = _raw(path)
    try:
        started = time.perf_counter()
        for i in range(1, n + 1):
            conn.execute(_INSERT, (i, f"k{i}", 100 + i, T0, T0, T0))
        return n / (time.perf_counter() - started)
    finally:
        conn.close()


def _request(i: int, vmid: int) -> SubmitRequest:
    return SubmitRequest(
        idempotency_key=f"bench-{i}",
        action="start",
        guest=GuestRef(node="pve1", kind=GuestKind.QEMU, vmid=vmid),
        params={},
        origin=Origin.API,
        actor="api:bench",
    )


#: What an accepted ``start`` sets (the daemon passes it to ``submit_guest_op``).
_DESIRED = desired_for("start")


async def _manage(journal: Journal, vmids: range) -> None:
    """Record ``vmids`` as managed (native) guests on pve1 — the ownership rule every
    submission of an existing guest's op goes through. Set-up, not measured."""
    sem = asyncio.Semaphore(128)

    async def one(vmid: int) -> None:
        rec = GuestRecord(
            vmid=vmid,
            node="pve1",
            kind=GuestKind.QEMU,
            origin=GuestOrigin.NATIVE,
            name=f"bench-{vmid}",
            created_at=T0,
            updated_at=T0,
        )
        audit = AuditRecord(
            at=T0,
            actor="bench",
            action="manage",
            decision=Decision.MANAGED,
            reason="bench set-up",
            vmid=vmid,
            node="pve1",
        )
        async with sem:
            await journal.take_guest(rec, audit=audit, now=T0)

    async with asyncio.TaskGroup() as tg:
        for vmid in vmids:
            tg.create_task(one(vmid))


async def _journal_lifecycle(path: Path, n_ops: int, callers: int) -> float:
    await fresh_journal(path)
    async with await Journal.open(path) as journal:
        await _manage(journal, range(100, 100 + n_ops))
        counter = iter(range(n_ops))

        async def caller() -> None:
            for i in counter:
                await journal.submit_guest_op(_request(i, 100 + i), now=T0, desired=_DESIRED)
                op = await journal.claim_next(now=T0 + 1, node_cap=NODE_CAP)
                assert op is not None
                await journal.record_upid(op.id, f"UPID:pve1:{op.id:08X}:bench:", now=T0 + 2)
                succeeded = type(op.state).SUCCEEDED  # OpState, wherever the domain keeps it
                await journal.finish(op.id, succeeded, now=T0 + 3, reason="OK", exitstatus="OK")

        started = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for _ in range(callers):
                tg.create_task(caller())
        return n_ops / (time.perf_counter() - started)


def _as_the_daemon_runs(fn: Callable[[], float]) -> float:
    """Run with the GIL switch interval ``lifecycled run`` sets (see cli/daemon.py)."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(_GIL_SWITCH_INTERVAL)
    try:
        return fn()
    finally:
        sys.setswitchinterval(before)


def journal_lifecycle(path: Path, n_ops: int, callers: int = 64) -> float:
    """The daemon's journal calls for one op — ``submit_guest_op`` (engine/submit.py) →
    ``claim_next`` with a node cap (the dispatcher) → ``record_upid`` → ``finish`` (the
    executor) — from ``callers`` coroutines, one managed guest per op; ops/s."""
    return _as_the_daemon_runs(lambda: asyncio.run(_journal_lifecycle(path, n_ops, callers)))


#: Managed guests the submissions cycle over (as the HTTP submission bench does).
SUBMISSION_GUESTS = 200


async def _journal_submissions(path: Path, n: int, callers: int) -> float:
    await fresh_journal(path)
    async with await Journal.open(path) as journal:
        await _manage(journal, range(100, 100 + SUBMISSION_GUESTS))
        counter = iter(range(n))

        async def caller() -> None:
            for i in counter:
                req = _request(i, 100 + i % SUBMISSION_GUESTS)
                await journal.submit_guest_op(req, now=T0, desired=_DESIRED)

        started = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for _ in range(callers):
                tg.create_task(caller())
        return n / (time.perf_counter() - started)


def journal_submissions(path: Path, n: int, callers: int = 32) -> float:
    """Durable submissions through ``submit_guest_op`` — the journal call engine/submit.py
    makes (idempotency key, ownership guard, desired state) — from ``callers`` coroutines on
    200 managed guests; per s."""
    return _as_the_daemon_runs(lambda: asyncio.run(_journal_submissions(path, n, callers)))
