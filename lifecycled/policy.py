"""Safety verdicts (SPEC §4) — pure: an op, its action spec, what Proxmox shows, and what
the journal knows about the guest in; allow, refuse (with a stable code), or soft-delete out.

Rules, in order:

1. create/clone may only land on a vmid lifecycled owns or does not know, or one whose
   guest is gone from Proxmox (the submission checked the journal's row);
2. anything else needs a managed guest (``native`` or ``adopted``): ``guest_not_managed``;
3. a destructive op (:func:`lifecycled.domain.actions.is_destructive`: terminate, stop,
   reset, a forced shutdown, a configure that removes a disk, a local-disk migrate, a forced
   create) never touches a guest with the Proxmox ``protection`` flag or one listed as
   protected: ``protected``. Two exceptions: a configure whose only destructive effect is
   turning ``protection`` off (the one way to lift it; signed and audited like any other
   destructive op), and reconcile's own ops (a forced shutdown towards desired ``stopped``;
   audited);
4. a destructive op verifies the guest's identity fingerprint: a reused VMID is refused,
   ``fingerprint_mismatch``;
5. ``terminate`` of an ``adopted`` guest is a soft delete: released, never destroyed.
"""

from __future__ import annotations

import enum

import attrs

from lifecycled.domain.actions import (
    Action,
    ActionSpec,
    Effect,
    GuestView,
    destructive_effects,
    fingerprint_matches,
    fingerprint_of,
)
from lifecycled.domain.guests import GuestFacts, GuestOrigin
from lifecycled.domain.op import Op, Origin
from lifecycled.errors import PolicyRefused


class Verdict(enum.StrEnum):
    ALLOW = "allow"
    REFUSE = "refuse"
    SOFT_DELETE = "soft_delete"


@attrs.frozen(kw_only=True)
class PolicyVerdict:
    verdict: Verdict
    code: str = ""
    reason: str = ""

    @property
    def refusal(self) -> PolicyRefused | None:
        if self.verdict is Verdict.REFUSE:
            return PolicyRefused(self.code, self.reason)
        return None


ALLOW = PolicyVerdict(verdict=Verdict.ALLOW, code="allowed", reason="allowed")


def _refuse(code: str, reason: str) -> PolicyVerdict:
    return PolicyVerdict(verdict=Verdict.REFUSE, code=code, reason=reason)


def _protection(
    op: Op,
    spec: ActionSpec,
    view: GuestView,
    facts: GuestFacts,
    effects: frozenset[Effect],
    protected_vmids: frozenset[int],
) -> PolicyVerdict | None:
    """Rule 3: the refusal of a destructive op on a protected guest, or ``None``."""
    if not effects - {Effect.PROTECTION_OFF} or op.origin is Origin.RECONCILE:
        return None
    vmid = op.guest.vmid
    what = f"{spec.action} ({', '.join(sorted(effects))})"
    if str(view.config.get("protection", "0")) == "1":
        return _refuse(
            "protected",
            f"guest {vmid} has the Proxmox protection flag set; {what} is refused "
            "(turning protection off first is itself a destructive, signed configure)",
        )
    if vmid in protected_vmids or facts.protected:
        return _refuse("protected", f"guest {vmid} is listed as protected; {what} is refused")
    return None


def decide(
    op: Op,
    spec: ActionSpec,
    view: GuestView,
    facts: GuestFacts,
    *,
    protected_vmids: frozenset[int] = frozenset(),
) -> PolicyVerdict:
    """The verdict for ``op`` (see the module docstring for the rules)."""
    vmid = op.guest.vmid
    effects = destructive_effects(spec.action, spec.kind, op.params)
    if spec.action in (Action.CREATE, Action.CLONE):
        if facts.origin in (None, GuestOrigin.NATIVE) or not view.exists:
            return _protection(op, spec, view, facts, effects, protected_vmids) or ALLOW
        return _refuse("vmid_in_use", f"vmid {vmid} belongs to a {facts.origin} guest")
    if facts.origin is None or not facts.origin.managed:
        what = "unknown to lifecycled" if facts.origin is None else f"{facts.origin}"
        return _refuse("guest_not_managed", f"guest {vmid} is {what}, not managed by lifecycled")
    refused = _protection(op, spec, view, facts, effects, protected_vmids)
    if refused is not None:
        return refused
    if effects and facts.fingerprint and view.exists:
        current = fingerprint_of(op.guest.kind, view.config)
        if not fingerprint_matches(facts.fingerprint, current):
            return _refuse(
                "fingerprint_mismatch",
                f"guest {vmid} no longer matches its recorded identity "
                f"(recorded {dict(facts.fingerprint)}, found {current}: the VMID was reused?); "
                f"{spec.action} refused",
            )
    if spec.action is Action.TERMINATE and facts.origin is GuestOrigin.ADOPTED:
        return PolicyVerdict(
            verdict=Verdict.SOFT_DELETE,
            code="soft_deleted",
            reason=f"guest {vmid} is adopted: terminate releases it and never destroys it",
        )
    return ALLOW


def evaluate(
    op: Op,
    spec: ActionSpec,
    view: GuestView,
    facts: GuestFacts,
    *,
    protected_vmids: frozenset[int] = frozenset(),
) -> PolicyRefused | None:
    """The refusal of :func:`decide`, or ``None`` (allowed or soft-deleted)."""
    return decide(op, spec, view, facts, protected_vmids=protected_vmids).refusal
