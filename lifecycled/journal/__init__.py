"""The journal: every op, its history, the guests, nodes and events lifecycled keeps, in one
SQLite file — the only code that speaks SQL (SPEC §2, STYLE principle 4).

:class:`Journal` is a façade composed of one part per aggregate, each in its module:

* :mod:`~lifecycled.journal.store` — the connections: one writer thread with group commit,
  one async reader (docs/ARCHITECTURE.md "The journal's threads");
* :mod:`~lifecycled.journal.migrations` — the schema;
* :mod:`~lifecycled.journal.ops` — op records and the op writes (:class:`Ops`);
* :mod:`~lifecycled.journal.op_queries` — reads over ops (:class:`OpQueries`);
* :mod:`~lifecycled.journal.guests` — guests, and op writes guarded by a guest (:class:`Guests`);
* :mod:`~lifecycled.journal.nodes` — the node lifecycle (:class:`Nodes`);
* :mod:`~lifecycled.journal.events` — audit, outbox and nonces (:class:`Events`);
* :mod:`~lifecycled.journal.daemonlock` — one daemon per journal.

Verbs take the current time from the caller (``now``, epoch seconds) so tests and plans
control time. Every record a verb returns is exported here.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Concatenate, Generic, ParamSpec, Self, TypeVar, overload

from lifecycled.audit import AuditPage, AuditRecord
from lifecycled.domain.events import OutboxEvent
from lifecycled.domain.guests import GuestRecord
from lifecycled.domain.node import NodeRecord
from lifecycled.domain.op import HistoryEntry, Op
from lifecycled.errors import JournalOutdated
from lifecycled.journal import migrations
from lifecycled.journal.events import Events
from lifecycled.journal.guests import GuestPage, Guests, Ownership
from lifecycled.journal.nodes import NodeChange, Nodes
from lifecycled.journal.op_queries import OpQueries
from lifecycled.journal.ops import OpPage, Ops, SubmitRequest, SubmitResult
from lifecycled.journal.store import DEFAULT_BUSY_TIMEOUT_MS, Store, translated

__all__ = [
    "AuditPage",
    "AuditRecord",
    "GuestPage",
    "GuestRecord",
    "HistoryEntry",
    "Journal",
    "NodeChange",
    "NodeRecord",
    "Op",
    "OpPage",
    "OutboxEvent",
    "Ownership",
    "SubmitRequest",
    "SubmitResult",
]

logger = logging.getLogger("lifecycled.journal")

P = ParamSpec("P")
R = TypeVar("R")


class _Via(Generic[P, R]):
    """A :class:`Journal` method that is one of its parts' methods (typed as that method).

    The bound method is cached on the instance at first use, so later calls cost what a
    plain method call costs.
    """

    def __init__(self, part: str, method: Callable[Concatenate[Any, P], R]) -> None:
        self._part = part
        self._method = method.__name__
        self.__doc__ = method.__doc__
        self._name = self._method

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self._name = name

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> Self: ...

    @overload
    def __get__(self, obj: Journal, owner: type[Any]) -> Callable[P, R]: ...

    def __get__(self, obj: Journal | None, owner: type[Any]) -> Self | Callable[P, R]:
        if obj is None:
            return self
        bound: Callable[P, R] = getattr(getattr(obj, self._part), self._method)
        obj.__dict__[self._name] = bound
        return bound


class Journal:
    """The op journal on one SQLite file (one writer thread, one read connection): a façade
    over its parts ``ops``, ``op_queries``, ``guests``, ``nodes`` and ``events``."""

    def __init__(
        self, store: Store, *, schema_version: int, applied: tuple[str, ...], known: int
    ) -> None:
        self._store = store
        self._schema_version = schema_version
        self._applied = applied
        self._known = known
        self.ops = Ops(store)
        self.op_queries = OpQueries(store)
        self.guests = Guests(store)
        self.nodes = Nodes(store)
        self.events = Events(store)

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

    # -- ops: writes --------------------------------------------------------------------------

    submit = _Via("ops", Ops.submit)
    claim_next = _Via("ops", Ops.claim_next)
    record_upid = _Via("ops", Ops.record_upid)
    set_upid_in_flight = _Via("ops", Ops.set_upid_in_flight)
    finish = _Via("ops", Ops.finish)
    requeue = _Via("ops", Ops.requeue)
    dead_letter = _Via("ops", Ops.dead_letter)
    cancel = _Via("ops", Ops.cancel)
    retry = _Via("ops", Ops.retry)
    discard = _Via("ops", Ops.discard)
    purge_discarded = _Via("ops", Ops.purge_discarded)
    prune = _Via("ops", Ops.prune)
    defer = _Via("ops", Ops.defer)
    note_stuck = _Via("ops", Ops.note_stuck)

    # -- ops: reads ----------------------------------------------------------------------------

    get = _Via("op_queries", OpQueries.get)
    get_dead_letter = _Via("op_queries", OpQueries.get_dead_letter)
    recorded_upids = _Via("op_queries", OpQueries.recorded_upids)
    history = _Via("op_queries", OpQueries.history)
    succeeded_task_durations = _Via("op_queries", OpQueries.succeeded_task_durations)
    by_key = _Via("op_queries", OpQueries.by_key)
    in_flight = _Via("op_queries", OpQueries.in_flight)
    stale_in_flight = _Via("op_queries", OpQueries.stale_in_flight)
    open_counts = _Via("op_queries", OpQueries.open_counts)
    list_ops = _Via("op_queries", OpQueries.list_ops)
    list_dead_letters = _Via("op_queries", OpQueries.list_dead_letters)
    counts_by_state = _Via("op_queries", OpQueries.counts_by_state)
    integrity_check = _Via("op_queries", OpQueries.integrity_check)
    backup = _Via("op_queries", OpQueries.backup)
    open_ops_by_vmid = _Via("op_queries", OpQueries.open_ops_by_vmid)
    latest_reconcile_ops = _Via("op_queries", OpQueries.latest_reconcile_ops)
    config_changes = _Via("op_queries", OpQueries.config_changes)

    # -- guests --------------------------------------------------------------------------------

    find_guest = _Via("guests", Guests.find_guest)
    get_guest = _Via("guests", Guests.get_guest)
    all_guests = _Via("guests", Guests.all_guests)
    list_guests = _Via("guests", Guests.list_guests)
    guest_hashes = _Via("guests", Guests.guest_hashes)
    guest_counts = _Via("guests", Guests.guest_counts)
    take_guest = _Via("guests", Guests.take_guest)
    release_guest = _Via("guests", Guests.release_guest)
    set_desired = _Via("guests", Guests.set_desired)
    sync_ownership = _Via("guests", Guests.sync_ownership)
    follow_digest = _Via("guests", Guests.follow_digest)
    apply_observations = _Via("guests", Guests.apply_observations)
    record_digests = _Via("guests", Guests.record_digests)
    rebaseline = _Via("guests", Guests.rebaseline)
    submit_guest_op = _Via("guests", Guests.submit_guest_op)
    enqueue_reconcile = _Via("guests", Guests.enqueue_reconcile)
    soft_delete = _Via("guests", Guests.soft_delete)

    # -- nodes ---------------------------------------------------------------------------------

    get_node = _Via("nodes", Nodes.get_node)
    registered_nodes = _Via("nodes", Nodes.registered_nodes)
    ensure_node = _Via("nodes", Nodes.ensure_node)
    transition_node = _Via("nodes", Nodes.transition_node)
    refuse_node_change = _Via("nodes", Nodes.refuse_node_change)
    decommission_node = _Via("nodes", Nodes.decommission_node)
    mark_system_node = _Via("nodes", Nodes.mark_system_node)

    # -- audit, outbox, nonces -----------------------------------------------------------------

    append_audit = _Via("events", Events.append_audit)
    prune_audit = _Via("events", Events.prune_audit)
    list_audit = _Via("events", Events.list_audit)
    unsent_events = _Via("events", Events.unsent_events)
    set_push = _Via("events", Events.set_push)
    push_enabled = _Via("events", Events.push_enabled)
    mark_sent = _Via("events", Events.mark_sent)
    outbox_size = _Via("events", Events.outbox_size)
    note_attempt = _Via("events", Events.note_attempt)
    outbox_position = _Via("events", Events.outbox_position)
    prune_outbox = _Via("events", Events.prune_outbox)
    remember_nonce = _Via("events", Events.remember_nonce)
    nonce_count = _Via("events", Events.nonce_count)
