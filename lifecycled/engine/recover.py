"""Recover (at startup) and the janitor (stale ops): resolve in-flight ops from Proxmox reads.

Neither ever calls a mutating Proxmox endpoint: they read task status, task lists and guest
state, then change journal state through the executor (SPEC §2 "Recover", "Janitor").
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from collections.abc import Iterable

import attrs

from lifecycled.domain.actions import UnsupportedAction, spec_for
from lifecycled.domain.classify import ErrorClass
from lifecycled.domain.op import GuestKind, Op
from lifecycled.domain.outcome import (
    Decision,
    Verdict,
    after_exit,
    after_no_such_task,
    after_search,
    fail,
)
from lifecycled.domain.serialize import rfc3339
from lifecycled.domain.states import OpState
from lifecycled.domain.userid import bare_user
from lifecycled.engine.clock import Clock
from lifecycled.engine.executor import Executor, NodeTasks, Prefetched, op_fields
from lifecycled.engine.tracker import Tracker
from lifecycled.errors import JournalUnavailable, PveError, RequestNotSent
from lifecycled.journal import Journal
from lifecycled.metrics import Metrics
from lifecycled.pve.port import GuestStatus, all_tasks, is_no_such_task

log = logging.getLogger("lifecycled.recover")

#: Recover prefetches task lists and the guest list when more ops than this are in flight.
_PREFETCH_FROM = 4
#: Ops examined at once when prefetched (mostly journal writes, which group-commit).
_PREFETCHED_CONCURRENCY = 64

RESULTS = (
    "examined",
    "succeeded",
    "failed",
    "dead_lettered",
    "rolled_back",
    "resumed",
    "adopted",
    "unresolved",
)


@attrs.frozen(kw_only=True)
class RecoverReport:
    """What one Recover pass did, by result (SPEC §2)."""

    counts: dict[str, int]
    started_at: float
    finished_at: float

    def to_dict(self) -> dict[str, object]:
        return {
            **{k: self.counts.get(k, 0) for k in RESULTS},
            "duration_seconds": round(self.finished_at - self.started_at, 3),
        }


class Recoverer:
    """Resolves in-flight ops once (Recover) and periodically for stale ones (janitor)."""

    def __init__(
        self,
        *,
        journal: Journal,
        executor: Executor,
        tracker: Tracker,
        clock: Clock,
        metrics: Metrics,
        concurrency: int = 8,
    ) -> None:
        self.journal = journal
        self.executor = executor
        self.tracker = tracker
        self.clock = clock
        self.metrics = metrics
        self.concurrency = concurrency
        self.last_report: RecoverReport | None = None
        #: Why the last janitor pass could not resolve an op (the Proxmox error), by op id.
        self.unresolved_why: dict[int, str] = {}

    async def recover(self) -> RecoverReport:
        """The startup pass: every ``dispatching``/``running`` op, resolved once.

        With more than a few ops in flight, each node's task list and its live guest lists
        are read once up front (:meth:`prefetch`): most ops then find their task, or
        their guest's state, there instead of costing one or two requests each.
        """
        started = self.clock.now()
        ops = await self.journal.in_flight()
        prefetched = await self.prefetch(ops) if len(ops) > _PREFETCH_FROM else None
        concurrency = _PREFETCHED_CONCURRENCY if prefetched is not None else self.concurrency
        counts = await self._examine_all(ops, prefetched=prefetched, concurrency=concurrency)
        report = RecoverReport(counts=counts, started_at=started, finished_at=self.clock.now())
        self.last_report = report
        log.info("recover.finished", extra=report.to_dict())
        return report

    async def janitor_pass(self, *, stale_after: float, busy: Iterable[int] = ()) -> dict[str, int]:
        """Re-examine ops in flight longer than ``stale_after`` that nobody here is handling."""
        skip = set(busy) | self.tracker.tracked_ids()
        cutoff = self.clock.now() - stale_after
        ops = [
            op for op in await self.journal.stale_in_flight(older_than=cutoff) if op.id not in skip
        ]
        if not ops:
            return {}
        for op in ops:
            log.warning("janitor.stale_op", extra={**op_fields(op), "state": str(op.state)})
        self.unresolved_why.clear()
        counts = await self._examine_all(ops)
        await self._mark_stuck(ops)
        return counts

    async def _mark_stuck(self, ops: list[Op]) -> None:
        """Say in each still-stuck op's history why it is stuck (its state is unchanged)."""
        now = self.clock.now()
        for op in ops:
            current = await self.journal.get(op.id)
            if not current.state.is_in_flight or current.updated_at != op.updated_at:
                continue  # resolved (or moved on) by this pass
            age = now - op.updated_at
            if op.id in self.unresolved_why:
                why = f"Proxmox unreadable ({self.unresolved_why[op.id]}); left in flight"
            elif op.upid_text:
                why = f"task {op.upid_text} still running on Proxmox; tracking resumed"
            else:
                why = "outcome undecided; left in flight"
            reason = (
                f"janitor: stuck in {op.state} for {age:.0f}s (no change since "
                f"{rfc3339(op.updated_at)}): {why}"
            )
            if await self.journal.note_stuck(op.id, now=now, reason=reason):
                log.warning("janitor.stuck", extra={**op_fields(op), "reason": why})

    async def prefetch(self, ops: list[Op]) -> Prefetched:
        """One complete task list per node the ops touch (read page by page), and each of
        those nodes' live guest lists (never the lagging ``/cluster/resources``).

        A failed read is left out: those ops read the usual way.
        """
        floors: dict[str, float] = {}
        for op in ops:
            nodes = {op.guest.node}
            start = op.claimed_at or op.created_at
            if op.upid is not None:
                nodes.add(op.upid.node)
                start = min(start, op.upid.starttime)
            for node in nodes:
                floors[node] = min(floors.get(node, start), start)
        pve = self.executor.pve
        tasks: dict[str, NodeTasks] = {}
        for node, floor in sorted(floors.items()):
            since = math.floor(floor - self.executor.skew) - 60
            try:
                items = await all_tasks(
                    pve, node, source="all", since=since, userfilter=bare_user(pve.user)
                )
            except PveError as err:
                log.warning("recover.prefetch_failed", extra={"node": node, "error": err.text})
                continue
            except RequestNotSent as exc:  # a node name no request can carry: read per op
                log.warning("recover.prefetch_failed", extra={"node": node, "error": str(exc)})
                continue
            tasks[node] = NodeTasks.of(since, items)
        guests: dict[tuple[str, GuestKind, int], GuestStatus] = {}
        listed: set[tuple[str, GuestKind]] = set()
        for node, kind in sorted({(op.guest.node, op.guest.kind) for op in ops}):
            try:
                statuses = await pve.node_guests(node, kind)
            except PveError as err:
                log.warning("recover.prefetch_failed", extra={"node": node, "error": err.text})
                continue
            except RequestNotSent as exc:  # a node name no request can carry: read per op
                log.warning("recover.prefetch_failed", extra={"node": node, "error": str(exc)})
                continue
            listed.add((node, kind))
            guests.update({(node, kind, st.vmid): st for st in statuses})
        return Prefetched(tasks=tasks, guests=guests, listed=frozenset(listed))

    async def _examine_all(
        self, ops: list[Op], *, prefetched: Prefetched | None = None, concurrency: int | None = None
    ) -> dict[str, int]:
        counts: Counter[str] = Counter()
        sem = asyncio.Semaphore(concurrency or self.concurrency)

        async def one(op: Op) -> None:
            async with sem:
                try:
                    result = await self.examine(op, prefetched=prefetched)
                except JournalUnavailable:
                    raise
                except Exception as exc:  # noqa: BLE001 - one bad op never stops Recover; contain() logs it
                    # In flight after a crash its POST may have been sent: never ended here.
                    await self.executor.contain(op, exc, where="recover", end=False)
                    result = "unresolved"
            counts[result] += 1

        async with asyncio.TaskGroup() as tg:
            for op in ops:
                tg.create_task(one(op), name=f"recover-op-{op.id}")
        counts["examined"] = len(ops)
        for result, n in counts.items():
            self.metrics.recover(result, n)
        return dict(counts)

    async def plan(
        self, op: Op, *, prefetched: Prefetched | None = None
    ) -> tuple[str, Decision | None]:
        """What Recover would do with ``op``, from Proxmox reads only (nothing is written).

        Returns a result label and, unless the label is ``resumed`` or ``unresolved``, the
        fully resolved decision (``CHECK``/``SEARCH`` already answered).
        """
        try:
            spec = spec_for(op.guest.kind, op.action)
        except UnsupportedAction as exc:
            return "failed", fail("unsupported action", ErrorClass.PERMANENT, str(exc))
        if op.upid_text:
            upid = op.upid
            if upid is None:
                return (
                    "failed",
                    fail("journaled UPID is invalid", ErrorClass.PERMANENT, op.upid_text),
                )
            listed = None
            if prefetched is not None and upid.node in prefetched.tasks:
                listed = prefetched.tasks[upid.node].find(op.upid_text)
            if listed is not None and listed.status not in (None, "RUNNING"):
                # Archived with its exit status: no status read needed.
                return await self._resolved(
                    op,
                    after_exit(
                        op, spec, listed.status, confirm_by_state=upid.type.startswith("ha")
                    ),
                    prefetched,
                )
            try:
                status = await self.executor.pve.task_status(upid)
            except PveError as err:
                if not is_no_such_task(err):
                    log.warning("recover.unresolved", extra={**op_fields(op), "error": err.text})
                    self.unresolved_why[op.id] = err.text
                    return "unresolved", None
                decision = after_no_such_task(op, spec)
            else:
                if status.running:
                    return "resumed", None
                decision = after_exit(
                    op,
                    spec,
                    status.exitstatus or "unexpected status",
                    confirm_by_state=upid.type.startswith("ha"),
                )
        else:
            try:
                matches = await self.executor.search_tasks(
                    op, spec, since=op.claimed_at or op.created_at, prefetched=prefetched
                )
            except PveError as err:
                log.warning("recover.unresolved", extra={**op_fields(op), "error": err.text})
                self.unresolved_why[op.id] = err.text
                return "unresolved", None
            decision = after_search(op, spec, matches, recovering=True)
        return await self._resolved(op, decision, prefetched)

    async def _resolved(
        self, op: Op, decision: Decision, prefetched: Prefetched | None
    ) -> tuple[str, Decision | None]:
        resolved = await self.executor.resolve(op, decision, prefetched=prefetched)
        if resolved is None or resolved.verdict is Verdict.LEAVE:
            # Nothing to decide now (a read failed, or the task's outcome is not known yet):
            # an op with a UPID goes back to the tracker, which reads it again later.
            if resolved is not None:
                self.unresolved_why[op.id] = resolved.reason
            return "unresolved", None
        label = {
            Verdict.SUCCEED: "succeeded",
            Verdict.FAIL: "failed",
            Verdict.RETRY: "rolled_back",
            Verdict.ADOPT: "adopted",
        }.get(resolved.verdict, "unresolved")
        return label, resolved

    async def examine(self, op: Op, *, prefetched: Prefetched | None = None) -> str:
        """Resolve one in-flight op; returns its result label."""
        label, decision = await self.plan(op, prefetched=prefetched)
        if decision is None:
            if op.upid_text:
                self.tracker.track(op)  # still running, or unreadable: the tracker keeps at it
            return label
        applied = await self.executor.apply(op, decision)
        if not applied:
            return "unresolved"  # e.g. the found task was recorded by another op meanwhile
        self.tracker.follow(applied)
        if label == "rolled_back":
            after = await self.journal.get(op.id)
            if after.state is OpState.DEAD_LETTERED:
                return "dead_lettered"
        return label
