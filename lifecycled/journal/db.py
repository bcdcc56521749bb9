"""The journal's one SQLite connection: file creation, pragmas, the write lock, error mapping.

Every statement goes through :meth:`Database.write` (``BEGIN IMMEDIATE … COMMIT`` under one
:class:`asyncio.Lock`) or :meth:`Database.read` (the same lock, no transaction), because
aiosqlite orders statements but does not isolate a transaction that spans awaits: without
the lock another coroutine's statement could land inside ours.

A unit of work is an ``async`` function of the connection. Keeping writes in that shape is
what lets a later change run many callers' units inside one transaction (group commit)
without touching the verbs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from lifecycled.errors import ConfigError, JournalError, JournalUnavailable

logger = logging.getLogger("lifecycled.journal")

T = TypeVar("T")
Unit = Callable[[aiosqlite.Connection], Awaitable[T]]
Params = Sequence[Any]

SYNCHRONOUS_MODES = ("NORMAL", "FULL", "EXTRA")
DEFAULT_BUSY_TIMEOUT_MS = 5000

_UNAVAILABLE = (
    "disk is full",
    "database or disk is full",
    "readonly database",
    "unable to open",
    "database is locked",
    "disk i/o error",
)
_CORRUPT = ("malformed", "not a database", "corrupt")


def translate(exc: sqlite3.Error, path: Path) -> JournalError:
    """Map an sqlite3 error to the journal's error tree with a message a user can act on."""
    text = str(exc)
    low = text.lower()
    if isinstance(exc, sqlite3.OperationalError) and any(s in low for s in _UNAVAILABLE):
        return JournalUnavailable(f"journal {path} is unavailable: {text}")
    if any(s in low for s in _CORRUPT):
        return JournalError(
            f"journal {path} is corrupt or not a lifecycled journal ({text}); "
            "restore it from a backup"
        )
    return JournalError(f"journal {path}: {text}")


@contextlib.contextmanager
def translated(path: Path) -> Iterator[None]:
    """Re-raise sqlite3 errors as :class:`JournalError` / :class:`JournalUnavailable`."""
    try:
        yield
    except sqlite3.Error as exc:
        raise translate(exc, path) from exc


def _prepare_file(path: Path, *, create: bool) -> Path:
    """Check the journal path (creating the file with mode 0600 if asked); its absolute form."""
    if path.is_dir():
        raise JournalError(f"journal {path} is a directory, not a file")
    if not path.exists():
        if not create:
            raise JournalError(
                f"journal {path} does not exist (create it with: lifecycled db migrate --db {path})"
            )
        # The journal holds guest names, configs and audit records: owner-only from the start.
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            os.close(fd)
    return path.absolute()


def _restrict_sidecars(path: Path) -> None:
    # SQLite gives -wal/-shm the database file's mode; make sure anyway.
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        with contextlib.suppress(FileNotFoundError, PermissionError):
            if side.stat().st_mode & 0o077:
                side.chmod(0o600)


async def rows(conn: aiosqlite.Connection, sql: str, params: Params = ()) -> list[sqlite3.Row]:
    """Run one statement and fetch all its rows in one thread hop."""
    return list(await conn.execute_fetchall(sql, params))


async def one(conn: aiosqlite.Connection, sql: str, params: Params = ()) -> sqlite3.Row | None:
    """Run one statement; its first row or ``None``."""
    found = await rows(conn, sql, params)
    return found[0] if found else None


async def rollback(conn: aiosqlite.Connection) -> None:
    """Roll back whatever transaction is open once every queued statement has run.

    Not ``if conn.in_transaction``: when a caller is cancelled while its ``BEGIN`` is still
    queued, the flag is not set yet but the ``BEGIN`` runs later. aiosqlite runs statements
    in order, so an unconditional ``ROLLBACK`` queued now lands after it.
    """
    try:
        await conn.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        if "no transaction is active" not in str(exc):
            logger.warning("journal.rollback_failed", exc_info=exc)


async def _enable_wal(conn: aiosqlite.Connection, within: float) -> None:
    """``PRAGMA journal_mode = WAL``, retried while another opener holds the new file.

    SQLite does not call the busy handler for this pragma, so two processes opening a new
    journal at once can see ``database is locked`` while the other one migrates it.
    """
    deadline = time.monotonic() + within
    delay = 0.005
    while True:
        try:
            await conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)


class Database:
    """One aiosqlite connection with its pragmas and the lock every statement runs under."""

    def __init__(
        self,
        conn: aiosqlite.Connection,
        path: Path,
        *,
        on_commit: Callable[[float], None] | None,
    ) -> None:
        self._conn = conn
        self.path = path
        self._on_commit = on_commit
        self._lock = asyncio.Lock()
        self._closed = False

    @classmethod
    async def connect(
        cls,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "FULL",
        create: bool = True,
        readonly: bool = False,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        on_commit: Callable[[float], None] | None = None,
    ) -> Database:
        """Open (and with ``create``, create with mode 0600) the journal file at ``path``."""
        sync = synchronous.upper()
        if sync not in SYNCHRONOUS_MODES:
            raise ConfigError(
                f"journal synchronous mode must be NORMAL, FULL or EXTRA, not {synchronous!r}"
            )
        file = Path(path)
        absolute = await asyncio.to_thread(_prepare_file, file, create=create and not readonly)
        mode = "ro" if readonly else "rw"
        uri = f"file:{urllib.parse.quote(str(absolute))}?mode={mode}"
        with translated(file):
            conn = await aiosqlite.connect(
                uri, uri=True, isolation_level=None, timeout=busy_timeout_ms / 1000
            )
        db = cls(conn, file, on_commit=on_commit)
        try:
            with translated(file):
                conn.row_factory = sqlite3.Row
                await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
                if not readonly:
                    await _enable_wal(conn, busy_timeout_ms / 1000)
                await conn.execute(f"PRAGMA synchronous = {sync}")
                await conn.execute("PRAGMA foreign_keys = ON")
                await conn.execute("PRAGMA temp_store = MEMORY")
                # Touch the schema now so a corrupt or foreign file fails at open.
                await rows(conn, "SELECT count(*) FROM sqlite_master")
            if not readonly:
                await asyncio.to_thread(_restrict_sidecars, file)
        except BaseException:
            await db.close()
            raise
        return db

    @property
    def connection(self) -> aiosqlite.Connection:
        """The raw connection, for the migration runner at open time only."""
        return self._conn

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        async with self._lock:
            with contextlib.suppress(sqlite3.Error):
                # Keep the planner's statistics fresh (SQLite recommends it before closing).
                await self._conn.execute("PRAGMA optimize")
            await self._conn.close()

    def _check_open(self) -> None:
        if self._closed:
            raise JournalError(f"journal {self.path} is closed")

    async def write(self, unit: Unit[T]) -> T:
        """Run ``unit`` in one ``BEGIN IMMEDIATE … COMMIT`` under the write lock.

        Any exception (including cancellation) rolls back whatever did not commit: the unit
        is all or nothing.
        """
        self._check_open()
        async with self._lock:
            started = time.perf_counter()
            with translated(self.path):
                try:
                    await self._conn.execute("BEGIN IMMEDIATE")
                    result = await unit(self._conn)
                    await self._conn.execute("COMMIT")
                except BaseException:
                    await rollback(self._conn)
                    raise
            elapsed = time.perf_counter() - started
        if self._on_commit is not None:
            try:
                self._on_commit(elapsed)
            except Exception:  # a metrics hook must never turn a committed write into an error
                logger.exception("journal.on_commit_failed")
        return result

    async def read(self, unit: Unit[T]) -> T:
        """Run ``unit`` (reads only) under the lock, outside any write transaction."""
        self._check_open()
        async with self._lock:
            with translated(self.path):
                return await unit(self._conn)
