"""Run an ``async`` unit of work to completion inside SQLite's thread, in one hop.

Journal units are written as ``async`` functions of the aiosqlite connection (``await
conn.execute(…)``), and each such await is a thread hop of ~60 µs
(reference/sqlite-performance.md §2). Inside SQLite's own thread the same unit can run
against :class:`DirectConnection` instead: it offers the aiosqlite methods units use, but
runs each statement at once on the ``sqlite3`` connection, so no await ever suspends and
:func:`drive` completes the coroutine with a single ``send``.

A unit that awaits anything else (a lock, a sleep, a network call) *does* suspend:
:func:`drive` then raises :class:`Suspended`, and the caller rolls the unit's savepoint back
and runs it again the ordinary way on the event loop. Units are functions of the
connection with no other side effects, so running one twice is safe.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar, cast

import aiosqlite

T = TypeVar("T")


class Suspended(Exception):
    """The unit awaited something other than the connection; it must run on the loop."""


class DirectCursor:
    """The parts of :class:`aiosqlite.Cursor` units use, over a ``sqlite3.Cursor``."""

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def description(self) -> Any:
        return self._cursor.description

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany() if size is None else self._cursor.fetchmany(size)

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()

    async def __aiter__(self) -> AsyncIterator[Any]:
        for row in self._cursor:
            yield row


class _Ready:
    """A result that is already there: awaitable (without suspending) and ``async with``-able,
    like the object aiosqlite's ``execute`` returns."""

    def __init__(self, value: DirectCursor) -> None:
        self._value = value

    def __await__(self) -> Generator[Any, None, DirectCursor]:
        return self._value
        yield  # makes this a generator that finishes on its first step

    async def __aenter__(self) -> DirectCursor:
        return self._value

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._value.close()


class DirectConnection:
    """Looks like an :class:`aiosqlite.Connection` to a unit; runs statements immediately.

    Only valid in SQLite's own thread (aiosqlite's worker), for the duration of one call.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    @property
    def row_factory(self) -> Any:
        return self._conn.row_factory

    @property
    def total_changes(self) -> int:
        return self._conn.total_changes

    def execute(self, sql: str, parameters: Iterable[Any] | None = None) -> _Ready:
        return _Ready(DirectCursor(self._conn.execute(sql, tuple(parameters or ()))))

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> _Ready:
        return _Ready(DirectCursor(self._conn.executemany(sql, parameters)))

    async def execute_fetchall(
        self, sql: str, parameters: Iterable[Any] | None = None
    ) -> list[Any]:
        return self._conn.execute(sql, tuple(parameters or ())).fetchall()

    async def execute_insert(self, sql: str, parameters: Iterable[Any] | None = None) -> Any:
        cursor = self._conn.execute(sql, tuple(parameters or ()))
        return cursor.execute("SELECT last_insert_rowid()").fetchone()

    async def _execute(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        # What :func:`lifecycled.journal.db.in_thread` calls: we are in the thread already.
        return fn(*args, **kwargs)


def drive(start: Callable[[aiosqlite.Connection], Awaitable[T]], conn: sqlite3.Connection) -> T:
    """Run the unit ``start`` on ``conn`` to completion without an event loop.

    Raises whatever the unit raises, or :class:`Suspended` (after closing the coroutine)
    if it awaited something that is not the connection.
    """
    awaitable = start(cast(aiosqlite.Connection, DirectConnection(conn)))
    steps = awaitable.__await__()
    try:
        steps.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    close = getattr(steps, "close", None)
    if close is not None:
        close()
    raise Suspended("the unit awaited something other than the journal connection")
