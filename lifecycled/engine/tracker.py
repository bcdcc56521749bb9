"""Batched task tracking (SPEC §2 step 5), on a schedule learned from how long tasks take.

Each tracked task is looked at on its own schedule (:mod:`lifecycled.domain.polling`): when
its kind of task has likely ended on its node (learned from the journal's history, relearned
while the daemon runs), then ever less often. Without history the cadence is the fixed one
(fast while young, then the poll interval).

A node with at most :data:`SMALL` tasks tracked gets ``tasks/{upid}/status`` reads for its due
tasks. With more, one ``GET /nodes/{node}/tasks?source=all`` (paged on a busy node, reference
§13.9) answers for every task of the node: the archived ones carry their exit status; only
tasks missing from the list get an individual status read. A task that finished stays listed
as ``RUNNING`` until the node's archiver runs (at the node's next fork, or on pvestatd's ~10 s
loop, reference §4.3/§12.3), so such a listing proves nothing:

* a due task listed as running once it has likely ended is read to confirm, at most
  :data:`PROBE_MAX` per node per tick (the most urgent first);
* a task whose status read is due — its proof window since its last status read, or since
  tracking began, has passed (:func:`lifecycled.domain.polling.proof_window`) — is read
  whatever the list says, never deferred; a tick that finds only such tasks due reads them
  without listing.

So a task that has ended is noticed — its op terminal — at most one poll interval after its
end, counting only looks that could have proved it, with two exceptions:

* the status reads of a node are a budget (:data:`~lifecycled.domain.polling.READ_RATE` a
  second, :data:`READ_CONCURRENCY` in flight): past
  :func:`~lifecycled.domain.polling.promised_tasks` long tasks on a node (36 at the default
  2 s) the due reads are shared most-overdue first, the rest waiting :data:`DEFER` for the
  budget to refill — each task is still read in turn, and the node's task list (then at most
  one per poll interval) resolves the ended tasks its archiver has filed;
* Proxmox failing to answer: a failed read backs off its task, and a node that does not answer
  (:func:`~lifecycled.domain.polling.node_failing`) has its reads end for the tick and all its
  tasks backed off, as after a failed task list. Backoff is never bypassed while the node
  fails: it is looked at when a backoff ends (a list, or the reads then due; after a list
  that answers, the most overdue task is read). The first status read it answers brings its
  other tasks forward, read within its budget most overdue first: an ended task is noticed
  within about one poll interval of that answer, not at the end of its own backoff.

Each node is ticked in its own asyncio task, so a node answering slowly (or timing out) never
delays another node's looks.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Coroutine
from typing import Any, TypeVar

import attrs

from lifecycled.domain.actions import spec_for
from lifecycled.domain.op import Op
from lifecycled.domain.outcome import Decision, after_exit, after_no_such_task
from lifecycled.domain.polling import (
    READ_BURST,
    Durations,
    TaskKey,
    after_failure,
    key_of,
    learn,
    likely_ended,
    next_look,
    node_failing,
    proof_due,
    proof_window,
    read_tokens,
)
from lifecycled.domain.upid import Upid, UpidError
from lifecycled.domain.userid import bare_user
from lifecycled.engine.clock import Clock
from lifecycled.engine.executor import Applied, Executor, Track, internal_text, op_fields
from lifecycled.errors import JournalError, JournalUnavailable, PveError
from lifecycled.pve.port import TASK_PAGE, TaskEntry, all_tasks, is_no_such_task

log = logging.getLogger("lifecycled.engine")

_T = TypeVar("_T")


#: Tracked tasks on a node up to which per-task status reads are cheaper than one task list.
SMALL = 2
#: Status reads per node per tick that confirm tasks listed as running past their likely end
#: (reads that the poll interval makes due are not counted: they are never deferred).
PROBE_MAX = 32
#: Longest "shortest wait" between two task lists of one node (a list answers for all).
LIST_GAP = 0.5
#: Status reads of one node in flight at once (pveproxy answers with 3 workers by default).
READ_CONCURRENCY = 4
#: How long a due read the node's budget could not have waits (seconds; at least LIST_GAP).
DEFER = 0.5
#: Succeeded ops the task durations are learned from (the newest).
LEARN_FROM = 1000
#: Shortest time between two relearnings of the task durations while ops keep ending.
RELEARN_EVERY = 5.0


@attrs.define(kw_only=True)
class _Tracked:
    op: Op
    upid: Upid
    confirm_by_state: bool
    added: float
    #: When a status read is due, whatever a task list says: a proof window after the last
    #: look that could have proved the task ended (a status read that answered "running",
    #: or the start of tracking; a list showing it RUNNING is not one).
    read_by: float
    next_check: float
    looks: int = 0
    failures: int = 0


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
        #: Shortest wait between two task lists of one node (a quarter of the poll interval,
        #: at most LIST_GAP).
        self._list_gap = min(LIST_GAP, poll_interval / 4)
        #: The daemon's one stop signal (owned by the runtime).
        self.stopping = stopping
        #: What each task type takes on each node, as last learned (:meth:`learn`).
        self.durations: dict[TaskKey, Durations] = {}
        self._learned_at: float | None = None
        self._ended_since_learning = False
        self._entries: dict[int, _Tracked] = {}
        #: Each node's status-read budget: (reads in hand, when counted).
        self._budget: dict[str, tuple[float, float]] = {}
        self._wake = asyncio.Event()
        #: When each node's tasks were last listed.
        self._listed_at: dict[str, float] = {}
        #: When a node whose last tick had to defer reads may be ticked again.
        self._resume: dict[str, float] = {}
        #: Nodes backed off as a whole (no answer), until a status read of theirs is answered.
        self._failing: set[str] = set()
        #: Each node's tick under way (:meth:`run`).
        self._ticking: dict[str, asyncio.Task[None]] = {}
        #: The journal failure a node's tick ended with, raised by :meth:`run`.
        self._fatal: BaseException | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def tracked_ids(self) -> set[int]:
        return set(self._entries)

    def track(self, op: Op, *, confirm_by_state: bool = False) -> None:
        """Follow ``op``'s task (the op must carry a UPID) until it stops."""
        if not op.upid_text:
            raise ValueError(f"op {op.id} has no UPID to track")
        upid = op.upid
        if upid is None:
            log.error("tracker.invalid_upid", extra=op_fields(op))
            return
        now = self.clock.monotonic()
        self._entries[op.id] = _Tracked(
            op=op,
            upid=upid,
            confirm_by_state=confirm_by_state or upid.type.startswith("ha"),
            added=now,
            read_by=now + proof_window(self.poll_interval, after_read=False),
            next_check=now + self._next_look(upid, 0.0),
        )
        self._wake.set()

    def follow(self, applied: Applied) -> None:
        """Track the op when :meth:`Executor.apply` answered with a :class:`Track`."""
        if isinstance(applied, Track):
            self.track(applied.op, confirm_by_state=applied.confirm_by_state)

    async def learn(self) -> None:
        """Learn the task durations from the journal's recent succeeded ops; tasks not yet
        looked at are planned again with them. A failed read keeps what was known."""
        self._learned_at = self.clock.monotonic()
        self._ended_since_learning = False
        try:
            rows = await self.executor.journal.succeeded_task_durations(limit=LEARN_FROM)
        except JournalError as exc:
            log.warning("tracker.learn_failed", extra={"error": str(exc)})
            return
        samples: list[tuple[Upid, float]] = []
        for text, seconds in rows:
            try:
                samples.append((Upid.parse(text), seconds))
            except UpidError:
                continue
        self.durations = learn(samples)
        log.debug("tracker.learned", extra={"task_types": len(self.durations)})
        for entry in self._entries.values():
            if entry.looks == 0 and not entry.failures:
                entry.next_check = entry.added + self._next_look(entry.upid, 0.0)

    async def run(self) -> None:
        """Poll until stopped. Tasks still running at stop are resolved by the next Recover.

        Each due node is ticked in a task of its own: a node that answers slowly (or not at
        all, until its reads time out) never holds up another node's ticks. A node is never
        ticked twice at once."""
        try:
            while not self.stopping.is_set():
                if self._fatal is not None:
                    fatal, self._fatal = self._fatal, None
                    raise fatal
                now = self.clock.monotonic()
                if self._ended_since_learning and (
                    self._learned_at is None or now - self._learned_at >= RELEARN_EVERY
                ):
                    await self.learn()
                due_nodes = {
                    e.upid.node
                    for e in self._entries.values()
                    if self._due_at(e) <= now and e.upid.node not in self._ticking
                }
                for node in sorted(due_nodes):
                    tick = asyncio.create_task(self._tick_node_contained(node))
                    self._ticking[node] = tick
                    tick.add_done_callback(functools.partial(self._ticked, node))
                await self._sleep_until_due()
        finally:
            if self._ticking:  # each tick is bounded (its reads time out): let them finish
                await asyncio.gather(*self._ticking.values(), return_exceptions=True)

    @property
    def busy(self) -> bool:
        """Whether a node's tick is under way, or the loop has yet to plan after a change (a
        tick ended, a task was tracked): when False, the loop waits for its next look."""
        return bool(self._ticking) or self._wake.is_set()

    def _ticked(self, node: str, tick: asyncio.Task[None]) -> None:
        self._ticking.pop(node, None)
        if not tick.cancelled() and isinstance(tick.exception(), JournalUnavailable):
            self._fatal = tick.exception()
        self._wake.set()

    async def _tick_node_contained(self, node: str) -> None:
        """:meth:`_tick_node`; an unexpected failure backs off the node's tasks (the journal
        being unavailable stops the tracker)."""
        if self.stopping.is_set():
            return
        try:
            await self._tick_node(node)
        except JournalUnavailable:
            raise
        except Exception as exc:  # e.g. a task list the adapter failed on
            log.exception("tracker.node_failed", extra={"node": node, "error": internal_text(exc)})
            self._back_off_node(node, [e for e in self._entries.values() if e.upid.node == node])

    async def _sleep_until_due(self) -> None:
        self._wake.clear()  # entries tracked, or ticks ended, from here on set it again
        now = self.clock.monotonic()
        timeout = (
            min(
                (
                    self._due_at(e)
                    for e in self._entries.values()
                    if e.upid.node not in self._ticking
                ),
                default=now + 60,
            )
            - now
        )
        await self.clock.wait_or_stop(self.stopping, timeout, wake=self._wake)

    def _due_at(self, entry: _Tracked) -> float:
        """When the entry's node is to be ticked for it: its next look, but not before the
        node's budget has refilled after a tick that had to defer reads (:data:`DEFER`)."""
        return max(entry.next_check, self._resume.get(entry.upid.node, -math.inf))

    def _durations(self, upid: Upid) -> Durations | None:
        return self.durations.get(key_of(upid))

    def _next_look(
        self, upid: Upid, age: float, *, left: float = math.inf, at_least: float = 0.0
    ) -> float:
        return next_look(
            age, self._durations(upid), self.poll_interval, left=left, at_least=at_least
        )

    def _proof_due(self, entry: _Tracked, now: float) -> bool:
        return proof_due(entry.read_by - now)

    async def _tick_node(self, node: str) -> None:
        now = self.clock.monotonic()
        entries = [e for e in self._entries.values() if e.upid.node == node]
        due = [e for e in entries if e.next_check <= now]
        if len(entries) <= SMALL or (
            all(self._proof_due(e, now) and not e.failures for e in due)
            and (
                len(due) <= self._reads_in_hand(node, now)
                or now - self._listed_at.get(node, -math.inf) < self.poll_interval
            )
        ):
            # Few tasks, or only reads the poll interval makes due (a list showing them
            # RUNNING could not spare one) and the node's budget has them all — or, when it
            # has not, the node was listed within the poll interval (a list, which may answer
            # for ended tasks the archiver has filed, at most once per poll interval then).
            # After failures a list first (it may answer all).
            await self._read_all(node, sorted(due, key=lambda e: e.read_by))
            return
        self._listed_at[node] = now
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
            self._back_off_node(node, entries)
            return
        by_upid: dict[str, TaskEntry] = {str(item.upid): item for item in listed}
        now = self.clock.monotonic()
        missing: list[_Tracked] = []
        must: list[_Tracked] = []
        probe: list[_Tracked] = []
        for entry in entries:
            item = by_upid.get(str(entry.upid))
            if item is not None and item.status not in (None, "RUNNING"):
                await self._guarded(entry, self._resolve(entry, item.status))
            elif item is None:
                if entry.next_check <= now:
                    missing.append(entry)
            elif entry.failures and entry.next_check > now:
                continue  # backing off after failed reads: that schedule stands
            elif self._proof_due(entry, now):
                must.append(entry)  # listed as running proves nothing: read it
            else:
                # Listed as running: it may have ended, not yet archived (reference §4.3).
                entry.looks += 1
                age = now - entry.added
                if entry.next_check <= now and likely_ended(
                    age, self._durations(entry.upid), self.poll_interval
                ):
                    probe.append(entry)
                else:
                    # One list answers for the node's tasks until the next tick, so each
                    # waits at least LIST_GAP — but never past its proving read's time.
                    self._reschedule(entry, at_least=self._list_gap)
        if node in self._failing and not (missing or must or probe):
            # The node answered the list after failing, but a list proves nothing for the
            # tasks backed off with it: the most overdue is read, and its answer brings the
            # others forward (:meth:`_node_answered`).
            held = [e for e in entries if self._entries.get(e.op.id) is e and e.failures]
            if held:
                must.append(min(held, key=lambda e: e.read_by))
        # The most urgent first; past PROBE_MAX they wait for the next tick.
        probe.sort(key=lambda e: e.read_by)
        for entry in probe[PROBE_MAX:]:
            self._reschedule(entry, at_least=self._list_gap)
        must.sort(key=lambda e: e.read_by)
        await self._read_all(node, missing + must + probe[:PROBE_MAX])

    def _reads_in_hand(self, node: str, now: float) -> int:
        """Status reads the node's budget allows now (:data:`READ_RATE`)."""
        tokens, at = self._budget.get(node, (READ_BURST, now))
        return math.floor(read_tokens(tokens, now - at) + 1e-9)

    def _spend(self, node: str, now: float, reads: int) -> None:
        tokens, at = self._budget.get(node, (READ_BURST, now))
        self._budget[node] = (read_tokens(tokens, now - at) - reads, now)

    async def _read_all(self, node: str, wanted: list[_Tracked]) -> None:
        """Read the status of ``wanted`` (most urgent first), :data:`READ_CONCURRENCY` at a
        time, as many as the node's budget allows; the rest wait :data:`DEFER` (their reads
        stay due). When the node does not answer a read
        (:func:`~lifecycled.domain.polling.node_failing`) its reads end for this tick, and
        all its tasks not answered in it back off, as after a failed task list: a failing
        node is not hammered with one read per task."""
        if not wanted:
            return
        now = self.clock.monotonic()
        granted = min(len(wanted), self._reads_in_hand(node, now))
        self._spend(node, now, granted)
        queue = wanted[:granted]
        if granted < len(wanted):
            # The rest stay due (their next look now), most urgent first at the node's next
            # tick, which waits for the budget to refill: no task is starved by others
            # coming due one at a time, and the node is not listed at every read.
            for entry in wanted[granted:]:
                entry.next_check = now
            self._resume[node] = now + max(self._list_gap, DEFER)
        answered: set[int] = set()
        failed = False

        async def reader() -> None:
            nonlocal failed
            while queue and not failed:
                entry = queue.pop(0)
                if self._entries.get(entry.op.id) is not entry:
                    continue  # resolved (or re-tracked) meanwhile
                result = await self._guarded(entry, self._read_status(entry))
                if result is False:
                    failed = True
                elif result is True:
                    answered.add(entry.op.id)
                # None: an unexpected failure, contained; the op is no longer tracked and
                # the read proved nothing about the node.

        await asyncio.gather(*(reader() for _ in range(min(READ_CONCURRENCY, len(queue)))))
        if queue:
            self._spend(node, self.clock.monotonic(), -len(queue))  # not sent: given back
        if failed:
            self._back_off_node(
                node,
                [
                    e
                    for e in self._entries.values()
                    if e.upid.node == node and e.op.id not in answered
                ],
            )
        elif answered:
            self._node_answered(node)

    def _back_off_node(self, node: str, entries: list[_Tracked]) -> None:
        """The node did not answer (a failed list or read, or its tick failed): it is backed
        off as a whole — each of ``entries`` waits as after a failed read, except one its own
        failed read has already backed off (one failure is not counted twice)."""
        self._failing.add(node)
        now = self.clock.monotonic()
        for entry in entries:
            if entry.failures and entry.next_check > now:
                continue
            self._reschedule(entry, failed=True)

    def _node_answered(self, node: str) -> None:
        """The node answered a status read after it had been backed off as a whole: its tasks
        still backed off are due now (read within its budget, most overdue first, at its
        next tick), not each at the end of its own backoff, up to
        :data:`~lifecycled.domain.polling.FAILING_MAX` away (an ended task unnoticed for that
        long). While the node fails, only tasks whose backoff has ended are looked at: a few
        requests per backoff."""
        if node not in self._failing:
            return
        self._failing.discard(node)
        now = self.clock.monotonic()
        for entry in self._entries.values():
            if entry.upid.node == node and entry.failures and entry.next_check > now:
                entry.failures = 0
                entry.next_check = now
        self._wake.set()

    async def _guarded(self, entry: _Tracked, step: Coroutine[Any, Any, _T]) -> _T | None:
        """One tracked op's step, and what it returned; an exception stops tracking that op
        only (``None``). Its task may still run, so the op is left in flight (noted) for the
        janitor, never ended here."""
        try:
            return await step
        except JournalUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - contain() logs it with the op id
            self._entries.pop(entry.op.id, None)
            await self.executor.contain(entry.op, exc, where="tracker", end=False)
            return None

    async def _read_status(self, entry: _Tracked) -> bool:
        """Read the task's status and act on it; False when the node failed to answer."""
        entry.looks += 1
        sent = self.clock.monotonic()
        try:
            status = await self.executor.pve.task_status(entry.upid)
        except PveError as err:
            if is_no_such_task(err):
                await self._decide(
                    entry,
                    after_no_such_task(entry.op, spec_for(entry.op.guest.kind, entry.op.action)),
                )
                return True
            log.warning("tracker.status_failed", extra={**op_fields(entry.op), "error": err.text})
            self._reschedule(entry, failed=True)
            return not node_failing(err.status)
        if status.running:
            # It ran when the read was answered, so at least until the read was sent.
            entry.read_by = sent + proof_window(self.poll_interval, after_read=True)
            self._reschedule(entry)
        else:
            await self._resolve(entry, status.exitstatus or "unexpected status")
        return True

    async def _resolve(self, entry: _Tracked, exitstatus: str) -> None:
        op = entry.op
        spec = spec_for(op.guest.kind, op.action)
        log.info("task.stopped", extra={**op_fields(op), "exitstatus": exitstatus})
        self._ended_since_learning = True
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

    def _reschedule(self, entry: _Tracked, *, failed: bool = False, at_least: float = 0.0) -> None:
        now = self.clock.monotonic()
        entry.failures = entry.failures + 1 if failed else 0
        delay = self._next_look(
            entry.upid, now - entry.added, left=entry.read_by - now, at_least=at_least
        )
        if failed:
            delay = after_failure(delay, entry.failures, self.poll_interval)
        entry.next_check = now + delay
