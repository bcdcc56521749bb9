"""Workers: claim → policy → check → dispatch → journal the UPID (SPEC §2 steps 1–4)."""

from __future__ import annotations

import asyncio
import logging

from lifecycled.domain.actions import (
    Action,
    ActionSpec,
    GuestView,
    UnsupportedAction,
    spec_for,
)
from lifecycled.domain.check import precheck
from lifecycled.domain.classify import ErrorClass
from lifecycled.domain.op import Op
from lifecycled.domain.outcome import (
    Decision,
    after_call_error,
    after_search,
    fail,
    retry,
    succeed,
)
from lifecycled.domain.ownership import keep_record
from lifecycled.engine.check import LiveCheck
from lifecycled.engine.clock import Clock
from lifecycled.engine.cluster import Cluster
from lifecycled.engine.durable import durable
from lifecycled.engine.executor import Executor, internal_text, op_fields
from lifecycled.engine.gate import Policy
from lifecycled.engine.terminate import Terminator, runs
from lifecycled.engine.tracker import Tracker
from lifecycled.errors import JournalUnavailable, PveError, RequestNotSent
from lifecycled.journal import Journal
from lifecycled.policy import Verdict as PolicyOutcome

log = logging.getLogger("lifecycled.engine")


class Dispatcher:
    """``workers`` coroutines that claim and dispatch ops."""

    def __init__(
        self,
        *,
        journal: Journal,
        executor: Executor,
        tracker: Tracker,
        policy: Policy,
        clock: Clock,
        node_cap: int,
        idle_poll: float,
        stopping: asyncio.Event,
        terminate_stop_timeout: float = 300.0,
    ) -> None:
        #: Placement across the cluster (SPEC §7); set by the composition root.
        self.cluster: Cluster | None = None
        self.journal = journal
        self.executor = executor
        #: The pre-dispatch read, one live listing per node and kind for ops claimed together.
        self.check = LiveCheck(pve=executor.pve, observe=executor.observe)
        self.tracker = tracker
        self.policy = policy
        self.clock = clock
        self.node_cap = node_cap
        self.idle_poll = idle_poll
        self.terminator = Terminator(
            journal=journal,
            executor=executor,
            policy=policy,
            clock=clock,
            stop_timeout=terminate_stop_timeout,
            recheck=min(1.0, idle_poll),
        )
        #: The daemon's one stop signal (owned by the runtime).
        self.stopping = stopping
        self.work = asyncio.Event()
        #: Ops a worker of this process is handling right now (the janitor skips them).
        self.busy: set[int] = set()
        #: Ops whose dispatch call has begun: their POST may have reached Proxmox.
        self._posting: set[int] = set()

    def notify(self) -> None:
        """New work may be due (a submission, a retry becoming due)."""
        self.work.set()

    async def worker(self, index: int) -> None:
        log.debug("dispatcher.worker_started", extra={"worker": index})
        while not self.stopping.is_set():
            try:
                op = await self.journal.claim_next(now=self.clock.now(), node_cap=self.node_cap)
            except JournalUnavailable:
                raise
            except Exception as exc:  # an op row the engine cannot read: nothing was claimed
                log.exception(
                    "dispatcher.claim_failed", extra={"worker": index, "error": internal_text(exc)}
                )
                await self._idle()
                continue
            if op is None:
                await self._idle()
                continue
            self.busy.add(op.id)
            try:
                await self.handle(op)
            finally:
                self.busy.discard(op.id)
                self._posting.discard(op.id)

    async def handle(self, op: Op) -> None:
        """:meth:`process` one claimed op, its exceptions kept to it (a bad op fails alone).

        Before its POST an op that raises ends ``failed`` (class ``internal``); once the POST
        may have left, it is never ended blindly (see :meth:`Executor.contain`).
        """
        try:
            await self.process(op)
        except JournalUnavailable:
            raise
        except PveError as err:
            if op.id in self._posting:
                await self.executor.contain(op, err, where="dispatcher", end=False)
                return
            # A read that was not expected to fail here: try again later.
            log.warning("op.process_error", extra={**op_fields(op), "error": err.text})
            try:
                await self._apply(op, retry("unexpected Proxmox error", err.error_class, err.text))
            except JournalUnavailable:
                raise
            except Exception as exc:  # noqa: BLE001 - contain() logs it with the op id
                await self.executor.contain(op, exc, where="dispatcher", end=False)
        except Exception as exc:  # noqa: BLE001 - contain() logs it with the op id
            await self.executor.contain(op, exc, where="dispatcher", end=op.id not in self._posting)

    async def _idle(self) -> None:
        self.work.clear()
        await self.clock.wait_or_stop(self.stopping, self.idle_poll, wake=self.work)

    async def _apply(self, op: Op, decision: Decision) -> None:
        """:meth:`Executor.apply`; an op whose task now runs goes to the tracker."""
        self.tracker.follow(await self.executor.apply(op, decision))

    async def process(self, op: Op) -> None:
        """One claimed op, from policy to a journaled UPID (or a terminal state)."""
        log.info("op.claimed", extra={**op_fields(op), "attempt": op.attempts})
        try:
            spec = spec_for(op.guest.kind, op.action)
        except UnsupportedAction as exc:
            await self._apply(op, fail("unsupported action", ErrorClass.PERMANENT, str(exc)))
            return
        # An earlier attempt ended ambiguously: its task may exist. Never POST twice blindly.
        if op.ambiguous_since is not None:
            try:
                matches = await self.executor.search_tasks(op, spec, since=op.ambiguous_since)
            except PveError as err:
                await self._apply(
                    op,
                    retry("task list unreadable", err.error_class, err.text, ambiguous=True),
                )
                return
            if matches:
                await self._apply(op, after_search(op, spec, matches, recovering=False))
                return
        try:
            view = await self.check.view(op, spec)
        except PveError as err:
            await self._apply(op, retry("guest read failed", err.error_class, err.text))
            return
        moved = await self._placement(op, spec, view)
        if moved is not None:
            await self._apply(op, moved)
            return
        verdict = await self.policy.check(op, spec, view)
        if verdict.verdict is PolicyOutcome.REFUSE:
            await self._apply(
                op, fail(f"refused by policy: {verdict.code}", ErrorClass.PERMANENT, verdict.reason)
            )
            return
        if verdict.verdict is PolicyOutcome.SOFT_DELETE:
            unwritten = await self.terminator.soft_delete(op, view, verdict, cluster=self.cluster)
            if unwritten is not None:
                await self._apply(op, unwritten)
            return
        pre = precheck(op, view)
        if pre is not None:
            await self._apply(op, pre)
            return
        if spec.action is Action.TERMINATE and runs(view):
            await self.terminator.stop_first(op)
            return
        await self.policy.audit_allowed(op, spec, view)
        params = op.params
        if spec.action is Action.CONFIGURE:  # the guest's record survives a tags write
            params = keep_record(params, view.config.get("tags"), view.digest)
        self._posting.add(op.id)
        try:
            upid = await self.executor.pve.dispatch(
                op.guest.node, op.guest.kind, spec.action, op.guest.vmid, params
            )
        except RequestNotSent:
            self._posting.discard(op.id)  # provably never left: ends failed (internal)
            raise
        except PveError as err:
            # The adapter classified the failure once, knowing the action: use its class.
            log.info(
                "op.dispatch_error",
                extra={**op_fields(op), "error": err.text, "error_class": str(err.error_class)},
            )
            await self._apply(op, after_call_error(op, spec, err.error_class, err.text))
            return
        except Exception as exc:
            # A failure inside the adapter: the request may have left. Never POST again
            # blindly: the ambiguous path searches the task list first.
            text = internal_text(exc)
            log.exception("op.dispatch_internal_error", extra={**op_fields(op), "error": text})
            await self._apply(
                op, after_call_error(op, spec, ErrorClass.AMBIGUOUS, f"internal error: {text}")
            )
            return
        if upid is None:
            await self._apply(op, succeed("synchronous endpoint finished"))
            return
        op = await durable(self.journal.record_upid(op.id, str(upid), now=self.clock.now()))
        log.info("op.dispatched", extra=op_fields(op))
        self.tracker.track(op)

    async def _placement(self, op: Op, spec: ActionSpec, view: GuestView) -> Decision | None:
        """Re-checked at claim time (SPEC §7): an op whose guest is not on a node served
        here — never served, or migrated away since the submission — is not acted on here:
        it fails with a ``wrong_node:`` error (permanent); the daemon of the guest's node
        holds its desired state from the shared record."""
        cluster = self.cluster
        if cluster is None:
            return None
        node = op.guest.node
        # A guest missing from the op's node may have moved: for a terminate too ("absent"
        # holds only when it is gone from the whole cluster); create/clone want it missing.
        if cluster.serves(node) and (view.exists or spec.action in (Action.CREATE, Action.CLONE)):
            return None
        if cluster.serves(node) and spec.action is Action.MIGRATE:
            return None  # a migrate done meanwhile: its own check decides
        where = node
        if not view.exists:
            try:
                res = await cluster.locate(op.guest.vmid)
            except PveError as err:
                if spec.action is Action.TERMINATE:  # gone, or moved: not known yet
                    return retry("guest placement unreadable", err.error_class, err.text)
                return None  # the normal check decides
            if res is None or res.node == node:
                return None
            where = res.node
        return fail(
            "wrong_node",
            ErrorClass.PERMANENT,
            f"wrong_node: guest {op.guest.vmid} is on node {where}, not served by this "
            f"daemon (it serves {', '.join(cluster.served)}); nothing was sent",
        )
