"""The journal's connections: one writer thread with group commit, one async reader.

**Writes.** :class:`Writer` owns one thread (a ``ThreadPoolExecutor`` with one worker) and
the one ``sqlite3`` connection that thread opened; nothing else touches that connection.
Every write is a *unit*: a plain function of the ``sqlite3`` connection. Units are
**group-committed**: callers queue a unit and wait on a future; one flusher task on the
event loop takes whatever is queued (no fixed delay: a lone write is committed at once) and
hands the whole batch to the writer thread in one hop, where it runs ``BEGIN IMMEDIATE``,
every unit, ``COMMIT``. Every caller is answered on the loop only after that commit is on
disk. A durable commit costs one fdatasync whatever it holds, so batching is what moves the
journal's ceiling (reference/sqlite-performance.md §1).

* A unit that raises rolls back only its own changes and its error goes to its own caller;
  the others commit. Units first run back to back; a unit that fails *after writing* sends
  the batch round again with each unit under its own ``SAVEPOINT`` (most failures — a
  refused transition, an unknown op, a key conflict — happen before any write and need no
  undo; units are functions of the connection, so running one again is safe).
* An error of the transaction itself (``BEGIN``/``COMMIT`` failing, or SQLite rolling the
  whole transaction back on a full disk or an I/O error) fails every unit of the batch:
  none of them committed.
* A caller cancelled before its unit was taken withdraws it (it never runs); once taken, the
  unit commits with its batch or not at all, and the cancelled caller waits for that batch
  before it re-raises (what it reads next is the outcome). A *durable* unit (task id
  received, op finished) is never withdrawn: its cancelled caller waits for the commit,
  then re-raises (STYLE principle 5).

**Reads.** :class:`Store` also holds an aiosqlite connection of its own (``query_only``) for
the API's and the CLI's reads: in WAL mode readers run beside the writer, each statement on
the latest committed snapshot. docs/ARCHITECTURE.md "The journal's threads" says why.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import sqlite3
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import aiosqlite

from lifecycled.errors import ConfigError, JournalError, JournalUnavailable

logger = logging.getLogger("lifecycled.journal")

T = TypeVar("T")
#: A unit of work: a plain function of the writer's ``sqlite3`` connection.
Unit = Callable[[sqlite3.Connection], T]
Params = Sequence[Any]

SYNCHRONOUS_MODES = ("NORMAL", "FULL", "EXTRA")
DEFAULT_BUSY_TIMEOUT_MS = 5000
#: Units per transaction at most: bounds a batch's latency under a flood of writers.
MAX_BATCH = 256

_SAVEPOINT = "SAVEPOINT lifecycled_unit"
_RELEASE = "RELEASE lifecycled_unit"
_ROLLBACK_TO = "ROLLBACK TO lifecycled_unit"

_UNAVAILABLE = (
    "disk is full",
    "database or disk is full",
    "readonly database",
    "unable to open",
    "database is locked",
    "disk i/o error",
)
_CORRUPT = ("malformed", "not a database", "corrupt")


# --- errors ---------------------------------------------------------------------------------


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


# --- the writer's connection ----------------------------------------------------------------


class WriterConnection(sqlite3.Connection):
    """The writer's ``sqlite3`` connection, and the op rows as its own writes left them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: See :func:`written_ops`.
        self.written_ops: dict[int, Any] = {}
        #: Ops in flight per node, kept up to date by the writer's own writes; ``None``:
        #: not known (read again when needed). Forgotten with :attr:`written_ops`.
        self.in_flight: dict[str, int] | None = None
        #: ``PRAGMA data_version`` when :attr:`written_ops` was last known to be exact.
        self.data_version: int | None = None


def written_ops(conn: sqlite3.Connection) -> dict[int, Any]:
    """Op records by id, as this connection's own writes left their rows — for a unit to
    read instead of the row. The writer forgets them all whenever they may no longer be what
    the file holds: another connection (another process) committed (``PRAGMA
    data_version``, checked at the start of every group commit), a unit's changes or a whole
    transaction were rolled back, or the connection ran a statement outside a group commit.
    Any other connection remembers nothing (an empty dict, thrown away)."""
    if isinstance(conn, WriterConnection):
        return conn.written_ops
    return {}


def writer_connection(conn: sqlite3.Connection) -> WriterConnection | None:
    """``conn`` when it is the writer's (it remembers what it wrote, see
    :func:`written_ops`), else ``None``."""
    return conn if isinstance(conn, WriterConnection) else None


def _forget_written(conn: sqlite3.Connection) -> None:
    if isinstance(conn, WriterConnection):
        conn.written_ops.clear()
        conn.in_flight = None


def _check_data_version(conn: sqlite3.Connection) -> None:
    """Inside ``BEGIN IMMEDIATE`` (no other writer can commit now): forget what this
    connection wrote if anything else committed since its last look."""
    if not isinstance(conn, WriterConnection):
        return
    (version,) = conn.execute("PRAGMA data_version").fetchone()
    if version != conn.data_version:
        _forget_written(conn)
        conn.data_version = version


# --- statements inside a unit -------------------------------------------------------------


def fetch_one(conn: sqlite3.Connection, sql: str, params: Any = ()) -> sqlite3.Row | None:
    """Run one statement to completion; its first row or ``None``."""
    found: list[sqlite3.Row] = conn.execute(sql, params).fetchall()
    return found[0] if found else None


def fetch_all(conn: sqlite3.Connection, sql: str, params: Any = ()) -> list[sqlite3.Row]:
    """Run one statement to completion; all its rows."""
    found: list[sqlite3.Row] = conn.execute(sql, params).fetchall()
    return found


# --- the file -------------------------------------------------------------------------------


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


def _enable_wal(conn: sqlite3.Connection, within: float) -> None:
    """``PRAGMA journal_mode = WAL``, retried while another opener holds the new file.

    SQLite does not call the busy handler for this pragma, so two processes opening a new
    journal at once can see ``database is locked`` while the other one migrates it. (This
    runs in the writer thread: sleeping there blocks nothing else.)
    """
    deadline = time.monotonic() + within
    delay = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _uri(absolute: Path, *, readonly: bool) -> str:
    return f"file:{urllib.parse.quote(str(absolute))}?mode={'ro' if readonly else 'rw'}"


# --- group commit ---------------------------------------------------------------------------


class TransactionLost(Exception):
    """SQLite rolled the whole transaction back (full disk, I/O error): nothing committed."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _Rerun(Exception):
    """A unit failed after writing: the batch runs again with savepoints."""


class Job(Generic[T]):
    """One queued unit, its caller's future, and what it produced."""

    __slots__ = (
        "durable",
        "error",
        "future",
        "on_settled",
        "ran",
        "settled",
        "taken",
        "unit",
        "value",
    )

    def __init__(self, future: asyncio.Future[T], unit: Unit[T], *, durable: bool) -> None:
        self.future = future
        self.unit = unit
        #: Never withdrawn: runs even when its caller was cancelled before it was taken.
        self.durable = durable
        #: Taken into a batch: it commits with that batch or not at all.
        self.taken = False
        #: The flusher is done with it (committed, failed, or its batch was abandoned).
        self.settled = False
        #: Set by a cancelled durable caller that waits for the outcome.
        self.on_settled: asyncio.Future[None] | None = None
        self.ran = False
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

    def succeeded(self, value: T) -> None:
        self.ran, self.value, self.error = True, value, None

    def failed(self, error: BaseException) -> None:
        self.ran, self.value, self.error = True, None, error


def _undo_unit(conn: sqlite3.Connection, exc: BaseException) -> None:
    """Roll back the failed unit's savepoint; TransactionLost if SQLite dropped it all."""
    _forget_written(conn)
    if not conn.in_transaction:
        raise TransactionLost(exc)
    conn.execute(_ROLLBACK_TO)
    conn.execute(_RELEASE)


def _run_plain(conn: sqlite3.Connection, jobs: Sequence[Job[Any]]) -> None:
    """Every unit without a savepoint: the fast path (two statements fewer per unit).

    A unit that fails *before writing anything* needs no undo (``total_changes`` tells);
    one that fails after writing raises :class:`_Rerun`.
    """
    for job in jobs:
        before = conn.total_changes
        try:
            value = job.unit(conn)
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
            value = job.unit(conn)
        except Exception as exc:  # noqa: BLE001 - the error goes to its own caller
            _undo_unit(conn, exc)
            job.failed(exc)
            continue
        conn.execute(_RELEASE)
        job.succeeded(value)


def _rollback_now(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        # Nothing left to roll back, or the file is gone: either way nothing committed.
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def run_batch(conn: sqlite3.Connection, jobs: Sequence[Job[Any]]) -> float:
    """In the writer thread: ``BEGIN IMMEDIATE``, every unit, ``COMMIT``; seconds it took.

    A transaction-level error rolls back (if SQLite has not already) and is raised: the
    caller fails the whole batch.
    """
    started = time.perf_counter()
    try:
        conn.execute("BEGIN IMMEDIATE")
        _check_data_version(conn)
        try:
            _run_plain(conn, jobs)
        except _Rerun:
            _forget_written(conn)
            conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
            for job in jobs:
                job.ran, job.value, job.error = False, None, None
            _run_with_savepoints(conn, jobs)
        conn.execute("COMMIT")
    except BaseException:
        _forget_written(conn)
        _rollback_now(conn)
        raise
    return time.perf_counter() - started


class Writer:
    """The one thread that writes the journal, its ``sqlite3`` connection, and the group
    commit that feeds it."""

    def __init__(self, path: Path, *, on_commit: Callable[[float], None] | None) -> None:
        self.path = path
        self._on_commit = on_commit
        # One worker: every call below runs on the same thread, in submission order, so
        # the connection it opens is only ever used there.
        self._thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="lifecycled-journal-writer"
        )
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._queue: deque[Job[Any]] = deque()
        self._flusher: asyncio.Task[None] | None = None

    async def call(self, fn: Unit[T]) -> T:
        """Run ``fn`` on the writer's connection in its thread, outside any group commit
        (opening, migrations, closing). sqlite3 errors are raised as they are."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._with_conn, fn, True)

    def _with_conn(self, fn: Unit[T], outside: bool = False) -> T:
        if self._conn is None:
            raise JournalError(f"journal {self.path} is closed")
        if not outside:
            return fn(self._conn)
        # Outside a group commit it may write (or roll back) anything: forget what the group
        # commits wrote, before and after.
        _forget_written(self._conn)
        try:
            return fn(self._conn)
        finally:
            _forget_written(self._conn)

    async def open(self, uri: str, *, busy_timeout_ms: int, synchronous: str, wal: bool) -> None:
        """Open the connection in the writer thread, with its pragmas."""

        def connect() -> None:
            conn = sqlite3.connect(
                uri,
                uri=True,
                isolation_level=None,
                timeout=busy_timeout_ms / 1000,
                check_same_thread=True,
                factory=WriterConnection,
            )
            try:
                conn.row_factory = sqlite3.Row
                conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
                if wal:
                    _enable_wal(conn, busy_timeout_ms / 1000)
                conn.execute(f"PRAGMA synchronous = {synchronous}")
                conn.execute("PRAGMA foreign_keys = ON")
                conn.execute("PRAGMA temp_store = MEMORY")
                # Touch the schema now so a corrupt or foreign file fails at open.
                conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
            except BaseException:
                conn.close()
                raise
            self._conn = conn

        await asyncio.get_running_loop().run_in_executor(self._thread, connect)

    async def close(self) -> None:
        """Commit what is queued, then close the connection and end the thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._flusher is not None:
            await asyncio.wait({self._flusher})

        def close(conn: sqlite3.Connection) -> None:
            with contextlib.suppress(sqlite3.Error):
                # Keep the planner's statistics fresh (SQLite recommends it before closing).
                conn.execute("PRAGMA optimize")
            conn.close()
            self._conn = None

        try:
            if self._conn is not None:
                await self.call(close)
        finally:
            self._thread.shutdown(wait=False)

    async def write(self, unit: Unit[T], *, durable: bool = False) -> T:
        """Run ``unit`` in the next group commit; its result once that commit is durable.

        ``unit`` is a plain function of the ``sqlite3`` connection; it runs in the writer
        thread together with the other units of its batch. It must not block on anything
        but SQLite. An exception rolls back only this unit's changes and is raised here. A
        caller cancelled meanwhile leaves the unit all or nothing (withdrawn, or committed).

        ``durable``: the write must survive the caller's cancellation — it is never
        withdrawn; a cancelled caller waits for its commit, then re-raises.
        """
        if self._closed:
            raise JournalError(f"journal {self.path} is closed")
        job: Job[T] = Job(asyncio.get_running_loop().create_future(), unit, durable=durable)
        self._queue.append(job)
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush(), name="journal-group-commit"
            )
        try:
            # Cancelling this await cancels the future: a unit not taken yet is then skipped.
            result: T = await job.future
            return result
        except asyncio.CancelledError:
            if durable or job.taken:
                await self._settled(job)
            raise

    async def _settled(self, job: Job[Any]) -> None:
        """A cancelled caller whose unit runs anyway (durable, or already in a batch): wait
        until the flusher is done with it, so what the caller reads next is the outcome."""
        if not job.settled:
            settled = asyncio.get_running_loop().create_future()
            job.on_settled = settled
            while not settled.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait({settled})
        if job.durable and job.error is not None:
            logger.warning("journal.durable_write_failed", exc_info=job.error)

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
                        job.taken = True
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
        loop = asyncio.get_running_loop()
        try:
            elapsed = await loop.run_in_executor(
                self._thread, self._with_conn, lambda conn: run_batch(conn, batch)
            )
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


# --- the store ------------------------------------------------------------------------------


class Store:
    """The journal file: the :class:`Writer` and an aiosqlite connection for reads."""

    def __init__(self, path: Path, writer: Writer, *, uri: str, busy_timeout_ms: int) -> None:
        self.path = path
        self.writer = writer
        self._uri = uri
        self._busy_timeout_ms = busy_timeout_ms
        self._reader: aiosqlite.Connection | None = None
        self._closed = False

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "FULL",
        create: bool = True,
        readonly: bool = False,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        on_commit: Callable[[float], None] | None = None,
    ) -> Store:
        """Open (and with ``create``, create with mode 0600) the journal's writer at ``path``.

        The reader opens with :meth:`open_reader`, once the schema is in place.
        """
        sync = synchronous.upper()
        if sync not in SYNCHRONOUS_MODES:
            raise ConfigError(
                f"journal synchronous mode must be NORMAL, FULL or EXTRA, not {synchronous!r}"
            )
        file = Path(path)
        absolute = await asyncio.to_thread(_prepare_file, file, create=create and not readonly)
        await asyncio.to_thread(_restrict_files, file)
        uri = _uri(absolute, readonly=readonly)
        store = cls(
            file, Writer(file, on_commit=on_commit), uri=uri, busy_timeout_ms=busy_timeout_ms
        )
        try:
            with translated(file):
                await store.writer.open(
                    uri,
                    busy_timeout_ms=busy_timeout_ms,
                    synchronous=sync,
                    wal=not readonly,
                )
            await asyncio.to_thread(_restrict_files, file)  # the -wal/-shm exist now
        except BaseException:
            await store.close()
            raise
        return store

    async def open_reader(self) -> None:
        """Open the read connection (``query_only``; WAL lets it read beside the writer)."""
        with translated(self.path):
            reader = await aiosqlite.connect(
                self._uri, uri=True, isolation_level=None, timeout=self._busy_timeout_ms / 1000
            )
            try:
                reader.row_factory = sqlite3.Row
                await reader.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
                await reader.execute("PRAGMA temp_store = MEMORY")
                await reader.execute("PRAGMA query_only = ON")
            except BaseException:
                await reader.close()
                raise
        self._reader = reader

    async def close(self) -> None:
        """Commit the queued writes, then close both connections (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            await self.writer.close()
        finally:
            reader, self._reader = self._reader, None
            if reader is not None:
                await reader.close()

    async def write(self, unit: Unit[T], *, durable: bool = False) -> T:
        """See :meth:`Writer.write`."""
        return await self.writer.write(unit, durable=durable)

    async def rows(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        """Run one read statement on the reader (its own snapshot); all its rows."""
        if self._closed or self._reader is None:
            raise JournalError(f"journal {self.path} is closed")
        with translated(self.path):
            return list(await self._reader.execute_fetchall(sql, params))

    async def one(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        """Run one read statement on the reader; its first row or ``None``."""
        found = await self.rows(sql, params)
        return found[0] if found else None


class Part:
    """One aggregate's verbs over the journal's :class:`Store` (the ``Journal`` façade is
    composed of these)."""

    def __init__(self, store: Store) -> None:
        self._store = store
