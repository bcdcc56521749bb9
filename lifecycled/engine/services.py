"""The operations both faces offer (SPEC §5), each with one semantics: submit, cancel,
dead-letter retry and discard, guest ownership (manage, adopt, release) and desired state,
and the served node's lifecycle (status, drain, undrain, decommission).

The HTTP handlers (:mod:`lifecycled.web`) and the CLI commands (:mod:`lifecycled.cli`) both
call a :class:`Services`; a face only parses its input and shapes its answer (HTTP status
and JSON, or a line and an exit code). The daemon's services (built by
:meth:`lifecycled.engine.runtime.Runtime.build`) read Proxmox and the cluster's shared
ownership record and wake the dispatcher; the CLI's (:meth:`Services.offline`) work on the
journal file alone, so they work while the daemon is down — a running daemon sees their
writes at its next claim.

Dead letters (one rule for both faces): only a dead letter an operator has not discarded
can be retried — a discarded one stays discarded, and a failed or cancelled op is not a dead
letter (re-arm its idempotency key to run it again). Retrying or discarding twice changes
nothing and is not an error (``changed`` is false).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from lifecycled.audit import AuditRecord, prune_cutoff
from lifecycled.domain.guests import DesiredState, GuestOrigin, GuestRecord
from lifecycled.domain.node import NodeRecord
from lifecycled.domain.op import Op
from lifecycled.domain.states import OpState
from lifecycled.domain.text import shown
from lifecycled.engine import node as node_verbs
from lifecycled.engine.clock import Clock, SystemClock
from lifecycled.engine.guests import GuestService
from lifecycled.engine.submit import Submission, submit
from lifecycled.errors import Conflict, InvalidTransition, NotFound, ValidationError
from lifecycled.journal import Journal, SubmitResult
from lifecycled.journal.guests import Ownership
from lifecycled.journal.nodes import NodeChange
from lifecycled.pve.port import PveClient

log = logging.getLogger("lifecycled.services")

#: The desired states an operator sets directly (``absent`` comes with a terminate op).
SETTABLE_DESIRED = (str(DesiredState.RUNNING), str(DesiredState.STOPPED))

#: Called with the dead letter about to be retried (the HTTP face checks a signature here).
Authorize = Callable[[Op], Awaitable[None]]


@attrs.frozen(kw_only=True)
class OpChange:
    """An op after an operator's request, and whether the request changed it."""

    op: Op
    changed: bool


class NotADeadLetter(NotFound):
    """The op is not a dead letter awaiting an operator (or it was discarded)."""


class NotCancellable(Conflict):
    """Only a pending op can be cancelled."""

    code = "invalid_state"

    def __init__(self, op: Op) -> None:
        super().__init__(f"op {op.id} is {op.state}: only a pending op can be cancelled")
        self.state = op.state


class Services:
    """What an operator or a control plane can ask of lifecycled, over the journal."""

    def __init__(
        self,
        *,
        journal: Journal,
        clock: Clock,
        guests: GuestService,
        node: str,
        pve: PveClient | None = None,
        node_min_age: float = 0.0,
        system_node: bool = False,
        notify: Callable[[], None] = lambda: None,
    ) -> None:
        self.journal = journal
        self.clock = clock
        self.guests = guests
        #: The served (primary) node: submissions' default node, the node verbs' node.
        self.node = node
        self.pve = pve
        self.node_min_age = node_min_age
        self.system_node = system_node
        #: Wakes the dispatcher after a write that made an op due (a no-op offline).
        self.notify = notify

    @classmethod
    def offline(
        cls,
        journal: Journal,
        *,
        node: str,
        pve: PveClient | None = None,
        clock: Clock | None = None,
        node_min_age: float = 0.0,
        system_node: bool = False,
    ) -> Services:
        """The CLI's services: the journal file (and Proxmox only when given, to resolve a
        guest or count a node's guests); no shared record, no dispatcher to wake."""
        clock = clock or SystemClock()
        return cls(
            journal=journal,
            clock=clock,
            guests=GuestService(journal=journal, pve=None, clock=clock),
            node=node,
            pve=pve,
            node_min_age=node_min_age,
            system_node=system_node,
        )

    # --- ops ---------------------------------------------------------------------------

    async def submit(
        self, sub: Submission, *, authorize: Callable[[Submission], Awaitable[None]] | None = None
    ) -> SubmitResult:
        """Validate, resolve, admit and journal one submission (:func:`engine.submit.submit`);
        ``authorize`` runs once it is known to be well formed and may refuse it by raising."""
        result = await submit(
            self.journal,
            sub,
            pve=self.pve,
            default_node=self.node,
            now=self.clock.now(),
            guests=self.guests,
            authorize=authorize,
        )
        if not result.deduplicated:
            self.notify()
        return result

    async def cancel(self, op_id: int, *, actor: str) -> OpChange:
        """pending → cancelled. Cancelling a cancelled op changes nothing; any other state is
        :class:`NotCancellable`; a missing op :class:`NotFound`."""
        op = await self.journal.get(op_id)
        if op.state is OpState.CANCELLED:
            return OpChange(op=op, changed=False)
        if op.state is not OpState.PENDING:
            raise NotCancellable(op)
        try:
            op = await self.journal.cancel(
                op_id, now=self.clock.now(), reason=f"cancelled by {actor}"
            )
        except InvalidTransition:  # claimed (or cancelled) meanwhile
            op = await self.journal.get(op_id)
            if op.state is OpState.CANCELLED:
                return OpChange(op=op, changed=False)
            raise NotCancellable(op) from None
        log.info("op.cancelled", extra=_fields(op, actor))
        return OpChange(op=op, changed=True)

    async def retry(
        self, op_id: int, *, actor: str, authorize: Authorize | None = None
    ) -> OpChange:
        """A dead letter (not discarded) → pending, as a new attempt series.

        Repeating it answers the op unchanged while its latest attempt series is the one a
        retry out of the dead letters started. A discarded dead letter, a failed or a
        cancelled op is :class:`NotADeadLetter`; nothing is written. ``authorize`` runs
        just before the write (and may refuse it by raising).
        """
        op = await self.journal.get(op_id)
        if op.state is OpState.DEAD_LETTERED:
            if op.discarded_at is not None:
                raise NotADeadLetter(f"dead letter {op_id} was discarded")
            if authorize is not None:
                await authorize(op)
            try:
                op = await self.journal.retry(
                    op_id, now=self.clock.now(), reason=f"retried by {actor}"
                )
            except InvalidTransition:
                op = await self.journal.get(op_id)  # a concurrent retry won: a repeat below
            else:
                self.notify()
                log.info("dead_letter.retried", extra=_fields(op, actor))
                return OpChange(op=op, changed=True)
        if await self._retried_from_dead_letter(op):
            return OpChange(op=op, changed=False)
        raise NotADeadLetter(f"op {op_id} is {op.state}, not a dead letter")

    async def _retried_from_dead_letter(self, op: Op) -> bool:
        """Whether ``op``'s latest attempt series started with a retry out of the dead letters."""
        if op.state not in (
            OpState.PENDING,
            OpState.DISPATCHING,
            OpState.RUNNING,
            OpState.SUCCEEDED,
        ):
            return False
        for entry in reversed(await self.journal.history(op.id)):
            if entry.to_state is OpState.PENDING and entry.from_state is not None:
                return entry.from_state is OpState.DEAD_LETTERED
        return False

    async def discard(self, op_id: int, *, actor: str) -> OpChange:
        """Take a dead letter out of the listing (kept until purged; its state stays
        ``dead_lettered``). Discarding twice changes nothing; an op that is not a dead
        letter is :class:`NotADeadLetter`."""
        op = await self.journal.get(op_id)
        if op.state is not OpState.DEAD_LETTERED:
            raise NotADeadLetter(
                f"op {op_id} is {op.state}: only a dead-lettered op can be discarded"
            )
        if op.discarded_at is not None:
            return OpChange(op=op, changed=False)
        op = await self.journal.discard(op_id, now=self.clock.now(), reason=f"discarded by {actor}")
        log.info("dead_letter.discarded", extra=_fields(op, actor))
        return OpChange(op=op, changed=True)

    # --- guests ------------------------------------------------------------------------

    async def take(self, vmid: int, origin: GuestOrigin, *, actor: str) -> Ownership:
        """``manage`` (native) or ``adopt``: capture the guest from Proxmox, record it, audit."""
        return await self.guests.take(vmid, origin, actor=actor)

    async def release(self, vmid: int, *, actor: str) -> Ownership:
        """Release a managed guest (kept as ``released``, observed only), audited."""
        return await self.guests.release(vmid, actor=actor)

    async def set_desired(self, vmid: int, state: str, *, actor: str) -> GuestRecord:
        """A managed guest's desired power state, ``running`` or ``stopped`` (``absent`` is
        set by a terminate op): :class:`ValidationError` otherwise. Reconcile then holds
        it. An unknown guest is :class:`NotFound`, an unmanaged one ``guest_not_managed``."""
        if state not in SETTABLE_DESIRED:
            raise ValidationError(
                f"desired state must be running or stopped, not {shown(state, 30)!r}",
                {"state": "running or stopped (absent is set by a terminate op)"},
            )
        if await self.journal.find_guest(vmid) is None:
            raise NotFound(f"guest {vmid} is not known to lifecycled")
        return await self.guests.set_desired(vmid, DesiredState(state), actor=actor)

    # --- audit -------------------------------------------------------------------------

    async def prune_audit(self, *, older_than: float, actor: str) -> tuple[AuditRecord, float]:
        """Delete audit records older than ``older_than`` seconds — at least a day
        (:func:`lifecycled.audit.prune_cutoff`, ValueError otherwise); the prune is itself
        audited. Returns that record (its snapshot counts the pruned) and the cutoff."""
        now = self.clock.now()
        before = prune_cutoff(now, older_than)
        record = await self.journal.prune_audit(before=before, actor=actor, now=now)
        return record, before

    # --- the served node ---------------------------------------------------------------

    async def node_status(self, *, register: bool = False, actor: str = "") -> NodeRecord | None:
        """The served node's lifecycle row (``None``: lifecycled never ran for it). The
        daemon serves the node, so asking it ``register``s the node as its start does."""
        if register:
            return await self.journal.ensure_node(self.node, now=self.clock.now(), actor=actor)
        return await self.journal.get_node(self.node)

    def node_info(self, record: NodeRecord) -> dict[str, Any]:
        """What both faces show of the node (:func:`node_info`)."""
        return node_info(
            record,
            now=self.clock.now(),
            system_node=self.system_node,
            node_min_age=self.node_min_age,
        )

    async def drain(self, *, actor: str, reason: str | None = None) -> NodeChange:
        """No new guests on the node (idempotent; refused from decommissioned)."""
        return await node_verbs.drain(
            self.journal,
            self.node,
            actor=actor,
            reason=reason or f"drained by {actor}",
            now=self.clock.now(),
        )

    async def undrain(self, *, actor: str, reason: str | None = None) -> NodeChange:
        """A draining node takes guests again (→ active); active or idle: unchanged."""
        return await node_verbs.undrain(
            self.journal,
            self.node,
            actor=actor,
            reason=reason or f"undrained by {actor}",
            now=self.clock.now(),
        )

    async def decommission(
        self, *, actor: str, reason: str | None = None
    ) -> tuple[NodeChange, str | None]:
        """Decommission a drained, empty node (final); the second value says why Proxmox
        was not read for the node's guests (only the journal's managed guests counted)."""
        return await node_verbs.decommission(
            self.journal,
            self.node,
            pve=self.pve,
            actor=actor,
            min_age=self.node_min_age,
            system=self.system_node,
            now=self.clock.now(),
            reason=reason or f"decommissioned by {actor}",
        )


def node_info(
    record: NodeRecord, *, now: float, system_node: bool, node_min_age: float
) -> dict[str, Any]:
    """What both faces show of the node: its row, its age, the system mark (configured or
    recorded) and the minimum age before a decommission."""
    out = record.to_dict(now=now)
    out["is_system"] = record.is_system or system_node
    out["node_min_age_seconds"] = node_min_age
    return out


def _fields(op: Op, actor: str) -> dict[str, Any]:
    return {
        "op_id": op.id,
        "action": op.action,
        "vmid": op.guest.vmid,
        "node": op.guest.node,
        "actor": actor,
    }
