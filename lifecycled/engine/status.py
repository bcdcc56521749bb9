"""What the daemon says about itself: the op-count gauges and the status document.

``GET /v1/status``, ``GET /metrics`` and systemd's ``STATUS=`` line read from here. The
runtime only starts :meth:`Gauges.run` among its loops; nothing here changes an op.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from lifecycled.domain.node import NodeRecord
from lifecycled.domain.reconcile import ReconcileReport
from lifecycled.domain.serialize import rfc3339
from lifecycled.domain.states import OpState
from lifecycled.engine.clock import Clock
from lifecycled.engine.health import PveHealth
from lifecycled.engine.reconcile import Reconciler
from lifecycled.errors import JournalError
from lifecycled.journal import Journal
from lifecycled.metrics import Metrics


class _Settings(Protocol):
    @property
    def primary_node(self) -> str: ...
    @property
    def nodes(self) -> tuple[str, ...]: ...


class _Recoverer(Protocol):
    @property
    def last_report(self) -> Any: ...


class _Tracker(Protocol):
    def __len__(self) -> int: ...


class StatusSource(Protocol):
    """What :func:`status` reads (the :class:`~lifecycled.engine.runtime.Runtime`; a
    protocol so this module does not import the composition root)."""

    @property
    def settings(self) -> _Settings: ...
    @property
    def recoverer(self) -> _Recoverer: ...
    @property
    def gauges(self) -> Gauges: ...
    @property
    def ready(self) -> asyncio.Event: ...
    @property
    def stopping(self) -> asyncio.Event: ...
    @property
    def started_at(self) -> float | None: ...
    @property
    def tracker(self) -> _Tracker: ...
    @property
    def health(self) -> PveHealth: ...
    @property
    def reconciler(self) -> Reconciler: ...


log = logging.getLogger("lifecycled.runtime")

#: Seconds between two background refreshes of the gauges.
GAUGES_EVERY = 2.0


class Gauges:
    """Queue depth, dead letters, guest gauges and the served node's lifecycle row, as last
    read from the journal (every :data:`GAUGES_EVERY` seconds, and fully on each scrape)."""

    def __init__(
        self, *, journal: Journal, metrics: Metrics, reconciler: Reconciler, node: str
    ) -> None:
        self.journal = journal
        self.metrics = metrics
        self.reconciler = reconciler
        self.node = node
        self.state_counts: dict[OpState, int] = {}
        self.dead_letters = 0
        #: The served node's lifecycle row as last read (or as a node command left it).
        self.node_record: NodeRecord | None = None

    async def refresh(self, *, full: bool = True) -> None:
        """Refresh the gauges. ``full`` also recounts terminal ops: an index walk that takes
        ~65 ms on a 1,000,000-op journal, so the 2 s background loop leaves it to scrapes
        (``/metrics`` refreshes fully) and keeps the last terminal counts meanwhile."""
        if full:
            self.state_counts = await self.journal.counts_by_state()
        open_counts = await self.journal.open_counts()
        dead_letters = open_counts.pop(OpState.DEAD_LETTERED)
        self.state_counts.update(open_counts)
        self.metrics.set_queue_depth(self.state_counts)
        self.metrics.dead_letters.set(dead_letters)
        self.dead_letters = dead_letters
        self.node_record = await self.journal.get_node(self.node)
        await self.reconciler.refresh_gauges()

    async def run(
        self, stop: asyncio.Event, clock: Clock, *, refreshed: Callable[[], None]
    ) -> None:
        """Refresh every :data:`GAUGES_EVERY` seconds until ``stop``; ``refreshed`` after
        each (the systemd status line). A failed read keeps the last values."""
        while True:
            try:
                await self.refresh(full=False)
            except JournalError as exc:  # a gauge must never stop the daemon
                log.warning("gauges.refresh_failed", extra={"error": str(exc)})
            refreshed()
            if await clock.wait_or_stop(stop, GAUGES_EVERY):
                return


def status_line(gauges: Gauges, health: PveHealth) -> str:
    """One line for ``systemctl status``: in flight, dead letters, Proxmox."""
    counts = gauges.state_counts
    in_flight = sum(counts.get(s, 0) for s in (OpState.DISPATCHING, OpState.RUNNING))
    pending = counts.get(OpState.PENDING, 0)
    pve = "Proxmox unreachable" if health.up is False else "Proxmox ok"
    return f"{in_flight} in flight, {pending} pending, {gauges.dead_letters} dead letters; {pve}"


def reconcile_status(last: ReconcileReport | None) -> dict[str, Any] | None:
    """The last reconcile pass in ``/v1/status``: outcome, counts, LOST and drifted guests."""
    if last is None:
        return None
    return {
        "outcome": last.outcome,
        "at": rfc3339(last.finished_at),
        "enqueued": len(last.enqueued),
        "cancelled": len(last.cancelled),
        "discovered": len(last.discovered),
        "lost": last.lost,
        "drifted": last.drifted,
        "error": last.error,
    }


def status(runtime: StatusSource) -> dict[str, Any]:
    """The runtime's state for ``GET /v1/status`` (the handler adds queue counts and version)."""
    report = runtime.recoverer.last_report
    node_record = runtime.gauges.node_record
    return {
        "node": runtime.settings.primary_node,
        "nodes": list(runtime.settings.nodes),
        "node_state": str(node_record.state) if node_record is not None else None,
        "ready": runtime.ready.is_set(),
        "stopping": runtime.stopping.is_set(),
        "started_at": runtime.started_at,
        "tracked_tasks": len(runtime.tracker),
        "status": "degraded" if runtime.health.up is False else "ok",
        "proxmox": runtime.health.to_dict(),
        "recover": report.to_dict() if report is not None else None,
        "reconcile": reconcile_status(runtime.reconciler.last_report),
    }
