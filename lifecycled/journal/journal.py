"""The journal: every op, its history and its state changes, in one SQLite file.

This is the only code that speaks SQL (with the modules beside it). Verbs take the current
time from the caller (``now``, epoch seconds) so tests and plans control time.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Collection
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from lifecycled.domain.lifecycle import Verb
from lifecycled.domain.op import Op, OpError
from lifecycled.domain.states import OpState
from lifecycled.errors import JournalOutdated
from lifecycled.journal import migrations, units
from lifecycled.journal.audit import AuditVerbs
from lifecycled.journal.guests import GuestVerbs
from lifecycled.journal.nodes import NodeVerbs
from lifecycled.journal.nonces import NonceVerbs
from lifecycled.journal.opguards import OpGuardVerbs
from lifecycled.journal.outbox import OutboxVerbs
from lifecycled.journal.queries import ReadVerbs
from lifecycled.journal.records import SubmitRequest, SubmitResult
from lifecycled.journal.store import DEFAULT_BUSY_TIMEOUT_MS, Store, translated

logger = logging.getLogger("lifecycled.journal")

T = TypeVar("T")

_DELETE_BATCH = 500


class Journal(ReadVerbs, AuditVerbs, OutboxVerbs, NodeVerbs, NonceVerbs, GuestVerbs, OpGuardVerbs):
    """The op journal on one SQLite file (one writer thread, one read connection)."""

    def __init__(
        self, store: Store, *, schema_version: int, applied: tuple[str, ...], known: int
    ) -> None:
        self._store = store
        self._schema_version = schema_version
        self._applied = applied
        self._known = known

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "FULL",
        migrate: bool = True,
        create: bool = True,
        readonly: bool = False,
        on_commit: Callable[[float], None] | None = None,
        migrations_dir: str | os.PathLike[str] | None = None,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
    ) -> Journal:
        """Open the journal at ``path``, creating (mode 0600) and migrating it as asked.

        ``migrate=False`` refuses a journal older than this lifecycled instead of upgrading
        it; ``readonly`` never writes (and so never migrates). ``migrations_dir`` replaces
        the packaged migrations (tests, tooling).
        """
        source = Path(migrations_dir) if migrations_dir is not None else None
        known_migrations = await asyncio.to_thread(migrations.load_migrations, source)
        known = known_migrations[-1].version
        store = await Store.open(
            path,
            synchronous=synchronous,
            create=create,
            readonly=readonly,
            busy_timeout_ms=busy_timeout_ms,
            on_commit=on_commit,
        )
        try:
            call = store.writer.call
            with translated(store.path):
                version = await call(lambda c: migrations.check_identity(c, store.path, known))
                applied: list[migrations.Migration] = []
                if version < known and migrate and not readonly:
                    applied = await call(lambda c: migrations.apply_migrations(c, known_migrations))
                    version = await call(migrations.read_version)
            if version < known:
                raise JournalOutdated(
                    f"journal schema version {version} is older than this lifecycled "
                    f"(knows {known}): run lifecycled db migrate --db {store.path}",
                    version=version,
                    known=known,
                )
            await store.open_reader()
        except BaseException:
            await store.close()
            raise
        logger.info("journal.opened", extra={"path": str(store.path), "schema_version": version})
        return cls(
            store, schema_version=version, applied=tuple(m.label for m in applied), known=known
        )

    async def close(self) -> None:
        """Commit the writes still queued (durable ones included), then close."""
        await self._store.close()

    async def __aenter__(self) -> Journal:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def path(self) -> Path:
        return self._store.path

    @property
    def schema_version(self) -> int:
        """The journal file's schema version (``PRAGMA user_version``)."""
        return self._schema_version

    @property
    def known_schema_version(self) -> int:
        """The newest schema version this lifecycled knows."""
        return self._known

    @property
    def applied_migrations(self) -> tuple[str, ...]:
        """Migrations applied by this :meth:`open` (``("0001_initial",)`` on a new file)."""
        return self._applied

    # -- writes ----------------------------------------------------------------------------

    async def submit(self, req: SubmitRequest, *, now: float) -> SubmitResult:
        """Journal a new op, or deduplicate / re-arm by idempotency key (SPEC §1).

        A client's retry of a key in flight or succeeded is answered from inside the group
        commit (a read, no change): a separate read first would cost every submission a
        thread hop.
        """
        return await self._store.write(lambda c: units.submit(c, req, now=now))

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
        return await self._store.write(
            lambda c: units.claim(c, now=now, node_cap=node_cap, nodes=nodes)
        )

    async def record_upid(
        self, op_id: int, upid: str, *, now: float, reason: str = "task started"
    ) -> Op:
        """Journal the task id Proxmox returned: dispatching → running (survives cancellation).

        :class:`UpidTaken` when another op already recorded ``upid``."""
        return await self._store.write(
            lambda c: units.take_upid(c, op_id, upid, Verb.RECORD_UPID, now=now, reason=reason),
            durable=True,
        )

    async def set_upid_in_flight(self, op_id: int, upid: str, *, now: float, reason: str) -> Op:
        """Adopt a task id for an in-flight op (recover/janitor); a dispatching op → running.

        :class:`UpidTaken` when another op already recorded ``upid``."""
        return await self._store.write(
            lambda c: units.take_upid(c, op_id, upid, Verb.SET_UPID, now=now, reason=reason),
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
            lambda c: units.finish(
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
            lambda c: units.requeue(
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
            lambda c: units.transition(
                c, units.load(c, op_id), Verb.DEAD_LETTER, now=now, reason=reason, error=error
            ),
            durable=True,
        )

    async def cancel(self, op_id: int, *, now: float, reason: str) -> Op:
        """Cancel a pending op (any other state: :class:`InvalidTransition`)."""
        return await self._store.write(
            lambda c: units.transition(c, units.load(c, op_id), Verb.CANCEL, now=now, reason=reason)
        )

    async def retry(self, op_id: int, *, now: float, reason: str) -> Op:
        """An operator's retry: failed / dead_lettered / cancelled → pending, fresh attempts."""
        return await self._store.write(
            lambda c: units.transition(c, units.load(c, op_id), Verb.RETRY, now=now, reason=reason)
        )

    async def discard(self, op_id: int, *, now: float, reason: str) -> Op:
        """Take a dead letter out of the DLQ listing (state unchanged). Idempotent."""
        return await self._store.write(lambda c: units.discard(c, op_id, now=now, reason=reason))

    async def _delete_in_batches(self, sql: str, params: list[Any]) -> int:
        # Short transactions: a big prune never holds up other writers for long.
        total = 0
        while True:
            n = await self._store.write(lambda c: units.delete_returning(c, sql, params))
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
