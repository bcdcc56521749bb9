"""Group commit: many callers' units of work in one durable transaction.

Callers queue a unit and wait on a future; one flusher task takes *whatever is queued* (no
fixed delay: a lone write is committed at once), runs the batch in one
``BEGIN IMMEDIATE … COMMIT`` and answers every caller only after that commit is on disk.
A durable commit costs one fdatasync whatever it holds, so batching is what moves the
journal's ceiling (reference/sqlite-performance.md §1).

* The whole batch runs in SQLite's thread in **one** hop, ``BEGIN`` and ``COMMIT``
  included (§2): synchronous units (functions of the ``sqlite3`` connection) directly, and
  ``async`` units (functions of the aiosqlite connection) driven to completion there by
  :mod:`lifecycled.journal.direct`. An ``async`` unit that awaits anything but the
  connection is rolled back and run again on the event loop, one await per statement,
  inside the same transaction.
* A unit that raises rolls back only its own changes and its error goes to its own caller;
  the others commit. Units run back to back; a unit that fails after writing sends the
  batch round again with each unit under its own ``SAVEPOINT`` (most failures — a refused
  transition, an unknown op, a key conflict — happen before any write and need no undo).
* An error of the transaction itself (``BEGIN``/``COMMIT`` failing, or SQLite rolling the
  whole transaction back on a full disk or an I/O error) fails every unit of the batch:
  none of them committed.
* A caller cancelled before its unit was taken withdraws it (it never runs); once taken, the
  unit commits with its batch or not at all — all or nothing either way. A *durable* unit
  (task id received, op finished) is never withdrawn: its cancelled caller waits for the
  commit, then sees the cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import aiosqlite

from lifecycled.journal.direct import Suspended, drive

T = TypeVar("T")

SyncUnit = Callable[[sqlite3.Connection], T]
AsyncUnit = Callable[[aiosqlite.Connection], Awaitable[T]]

#: Units per transaction at most: bounds a batch's latency under a flood of writers.
MAX_BATCH = 256

_SAVEPOINT = "SAVEPOINT lifecycled_unit"
_RELEASE = "RELEASE lifecycled_unit"
_ROLLBACK_TO = "ROLLBACK TO lifecycled_unit"


class TransactionLost(Exception):
    """SQLite rolled the whole transaction back (full disk, I/O error): nothing committed."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class Job(Generic[T]):
    """One queued unit, its caller's future, and what it produced."""

    __slots__ = (
        "async_unit",
        "durable",
        "error",
        "future",
        "on_loop",
        "on_settled",
        "ran",
        "settled",
        "sync_unit",
        "value",
    )

    def __init__(
        self,
        future: asyncio.Future[T],
        *,
        sync_unit: SyncUnit[T] | None = None,
        async_unit: AsyncUnit[T] | None = None,
        durable: bool = False,
    ) -> None:
        self.future = future
        self.sync_unit = sync_unit
        self.async_unit = async_unit
        #: Never withdrawn: runs even when its caller was cancelled before it was taken.
        self.durable = durable
        #: The flusher is done with it (committed, failed, or its batch was abandoned).
        self.settled = False
        #: Set by a cancelled durable caller that waits for the outcome.
        self.on_settled: asyncio.Future[None] | None = None
        self.ran = False
        #: The async unit suspended in SQLite's thread: it runs again on the event loop.
        self.on_loop = False
        self.value: Any = None
        self.error: BaseException | None = None

    @property
    def withdrawn(self) -> bool:
        """The caller gave up (was cancelled) before the unit was taken."""
        return self.future.done() and not self.durable

    def settle(self) -> None:
        """The flusher is done with this job: wake a cancelled durable caller."""
        self.settled = True
        if self.on_settled is not None and not self.on_settled.done():
            self.on_settled.set_result(None)

    def reset(self) -> None:
        self.ran, self.on_loop, self.value, self.error = False, False, None, None

    def succeeded(self, value: T) -> None:
        self.ran, self.value, self.error = True, value, None

    def failed(self, error: BaseException) -> None:
        self.ran, self.value, self.error = True, None, error


def _undo_unit(conn: sqlite3.Connection, exc: BaseException) -> None:
    """Roll back the failed unit's savepoint; TransactionLost if SQLite dropped it all."""
    if not conn.in_transaction:
        raise TransactionLost(exc)
    conn.execute(_ROLLBACK_TO)
    conn.execute(_RELEASE)


class _Rerun(Exception):
    """A unit failed (or suspended) after writing: the batch runs again with savepoints."""


def _run_one(conn: sqlite3.Connection, job: Job[Any]) -> Any:
    if job.sync_unit is not None:
        return job.sync_unit(conn)
    assert job.async_unit is not None
    return drive(job.async_unit, conn)


def _run_plain(conn: sqlite3.Connection, jobs: Sequence[Job[Any]]) -> None:
    """Every unit without a savepoint: the fast path (two statements fewer per unit).

    A unit that fails *before writing anything* needs no undo (``total_changes`` tells);
    one that fails after writing raises :class:`_Rerun`.
    """
    for job in jobs:
        before = conn.total_changes
        try:
            value = _run_one(conn, job)
        except Suspended:
            if conn.total_changes != before:
                raise _Rerun from None
            job.on_loop = True
            continue
        except Exception as exc:
            if not conn.in_transaction:
                raise TransactionLost(exc) from exc
            if conn.total_changes != before:
                raise _Rerun from exc
            job.failed(exc)
            continue
        job.succeeded(value)


def _run_with_savepoints(conn: sqlite3.Connection, jobs: Sequence[Job[Any]]) -> None:
    """Every unit under its own savepoint: a failing unit rolls back only its own changes."""
    for job in jobs:
        conn.execute(_SAVEPOINT)
        try:
            value = _run_one(conn, job)
        except Suspended:
            _undo_unit(conn, RuntimeError("suspended"))
            job.on_loop = True
            continue
        except Exception as exc:  # noqa: BLE001 - the error goes to its own caller
            _undo_unit(conn, exc)
            job.failed(exc)
            continue
        conn.execute(_RELEASE)
        job.succeeded(value)


def run_units(conn: sqlite3.Connection, jobs: Sequence[Job[Any]]) -> bool:
    """In SQLite's thread: ``BEGIN IMMEDIATE``, every unit, ``COMMIT``; True if committed.

    Units first run back to back; if one fails after writing, the transaction is rolled
    back and the batch runs again with each unit under its own savepoint, so only the
    failing unit's changes are undone (units are functions of the connection: running one
    again is safe). ``async`` units are driven to completion here too
    (:mod:`lifecycled.journal.direct`); one that suspends is marked ``on_loop`` and the
    transaction is left open (returns False) for the caller to run those units on the
    event loop and commit. A transaction-level error rolls back (if SQLite has not
    already) and is raised: the caller fails the whole batch.
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            _run_plain(conn, jobs)
        except _Rerun:
            conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
            for job in jobs:
                job.reset()
            _run_with_savepoints(conn, jobs)
        if any(job.on_loop for job in jobs):
            return False
        conn.execute("COMMIT")
        return True
    except BaseException:
        rollback_now(conn)
        raise


def rollback_now(conn: sqlite3.Connection) -> None:
    """In SQLite's thread: roll back whatever transaction is still open."""
    if conn.in_transaction:
        # Nothing left to roll back, or the file is gone: either way nothing committed.
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def commit_now(conn: sqlite3.Connection) -> None:
    """In SQLite's thread: ``COMMIT`` (rolling back if it fails)."""
    try:
        conn.execute("COMMIT")
    except BaseException:
        rollback_now(conn)
        raise


async def run_async_unit(conn: aiosqlite.Connection, job: Job[Any]) -> None:
    """Run one ``async`` unit under its savepoint inside the open batch transaction."""
    unit = job.async_unit
    assert unit is not None
    await conn.execute(_SAVEPOINT)
    try:
        value = await unit(conn)
    except Exception as exc:
        if not conn.in_transaction:
            raise TransactionLost(exc) from exc
        await conn.execute(_ROLLBACK_TO)
        await conn.execute(_RELEASE)
        job.failed(exc)
        return
    await conn.execute(_RELEASE)
    job.succeeded(value)
