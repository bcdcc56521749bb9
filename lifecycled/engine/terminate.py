"""The two special ways a ``terminate`` ends (SPEC §4).

* **Adopted guest — soft delete.** The op succeeds without any Proxmox call; the guest's row
  becomes ``released`` (kept, never destroyed) and the decision is audited ``soft_deleted``,
  all in one journal transaction.
* **Native guest that runs — stop first, write-ahead.** The terminate journals a child
  ``stop`` op for the same guest (key ``terminate:{op}:{series}:stop``) and goes back to
  pending without counting an attempt; the one-in-flight-per-guest claim rule then runs the
  stop like any other op (journaled before its POST, recovered after a crash). When the
  terminate is claimed again it destroys the stopped guest. The wait is bounded by
  ``terminate_stop_timeout``: past it, or when the stop op fails, the terminate fails with the
  reason and the guest is left in place.
"""

from __future__ import annotations

import logging

from lifecycled.audit import Decision as AuditDecision
from lifecycled.domain.actions import GuestView
from lifecycled.domain.classify import ErrorClass
from lifecycled.domain.cluster import WrongNode
from lifecycled.domain.op import Op
from lifecycled.domain.outcome import Decision, fail, retry
from lifecycled.domain.states import REARMABLE, OpState
from lifecycled.engine.clock import Clock
from lifecycled.engine.cluster import Cluster
from lifecycled.engine.durable import durable
from lifecycled.engine.executor import Executor, op_fields
from lifecycled.engine.gate import Policy
from lifecycled.errors import NotFound, OwnershipLocked, OwnershipUnavailable, PveError
from lifecycled.journal import Journal, SubmitRequest
from lifecycled.policy import PolicyVerdict

log = logging.getLogger("lifecycled.engine")


def _error_class(err: Exception) -> ErrorClass:
    if isinstance(err, PveError):
        return err.error_class
    return ErrorClass.LOCKED if isinstance(err, OwnershipLocked) else ErrorClass.TRANSIENT


def runs(view: GuestView) -> bool:
    """Whether the guest must be stopped before it can be destroyed."""
    return view.exists and view.status == "running"


class Terminator:
    """Soft delete and stop-first for terminate ops (used by the dispatcher)."""

    def __init__(
        self,
        *,
        journal: Journal,
        executor: Executor,
        policy: Policy,
        clock: Clock,
        stop_timeout: float,
        recheck: float,
    ) -> None:
        self.journal = journal
        self.executor = executor
        self.policy = policy
        self.clock = clock
        self.stop_timeout = stop_timeout
        self.recheck = recheck

    async def soft_delete(
        self, op: Op, view: GuestView, verdict: PolicyVerdict, *, cluster: Cluster | None = None
    ) -> Decision | None:
        """Release the guest: in its ownership record first (SPEC §7: else a sidecar reading
        the record would take it back as adopted), then in the journal with the op's
        success. ``None`` when done; a retry when the record cannot be written now."""
        if cluster is not None:
            try:
                await cluster.write(
                    op.guest.node,
                    op.guest.kind,
                    op.guest.vmid,
                    lambda old, _config: old.released() if old is not None else None,
                )
            except (PveError, OwnershipUnavailable, NotFound, WrongNode) as err:
                return retry("ownership record not released yet", _error_class(err), str(err))
        reason = "soft delete: adopted guest released from management, not destroyed"
        audit = await self.policy.record(op, view, AuditDecision.SOFT_DELETED, verdict.reason)
        done = await durable(
            self.journal.soft_delete(op.id, now=self.clock.now(), reason=reason, audit=audit)
        )
        self.executor.metrics.command(done.action, "succeeded")
        log.warning("guest.soft_deleted", extra={**op_fields(done), "reason": verdict.reason})
        return None

    async def stop_first(self, op: Op) -> None:
        """The guest runs: make sure a journaled stop op exists, and wait for it (bounded)."""
        now = self.clock.now()
        key = f"terminate:{op.id}:{await self._series(op)}:stop"
        child = await self.journal.by_key(key)
        if child is None:
            req = SubmitRequest(
                idempotency_key=key,
                action="stop",
                guest=op.guest,
                params={},
                origin=op.origin,
                actor=op.actor,
            )
            _, child = await durable(
                self.journal.defer(
                    op.id,
                    now=now,
                    next_attempt_at=now + self.recheck,
                    reason="guest runs: stop op journaled first; destroy once it is stopped",
                    child=req,
                )
            )
            assert child is not None
            log.info("op.terminate_stopping", extra={**op_fields(op), "stop_op_id": child.id})
            return
        waited = now - child.created_at
        if child.state is OpState.SUCCEEDED:
            await self._fail(op, f"guest runs again after stop op {child.id} stopped it")
        elif child.state in REARMABLE:
            error = f": {child.error.message}" if child.error is not None else ""
            await self._fail(op, f"stop op {child.id} ended {child.state}{error}")
        elif waited > self.stop_timeout:
            await self._fail(
                op, f"guest still running {waited:.0f}s after stop op {child.id} was journaled"
            )
        else:
            await durable(
                self.journal.defer(
                    op.id,
                    now=now,
                    next_attempt_at=now + self.recheck,
                    reason=f"waiting for stop op {child.id} ({child.state}) before destroy",
                )
            )

    async def _series(self, op: Op) -> int:
        """How many times this op was re-armed (each series gets its own stop op)."""
        history = await self.journal.history(op.id)
        return sum(
            1 for h in history if h.to_state is OpState.PENDING and h.from_state in REARMABLE
        )

    async def _fail(self, op: Op, why: str) -> None:
        message = f"not destroyed: {why}"
        await self.executor.apply(
            op, fail("could not stop the guest before destroying it", ErrorClass.PERMANENT, message)
        )
