"""Applies :mod:`lifecycled.domain.outcome` decisions to the journal.

The only engine code that changes an op's state after it was claimed. ``CHECK`` and
``SEARCH`` decisions read Proxmox (never a mutating call) and are resolved here, so the
dispatcher, the tracker, Recover and the janitor share one set of rules.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Mapping

import attrs

from lifecycled.domain.actions import Action, ActionSpec, GuestView, spec_for
from lifecycled.domain.check import reads_status_only, target_from_listing
from lifecycled.domain.classify import ErrorClass
from lifecycled.domain.op import GuestKind, Op
from lifecycled.domain.outcome import (
    Decision,
    RetryBudget,
    Verdict,
    after_search,
    fail,
    next_attempt,
    succeed,
    task_matches,
)
from lifecycled.domain.states import OpState
from lifecycled.domain.upid import Upid, UpidError
from lifecycled.engine.clock import Clock
from lifecycled.engine.durable import durable
from lifecycled.errors import JournalUnavailable, PveError, UpidTaken
from lifecycled.journal import Journal
from lifecycled.metrics import Metrics
from lifecycled.pve.port import (
    GuestStatus,
    PveClient,
    TaskEntry,
    all_tasks,
    read_guest,
    read_guest_status,
)

log = logging.getLogger("lifecycled.engine")

#: Longest exception text kept in an op's error and history.
_INTERNAL_TEXT_MAX = 500


@attrs.frozen(kw_only=True)
class Track:
    """:meth:`Executor.apply`'s answer when the op now has a running task to follow: the
    caller hands it to the tracker (the executor never holds the tracker)."""

    op: Op
    confirm_by_state: bool = False


#: What :meth:`Executor.apply` did: ``True`` decided (the op moved on), ``False`` nothing
#: could be decided now (keep the op where it is, look again later), or a :class:`Track`
#: (decided: the op's task runs; follow it). Both ``True`` and a ``Track`` are truthy.
Applied = bool | Track


@attrs.frozen(kw_only=True)
class NodeTasks:
    """A node's task list since ``since``, complete (nothing cut off by the limit), indexed
    by UPID and by task id (the vmid) so that thousands of ops look themselves up cheaply."""

    since: int
    by_upid: Mapping[str, TaskEntry]
    by_id: Mapping[str, tuple[TaskEntry, ...]]

    @classmethod
    def of(cls, since: int, items: tuple[TaskEntry, ...]) -> NodeTasks:
        by_id: dict[str, list[TaskEntry]] = {}
        for item in items:
            by_id.setdefault(item.upid.id, []).append(item)
        return cls(
            since=since,
            by_upid={str(item.upid): item for item in items},
            by_id={k: tuple(v) for k, v in by_id.items()},
        )

    def find(self, upid: str) -> TaskEntry | None:
        return self.by_upid.get(upid)


@attrs.frozen(kw_only=True)
class Prefetched:
    """Proxmox reads made once for many ops (Recover): each node's task list and each
    node's live guest list (``GET /nodes/{node}/qemu|lxc``). Ops find their task and their
    guest here instead of one or two requests each; what is not here is read the usual way.

    ``/cluster/resources`` is never used as proof: its status lags by up to ~10 s
    (reference §13.10) and could show a start or stop that was just undone, or not yet
    done.
    """

    tasks: Mapping[str, NodeTasks] = attrs.field(factory=dict)
    #: Live guest statuses by (node, kind, vmid), for every (node, kind) in ``listed``.
    guests: Mapping[tuple[str, GuestKind, int], GuestStatus] = attrs.field(factory=dict)
    #: The (node, kind) guest lists that were read.
    listed: frozenset[tuple[str, GuestKind]] = frozenset()

    def view(self, op: Op, spec: ActionSpec) -> GuestView | None:
        """The guest as its node's live list shows it, when that decides whether ``spec``'s
        target holds as ``status/current`` would
        (:func:`~lifecycled.domain.check.target_from_listing`)."""
        node, kind = op.guest.node, op.guest.kind
        if (node, kind) not in self.listed:
            return None
        status = self.guests.get((node, kind, op.guest.vmid))
        listed = status.listed() if status is not None else None
        return target_from_listing(spec, op.params, node, listed).view


def op_fields(op: Op) -> dict[str, object]:
    """The stable log keys of SPEC §5 "Logs"."""
    return {
        "op_id": op.id,
        "upid": op.upid_text,
        "vmid": op.guest.vmid,
        "node": op.guest.node,
        "action": op.action,
    }


def internal_text(exc: BaseException) -> str:
    """An exception as one storable line: class and message, no lone surrogates, bounded."""
    text = f"{type(exc).__name__}: {exc}".encode("utf-8", "backslashreplace").decode("utf-8")
    text = " ".join(text.split())
    return text if len(text) <= _INTERNAL_TEXT_MAX else text[: _INTERNAL_TEXT_MAX - 1] + "…"


class Executor:
    """Turns decisions into journal transitions, metrics and log events."""

    def __init__(
        self,
        *,
        journal: Journal,
        pve: PveClient,
        clock: Clock,
        metrics: Metrics,
        budget: RetryBudget,
        task_search_skew: float,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.journal = journal
        self.pve = pve
        self.clock = clock
        self.metrics = metrics
        self.budget = budget
        self.skew = task_search_skew
        self.rand = rand

    # --- reads ------------------------------------------------------------------------

    async def observe(self, op: Op, spec: ActionSpec) -> GuestView:
        """Read the guest an op is about. Migrate looks on the target node first.

        Non-destructive power actions read ``status/current`` only: their targets, the lock
        and the template/HA flags are all there, and policy needs the config only for
        destructive actions (fingerprint) and terminate (protection flag).
        """
        kind, vmid = op.guest.kind, op.guest.vmid
        if reads_status_only(spec, op.params):
            return await read_guest_status(self.pve, op.guest.node, kind, vmid)
        if spec.action is Action.MIGRATE and op.params.get("target"):
            target = str(op.params["target"])
            view = await read_guest(self.pve, target, kind, vmid)
            if view.exists:
                return view
        return await read_guest(self.pve, op.guest.node, kind, vmid)

    async def search_tasks(
        self, op: Op, spec: ActionSpec, *, since: float, prefetched: Prefetched | None = None
    ) -> list[str]:
        """UPIDs in the node's task list that may be this op's task (SPEC §2 "ambiguous";
        the rule is :func:`~lifecycled.domain.outcome.task_matches`).

        The node's whole listing since ``since`` (less the clock-skew allowance) is read,
        page by page: on a busy node an older task is never missed. UPIDs any op already
        recorded are left out. With ``prefetched`` holding a complete listing of the node
        (Recover), no task list is requested.
        """
        vmid = spec.task_vmid(op.guest.vmid, op.params)
        floor_start = math.floor(since - self.skew)
        known_tasks = prefetched.tasks.get(op.guest.node) if prefetched is not None else None
        items: tuple[TaskEntry, ...]
        if known_tasks is not None and known_tasks.since <= floor_start - 60:
            items = known_tasks.by_id.get(str(vmid), ())
        else:
            items = await all_tasks(
                self.pve, op.guest.node, source="all", vmid=vmid, since=floor_start - 60
            )
        listed = [t.upid for t in items]
        return task_matches(
            spec,
            vmid,
            listed,
            user=self.pve.user,
            floor_start=floor_start,
            recorded=await self.journal.recorded_upids(str(u) for u in listed),
        )

    # --- applying decisions --------------------------------------------------------------

    async def resolve(
        self, op: Op, decision: Decision, *, prefetched: Prefetched | None = None
    ) -> Decision | None:
        """Resolve ``CHECK`` and ``SEARCH`` by reading Proxmox (never writing), until a decision
        that changes the journal remains. ``None``: a read failed, nothing can be decided now.

        ``prefetched`` (Recover): reads made once for many ops answer what they can."""
        spec = spec_for(op.guest.kind, op.action)
        while decision.verdict in (Verdict.CHECK, Verdict.SEARCH):
            if decision.verdict is Verdict.CHECK:
                otherwise = decision.otherwise
                assert otherwise is not None
                known = prefetched.view(op, spec) if prefetched is not None else None
                try:
                    view = known if known is not None else await self.observe(op, spec)
                except PveError as err:
                    log.warning("op.check_failed", extra={**op_fields(op), "error": err.text})
                    return None
                if spec.holds(view, op.params):
                    decision = succeed(f"{decision.reason}: target holds", decision.exitstatus)
                else:
                    decision = otherwise
                continue
            since = op.ambiguous_since or op.claimed_at or op.created_at
            try:
                matches = await self.search_tasks(op, spec, since=since, prefetched=prefetched)
            except PveError as err:
                log.warning("op.search_failed", extra={**op_fields(op), "error": err.text})
                return Decision(
                    verdict=Verdict.RETRY,
                    reason="call outcome unknown; task list unreadable",
                    error=decision.error,
                    ambiguous=True,
                )
            decision = after_search(op, spec, matches, recovering=False)
        return decision

    async def apply(self, op: Op, decision: Decision, *, confirm_by_state: bool = False) -> Applied:
        """Carry out ``decision`` for ``op``. Returns False when nothing could be decided now
        (a Proxmox read failed): the caller keeps the op where it is and looks again later;
        a :class:`Track` when the op's task runs: the caller hands it to the tracker."""
        resolved = await self.resolve(op, decision)
        if resolved is None:
            return False
        decision = resolved
        verdict = decision.verdict
        if verdict is Verdict.ADOPT:
            assert decision.upid is not None
            return await self._adopt(
                op, decision.upid, decision.reason, confirm_by_state=confirm_by_state
            )
        if verdict is Verdict.LEAVE:
            return False
        if verdict is Verdict.SUCCEED:
            return await self._succeed(op, decision.reason, decision.exitstatus)
        if verdict is Verdict.FAIL:
            now = self.clock.now()
            done = await durable(
                self.journal.finish(
                    op.id,
                    OpState.FAILED,
                    now=now,
                    reason=decision.reason,
                    exitstatus=decision.exitstatus,
                    error=decision.error,
                )
            )
            self._finished(done, "failed")
            log.warning(
                "op.failed",
                extra={
                    **op_fields(done),
                    "reason": decision.reason,
                    "error": decision.error.message if decision.error else None,
                },
            )
            return True
        return await self._retry(op, decision)

    async def _succeed(self, op: Op, reason: str, exitstatus: str | None) -> bool:
        done = await durable(
            self.journal.finish(
                op.id, OpState.SUCCEEDED, now=self.clock.now(), reason=reason, exitstatus=exitstatus
            )
        )
        self._finished(done, "succeeded")
        log.info(
            "op.succeeded", extra={**op_fields(done), "reason": reason, "exitstatus": exitstatus}
        )
        return True

    async def _retry(self, op: Op, decision: Decision) -> bool:
        cls = decision.error.error_class if decision.error else ErrorClass.TRANSIENT
        now = self.clock.now()
        when = next_attempt(op, cls, now=now, budget=self.budget, rand=self.rand)
        self.metrics.retry(op.action, str(cls))
        if when is None:
            done = await durable(
                self.journal.dead_letter(
                    op.id,
                    now=now,
                    reason=f"{decision.reason}; retry budget spent",
                    error=decision.error,
                )
            )
            self._finished(done, "dead_lettered")
            log.error("op.dead_lettered", extra={**op_fields(done), "reason": decision.reason})
            return True
        await durable(
            self.journal.requeue(
                op.id,
                now=now,
                next_attempt_at=when,
                reason=decision.reason,
                error=decision.error,
                ambiguous=decision.ambiguous,
            )
        )
        self.metrics.command(op.action, "retried")
        log.info(
            "op.requeued",
            extra={
                **op_fields(op),
                "reason": decision.reason,
                "error_class": str(cls),
                "retry_in": round(when - now, 3),
            },
        )
        return True

    async def _adopt(
        self, op: Op, upid_text: str, reason: str, *, confirm_by_state: bool
    ) -> Applied:
        """Journal the found task as the op's own and answer its :class:`Track`. False
        (nothing decided now) when the UPID is unreadable or another op recorded it meanwhile
        (a UPID belongs to one op): the op stays in flight and its next look searches
        without that task."""
        try:
            Upid.parse(upid_text)
        except UpidError:
            log.error("op.adopt_invalid_upid", extra={**op_fields(op), "found": upid_text})
            return False
        now = self.clock.now()
        try:
            if op.state is OpState.DISPATCHING:
                op = await durable(
                    self.journal.record_upid(op.id, upid_text, now=now, reason=reason)
                )
            else:
                op = await durable(
                    self.journal.set_upid_in_flight(op.id, upid_text, now=now, reason=reason)
                )
        except UpidTaken as taken:
            log.warning(
                "op.adopt_taken",
                extra={**op_fields(op), "found": upid_text, "holder": taken.holder},
            )
            return False
        log.info("op.adopted", extra=op_fields(op))
        return Track(op=op, confirm_by_state=confirm_by_state)

    async def contain(self, op: Op, exc: Exception, *, where: str, end: bool) -> None:
        """One op's unexpected exception, kept to that op (issue 10 point 5): logged with the
        op id, then the op ends ``failed`` (class ``internal``, the exception in its history)
        when ``end`` says this attempt sent nothing, no earlier attempt's POST is still
        unanswered (``ambiguous_since``) and it is still the ``dispatching`` op this process
        claimed; otherwise it is left in flight, the error noted in its history, for the
        janitor (a POST may have been sent: never end it blindly).

        Never raises except :class:`JournalUnavailable` (the daemon's loops wait that out).
        """
        text = internal_text(exc)
        log.error(
            "op.internal_error",
            extra={**op_fields(op), "where": where, "error": text},
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        reason = f"internal error in {where}: {text}"
        try:
            current = await self.journal.get(op.id)
            if (
                end
                and current.state is OpState.DISPATCHING
                and current.upid_text is None
                and current.ambiguous_since is None  # no earlier unanswered POST either
            ):
                await self.apply(current, fail(reason, ErrorClass.INTERNAL, text))
            elif current.state.is_in_flight:
                await durable(
                    self.journal.note_stuck(
                        op.id,
                        now=self.clock.now(),
                        reason=f"{reason}; left in flight for the janitor",
                    )
                )
        except JournalUnavailable:
            raise
        except Exception as again:
            log.error(
                "op.internal_error_unrecorded",
                extra={**op_fields(op), "where": where, "error": internal_text(again)},
                exc_info=(type(again), again, again.__traceback__),
            )

    def _finished(self, op: Op, outcome: str) -> None:
        self.metrics.command(op.action, outcome)
        if op.finished_at is not None:
            self.metrics.op_finished(op.action, op.finished_at - op.created_at)
