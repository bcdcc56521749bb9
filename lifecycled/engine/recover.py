"""Recover (at startup) and the janitor (stale ops): resolve in-flight ops from Proxmox reads.

Neither ever calls a mutating Proxmox endpoint: they read task status, task lists and guest
state, then change journal state through the executor (SPEC §2 "Recover", "Janitor").
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable

import attrs

from lifecycled.domain.actions import UnsupportedAction, spec_for
from lifecycled.domain.classify import ErrorClass
from lifecycled.domain.op import Op
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
from lifecycled.domain.upid import Upid, UpidError
from lifecycled.engine.clock import Clock
from lifecycled.engine.executor import Executor, op_fields
from lifecycled.engine.tracker import Tracker
from lifecycled.errors import PveError
from lifecycled.journal import Journal
from lifecycled.metrics import Metrics
from lifecycled.pve.port import is_no_such_task

log = logging.getLogger("lifecycled.recover")

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
        """The startup pass: every ``dispatching``/``running`` op, resolved once."""
        started = self.clock.now()
        ops = await self.journal.in_flight()
        counts = await self._examine_all(ops)
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
            elif op.upid:
                why = f"task {op.upid} still running on Proxmox; tracking resumed"
            else:
                why = "outcome undecided; left in flight"
            reason = (
                f"janitor: stuck in {op.state} for {age:.0f}s (no change since "
                f"{rfc3339(op.updated_at)}): {why}"
            )
            if await self.journal.note_stuck(op.id, now=now, reason=reason):
                log.warning("janitor.stuck", extra={**op_fields(op), "reason": why})

    async def _examine_all(self, ops: list[Op]) -> dict[str, int]:
        counts: Counter[str] = Counter()
        sem = asyncio.Semaphore(self.concurrency)

        async def one(op: Op) -> None:
            async with sem:
                result = await self.examine(op)
            counts[result] += 1

        async with asyncio.TaskGroup() as tg:
            for op in ops:
                tg.create_task(one(op), name=f"recover-op-{op.id}")
        counts["examined"] = len(ops)
        for result, n in counts.items():
            self.metrics.recover(result, n)
        return dict(counts)

    async def plan(self, op: Op) -> tuple[str, Decision | None]:
        """What Recover would do with ``op``, from Proxmox reads only (nothing is written).

        Returns a result label and, unless the label is ``resumed`` or ``unresolved``, the
        fully resolved decision (``CHECK``/``SEARCH`` already answered).
        """
        try:
            spec = spec_for(op.guest.kind, op.action)
        except UnsupportedAction as exc:
            return "failed", fail("unsupported action", ErrorClass.PERMANENT, str(exc))
        if op.upid:
            try:
                upid = Upid.parse(op.upid)
            except UpidError:
                return "failed", fail("journaled UPID is invalid", ErrorClass.PERMANENT, op.upid)
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
                    op, spec, since=op.claimed_at or op.created_at
                )
            except PveError as err:
                log.warning("recover.unresolved", extra={**op_fields(op), "error": err.text})
                self.unresolved_why[op.id] = err.text
                return "unresolved", None
            decision = after_search(op, spec, matches, recovering=True)
        resolved = await self.executor.resolve(op, decision)
        if resolved is None:
            return "unresolved", None
        label = {
            Verdict.SUCCEED: "succeeded",
            Verdict.FAIL: "failed",
            Verdict.RETRY: "rolled_back",
            Verdict.ADOPT: "adopted",
        }.get(resolved.verdict, "unresolved")
        return label, resolved

    async def examine(self, op: Op) -> str:
        """Resolve one in-flight op; returns its result label."""
        label, decision = await self.plan(op)
        if decision is None:
            if op.upid:
                self.tracker.track(op)  # still running, or unreadable: the tracker keeps at it
            return label
        await self.executor.apply(op, decision)
        if label == "rolled_back":
            after = await self.journal.get(op.id)
            if after.state is OpState.DEAD_LETTERED:
                return "dead_lettered"
        return label
