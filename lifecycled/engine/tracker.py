"""Batched task tracking (SPEC §2 step 5).

Running tasks are tracked without holding a worker. All tracked tasks of one node are
resolved together: one ``GET /nodes/{node}/tasks?source=all`` per node per tick (paged on a
busy node, reference §13.9) lists the
running ones (``RUNNING``) and the archived ones with their exit status, and every task of
the node seen in it moves to the same cadence (so a node costs one list per tick, however
many tasks it runs); only tasks missing from that list get an individual status read. The
cadence is fast for young tasks and slower for long ones.

Two cases are cheaper one by one. A node with at most :data:`SMALL` tracked tasks gets
their ``tasks/{upid}/status`` instead of a list. And a task that finished stays listed as
``RUNNING`` until the node's archiver runs (up to ~10 s, reference §12.3): when at most
:data:`PROBE_MAX` listed-as-running tasks remain on a node, those older than the poll
interval get a status read too (backing off per task), instead of waiting for the archiver.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import attrs

from lifecycled.domain.actions import spec_for
from lifecycled.domain.op import Op
from lifecycled.domain.outcome import Decision, after_exit, after_no_such_task
from lifecycled.domain.upid import Upid, UpidError
from lifecycled.domain.userid import bare_user
from lifecycled.engine.clock import Clock
from lifecycled.engine.executor import Applied, Executor, Track, internal_text, op_fields
from lifecycled.errors import JournalUnavailable, PveError
from lifecycled.pve.port import TASK_PAGE, TaskEntry, all_tasks, is_no_such_task

log = logging.getLogger("lifecycled.engine")


#: Tasks on a node up to which per-task status reads cost no more than one list call.
SMALL = 2
#: Listed-as-running tasks on a node up to which each is also confirmed by a status read.
PROBE_MAX = 16
#: Longest wait between two confirmations of one listed-as-running task.
PROBE_MAX_DELAY = 30.0


@attrs.define(kw_only=True)
class _Tracked:
    op: Op
    upid: Upid
    confirm_by_state: bool
    added: float
    next_check: float
    next_probe: float
    probes: int = 0
    failures: int = 0


def poll_delay(age: float, poll_interval: float) -> float:
    """Seconds until the next look at a task that has been running for ``age`` seconds.

    Power actions mostly finish within a couple of seconds: those are looked at often;
    then the cadence relaxes (with the default 2 s: 0.5 s, then 1 s, 2 s, 10 s).
    """
    if age < 2:
        return max(0.1, min(0.5, poll_interval / 4))
    if age < 10:
        return max(0.1, min(1.0, poll_interval / 2))
    if age < 60:
        return poll_interval
    return min(poll_interval * 5, 30.0)


class Tracker:
    """Tracks running tasks and hands their outcome to the executor."""

    def __init__(
        self,
        *,
        executor: Executor,
        clock: Clock,
        poll_interval: float,
        stopping: asyncio.Event,
    ) -> None:
        self.executor = executor
        self.clock = clock
        self.poll_interval = poll_interval
        #: The daemon's one stop signal (owned by the runtime).
        self.stopping = stopping
        self._entries: dict[int, _Tracked] = {}
        self._wake = asyncio.Event()

    def __len__(self) -> int:
        return len(self._entries)

    def tracked_ids(self) -> set[int]:
        return set(self._entries)

    def track(self, op: Op, *, confirm_by_state: bool = False) -> None:
        """Follow ``op``'s task (the op must carry a UPID) until it stops."""
        if op.upid is None:
            raise ValueError(f"op {op.id} has no UPID to track")
        try:
            upid = Upid.parse(op.upid)
        except UpidError:
            log.error("tracker.invalid_upid", extra=op_fields(op))
            return
        now = self.clock.monotonic()
        self._entries[op.id] = _Tracked(
            op=op,
            upid=upid,
            confirm_by_state=confirm_by_state or upid.type.startswith("ha"),
            added=now,
            next_check=now + poll_delay(0, self.poll_interval),
            next_probe=now + self.poll_interval,
        )
        self._wake.set()

    def follow(self, applied: Applied) -> None:
        """Track the op when :meth:`Executor.apply` answered with a :class:`Track`."""
        if isinstance(applied, Track):
            self.track(applied.op, confirm_by_state=applied.confirm_by_state)

    async def run(self) -> None:
        """Poll until stopped. Tasks still running at stop are resolved by the next Recover."""
        while not self.stopping.is_set():
            now = self.clock.monotonic()
            due_nodes = {e.upid.node for e in self._entries.values() if e.next_check <= now}
            for node in sorted(due_nodes):
                if self.stopping.is_set():
                    break
                try:
                    await self._tick_node(node)
                except JournalUnavailable:
                    raise
                except Exception as exc:  # e.g. a task list the adapter failed on
                    log.exception(
                        "tracker.node_failed", extra={"node": node, "error": internal_text(exc)}
                    )
                    for entry in list(self._entries.values()):
                        if entry.upid.node == node:
                            self._reschedule(entry, failed=True)
            await self._sleep_until_due()

    async def _sleep_until_due(self) -> None:
        now = self.clock.monotonic()
        timeout = min((e.next_check for e in self._entries.values()), default=now + 60) - now
        if timeout > 0:
            self._wake.clear()  # entries tracked from here on set it again
        await self.clock.wait_or_stop(self.stopping, timeout, wake=self._wake)

    async def _tick_node(self, node: str) -> None:
        entries = [e for e in self._entries.values() if e.upid.node == node]
        if len(entries) <= SMALL:
            now = self.clock.monotonic()
            for entry in entries:
                if entry.next_check <= now:
                    await self._guarded(entry, self._read_status(entry))
            return
        since = min(e.upid.starttime for e in entries) - 1
        try:
            listed = await all_tasks(
                self.executor.pve,
                node,
                source="all",
                since=since,
                userfilter=bare_user(self.executor.pve.user),
                page=max(TASK_PAGE, 4 * len(entries)),
            )
        except PveError as err:
            log.warning("tracker.list_failed", extra={"node": node, "error": err.text})
            for entry in entries:
                self._reschedule(entry, failed=True)
            return
        by_upid: dict[str, TaskEntry] = {str(item.upid): item for item in listed}
        now = self.clock.monotonic()
        listed_running: list[_Tracked] = []
        for entry in entries:
            item = by_upid.get(str(entry.upid))
            if item is not None and item.status not in (None, "RUNNING"):
                await self._guarded(entry, self._resolve(entry, item.status))
            elif item is None:
                if entry.next_check <= now:
                    await self._guarded(entry, self._read_status(entry))
            else:
                # Seen just now, due or not: the node's tasks share one cadence.
                self._reschedule(entry)
                listed_running.append(entry)
        if len(listed_running) <= PROBE_MAX:
            for entry in listed_running:
                if entry.next_probe <= now and entry.op.id in self._entries:
                    entry.probes += 1
                    entry.next_probe = now + min(
                        self.poll_interval * 2**entry.probes, PROBE_MAX_DELAY
                    )
                    await self._guarded(entry, self._read_status(entry))

    async def _guarded(self, entry: _Tracked, step: Coroutine[Any, Any, None]) -> None:
        """One tracked op's step; an exception stops tracking that op only. Its task may
        still run, so the op is left in flight (noted) for the janitor, never ended here."""
        try:
            await step
        except JournalUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - contain() logs it with the op id
            self._entries.pop(entry.op.id, None)
            await self.executor.contain(entry.op, exc, where="tracker", end=False)

    async def _read_status(self, entry: _Tracked) -> None:
        try:
            status = await self.executor.pve.task_status(entry.upid)
        except PveError as err:
            if is_no_such_task(err):
                await self._decide(
                    entry,
                    after_no_such_task(entry.op, spec_for(entry.op.guest.kind, entry.op.action)),
                )
                return
            log.warning("tracker.status_failed", extra={**op_fields(entry.op), "error": err.text})
            self._reschedule(entry, failed=True)
            return
        if status.running:
            self._reschedule(entry)
        else:
            await self._resolve(entry, status.exitstatus or "unexpected status")

    async def _resolve(self, entry: _Tracked, exitstatus: str) -> None:
        op = entry.op
        spec = spec_for(op.guest.kind, op.action)
        log.info("task.stopped", extra={**op_fields(op), "exitstatus": exitstatus})
        await self._decide(
            entry, after_exit(op, spec, exitstatus, confirm_by_state=entry.confirm_by_state)
        )

    async def _decide(self, entry: _Tracked, decision: Decision) -> None:
        applied = await self.executor.apply(
            entry.op, decision, confirm_by_state=entry.confirm_by_state
        )
        if applied:
            self._entries.pop(entry.op.id, None)
            self.follow(applied)  # another task was found to be the op's own: follow it
        else:
            self._reschedule(entry, failed=True)

    def _reschedule(self, entry: _Tracked, *, failed: bool = False) -> None:
        now = self.clock.monotonic()
        entry.failures = entry.failures + 1 if failed else 0
        delay = poll_delay(now - entry.added, self.poll_interval)
        if failed:
            delay = min(max(delay, self.poll_interval) * (2 ** min(entry.failures, 5)), 60.0)
        entry.next_check = now + delay
