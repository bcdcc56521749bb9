"""The policy gate: gathers what :func:`lifecycled.policy.decide` needs, asks it, and audits
every destructive decision (allowed, refused and why, soft-deleted) with the op's actor, the
reason and a snapshot of the guest as Proxmox and the journal show it (SPEC §4)."""

from __future__ import annotations

import logging
from typing import Any

from lifecycled.audit import AuditRecord, Decision
from lifecycled.domain.actions import ActionSpec, GuestView, destructive_effects, fingerprint_of
from lifecycled.domain.guests import GuestFacts, GuestRecord
from lifecycled.domain.op import Op
from lifecycled.engine.clock import Clock
from lifecycled.journal import Journal
from lifecycled.policy import PolicyVerdict, Verdict, decide

log = logging.getLogger("lifecycled.policy")


def guest_snapshot(op: Op, view: GuestView, guest: GuestRecord | None) -> dict[str, Any]:
    """What an audit record keeps of the guest at the moment of a decision."""
    return {
        "proxmox": {
            "exists": view.exists,
            "node": view.node,
            "status": view.status,
            "qmpstatus": view.qmpstatus,
            "lock": view.lock,
            "ha_managed": view.ha_managed,
            "protection": str(view.config.get("protection", "0")) == "1",
            "digest": view.digest,
            "fingerprint": fingerprint_of(op.guest.kind, view.config) if view.exists else {},
        },
        "journal": None
        if guest is None
        else {
            "origin": str(guest.origin),
            "desired_state": guest.desired_state,
            "observed_state": guest.observed_state,
            "fingerprint": guest.fingerprint,
            "protected": guest.protected,
        },
        "op": {"id": op.id, "action": op.action, "params": op.params, "attempt": op.attempts},
    }


class Policy:
    """Safety checks run before anything is sent (SPEC §2 step 2)."""

    def __init__(
        self,
        *,
        journal: Journal | None = None,
        clock: Clock | None = None,
        protected_vmids: frozenset[int] = frozenset(),
    ) -> None:
        self.journal = journal
        self.clock = clock
        self.protected_vmids = protected_vmids

    async def _guest(self, op: Op) -> GuestRecord | None:
        return await self.journal.find_guest(op.guest.vmid) if self.journal is not None else None

    async def facts(self, op: Op) -> GuestFacts:
        """What the journal knows about the guest (ownership, fingerprint, protection)."""
        if self.journal is None:
            return GuestFacts()
        return await self.journal.guests.guest_safety(op.guest.vmid)

    async def check(self, op: Op, spec: ActionSpec, view: GuestView) -> PolicyVerdict:
        """The verdict for ``op``; a refusal is audited here."""
        verdict = decide(op, spec, view, await self.facts(op), protected_vmids=self.protected_vmids)
        if verdict.verdict is Verdict.REFUSE:
            await self.audit(op, view, Decision.REFUSED, f"{verdict.code}: {verdict.reason}")
            log.warning(
                "policy.refused",
                extra={
                    "op_id": op.id,
                    "vmid": op.guest.vmid,
                    "node": op.guest.node,
                    "action": op.action,
                    "code": verdict.code,
                },
            )
        return verdict

    async def audit_allowed(self, op: Op, spec: ActionSpec, view: GuestView) -> None:
        """Audit a destructive op (reconcile's own included) the moment before it is sent."""
        effects = destructive_effects(spec.action, spec.kind, op.params)
        if effects:
            await self.audit(
                op,
                view,
                Decision.ALLOWED,
                f"destructive op allowed by policy ({', '.join(sorted(effects))})",
            )

    async def record(self, op: Op, view: GuestView, decision: Decision, reason: str) -> AuditRecord:
        """The audit record of a decision about ``op`` (not yet written)."""
        assert self.journal is not None and self.clock is not None
        return AuditRecord(
            at=self.clock.now(),
            actor=op.actor,
            action=op.action,
            decision=decision,
            reason=reason,
            vmid=op.guest.vmid,
            node=op.guest.node,
            snapshot=guest_snapshot(op, view, await self._guest(op)),
        )

    async def audit(self, op: Op, view: GuestView, decision: Decision, reason: str) -> None:
        if self.journal is None:
            return
        await self.journal.append_audit(await self.record(op, view, decision, reason))
