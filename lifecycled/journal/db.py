"""The journal's one SQLite connection: file creation, pragmas, group commit, error mapping.

Every write goes through :meth:`Database.write_sync` or :meth:`Database.write` and is
**group-committed** (:mod:`lifecycled.journal.groupcommit`): one flusher runs whatever units
are queued in one ``BEGIN IMMEDIATE … COMMIT`` and answers each caller once the commit
holding its unit is durable; a unit that raises rolls back only its own changes. A unit is a
plain function of the ``sqlite3`` connection (``write_sync``) or an ``async`` function of the
aiosqlite connection (``write``); either way the whole batch crosses into SQLite's thread in
one hop (:mod:`lifecycled.journal.direct` drives ``async`` units there without suspending).

aiosqlite orders statements but does not isolate a transaction that spans awaits, so one
:class:`asyncio.Lock` is held around each batch and each :meth:`Database.read`: the rare
``async`` unit that must run on the event loop keeps its transaction to itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import aiosqlite

from lifecycled.errors import ConfigError, JournalError, JournalUnavailable
from lifecycled.journal import groupcommit
from lifecycled.journal.direct import Suspended, drive
from lifecycled.journal.groupcommit import MAX_BATCH, Job, TransactionLost

logger = logging.getLogger("lifecycled.journal")

T = TypeVar("T")
Unit = Callable[[aiosqlite.Connection], Awaitable[T]]
SyncUnit = Callable[[sqlite3.Connection], T]
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
                f"no journal at {path}; check --db or --config "
                f"(lifecycled db migrate --db {path} creates one)"
            )
        # The journal holds guest names, configs and audit records: owner-only from the start.
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            os.close(fd)
    return path.absolute()


def _restrict_files(path: Path) -> None:
    """Make the journal and its -wal/-shm owner-only (0600) on every open, not only when
    created: a journal copied in, restored from a backup or loosened by hand is tightened
    again. A file of another owner is left alone (chmod would fail)."""
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError, PermissionError):
            if file.stat().st_mode & 0o077:
                file.chmod(0o600)
                logger.info("journal.permissions_tightened", extra={"path": str(file)})


async def in_thread(conn: aiosqlite.Connection, fn: SyncUnit[T]) -> T:
    """Run ``fn`` on the underlying ``sqlite3`` connection in aiosqlite's thread: one hop.

    aiosqlite owns that connection and runs everything queued to it in order on its one
    thread; ``Connection._execute`` is how it queues a callable (private, but stable since
    aiosqlite 0.17; ``tests/integration/test_journal_groupcommit.py`` pins it).
    """
    execute = cast(Callable[[Callable[[], T]], Awaitable[T]], conn._execute)
    return await execute(lambda: fn(conn._conn))


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
        self._queue: deque[Job[Any]] = deque()
        self._flusher: asyncio.Task[None] | None = None

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
        await asyncio.to_thread(_restrict_files, file)
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
            await asyncio.to_thread(_restrict_files, file)  # the -wal/-shm exist now
        except BaseException:
            await db.close()
            raise
        return db

    @property
    def connection(self) -> aiosqlite.Connection:
        """The raw connection, for the migration runner at open time only."""
        return self._conn

    async def close(self) -> None:
        """Commit what is queued, then close the connection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._flusher is not None:
            await asyncio.wait({self._flusher})
        async with self._lock:
            with contextlib.suppress(sqlite3.Error):
                # Keep the planner's statistics fresh (SQLite recommends it before closing).
                await self._conn.execute("PRAGMA optimize")
            await self._conn.close()

    def _check_open(self) -> None:
        if self._closed:
            raise JournalError(f"journal {self.path} is closed")

    async def write(self, unit: Unit[T]) -> T:
        """Run the ``async`` unit in the next group commit; its result once that is durable.

        The unit shares the batch's ``BEGIN IMMEDIATE … COMMIT``: an exception rolls back
        only this unit's changes and is raised here. A caller cancelled meanwhile leaves the
        unit all or nothing (withdrawn, or committed). The unit should await only the
        connection: it then runs in SQLite's thread in one hop; one that awaits anything
        else is rolled back there and run again on the event loop.
        """
        return await self._enqueue(Job(self._new_future(), async_unit=unit))

    async def write_sync(self, unit: SyncUnit[T], *, durable: bool = False) -> T:
        """Run the synchronous unit in the next group commit; its result once durable.

        ``unit`` is a plain function of the ``sqlite3`` connection; it runs in SQLite's own
        thread together with the other units of its batch, in one thread hop. It must not
        block on anything but SQLite. Same all-or-nothing guarantees as :meth:`write`.

        ``durable``: the write must survive the caller's cancellation (STYLE principle 5) —
        it is never withdrawn; a cancelled caller waits for its commit, then re-raises.
        """
        job: Job[T] = Job(self._new_future(), sync_unit=unit, durable=durable)
        try:
            return await self._enqueue(job)
        except asyncio.CancelledError:
            if durable:
                await self._settled(job)
            raise

    async def _settled(self, job: Job[Any]) -> None:
        """A cancelled durable caller: wait until the flusher is done with its unit."""
        if not job.settled:
            settled = asyncio.get_running_loop().create_future()
            job.on_settled = settled
            while not settled.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait({settled})
        if job.error is not None:
            logger.warning("journal.durable_write_failed", exc_info=job.error)

    def _new_future(self) -> asyncio.Future[Any]:
        self._check_open()
        return asyncio.get_running_loop().create_future()

    def _queue_job(self, job: Job[Any]) -> None:
        self._queue.append(job)
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush(), name="journal-group-commit"
            )

    async def _enqueue(self, job: Job[T]) -> T:
        self._queue_job(job)
        # Cancelling this await cancels the future: a unit not taken yet is then skipped.
        result: T = await job.future
        return result

    async def _flush(self) -> None:
        """Commit batches until the queue is empty (no waiting for more writers)."""
        try:
            while self._queue:
                batch: list[Job[Any]] = []
                while self._queue and len(batch) < MAX_BATCH:
                    job = self._queue.popleft()
                    if job.withdrawn:
                        job.settle()
                    else:
                        batch.append(job)
                if batch:
                    await self._commit(batch)
        finally:
            self._flusher = None
            while self._queue:  # only when the flusher itself was cancelled (loop teardown)
                job = self._queue.popleft()
                job.settle()
                job.future.cancel()

    async def _commit(self, batch: list[Job[Any]]) -> None:
        conn = self._conn
        try:
            async with self._lock:
                started = time.perf_counter()
                try:
                    committed = await in_thread(conn, lambda c: groupcommit.run_units(c, batch))
                    if not committed:  # async units that must run on the loop
                        for job in batch:
                            if job.on_loop:
                                await groupcommit.run_async_unit(conn, job)
                        await in_thread(conn, groupcommit.commit_now)
                except BaseException:
                    # An async unit on the loop may have left the transaction open.
                    await in_thread(conn, groupcommit.rollback_now)
                    raise
                elapsed = time.perf_counter() - started
        except BaseException as exc:
            if not isinstance(exc, Exception):  # cancelled (loop teardown): outcome unknown
                for job in batch:
                    job.settle()
                    job.future.cancel()
                raise
            error = exc.cause if isinstance(exc, TransactionLost) else exc
            for job in batch:
                self._answer(job, error)
            return
        self._committed(elapsed)
        for job in batch:
            self._answer(job, job.error if job.ran else JournalError("unit did not run"))

    def _answer(self, job: Job[Any], error: BaseException | None) -> None:
        job.error = error
        job.settle()
        if job.future.done():
            return
        if error is None:
            job.future.set_result(job.value)
            return
        if isinstance(error, sqlite3.Error):
            mapped = translate(error, self.path)
            mapped.__cause__ = error
            error = mapped
        job.future.set_exception(error)

    def _committed(self, elapsed: float) -> None:
        if self._on_commit is None:
            return
        try:
            self._on_commit(elapsed)
        except Exception:  # a metrics hook must never turn a committed write into an error
            logger.exception("journal.on_commit_failed")

    async def read(self, unit: Unit[T]) -> T:
        """Run ``unit`` (reads only) under the lock, outside any write transaction.

        Driven to completion in SQLite's thread in one hop (:mod:`lifecycled.journal.direct`);
        a unit that awaits something else runs again the ordinary way (reads are harmless
        to repeat).
        """
        self._check_open()
        async with self._lock:
            with translated(self.path):
                try:
                    return await in_thread(self._conn, lambda c: drive(unit, c))
                except Suspended:
                    return await unit(self._conn)
