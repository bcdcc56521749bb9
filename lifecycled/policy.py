"""Safety verdicts (SPEC §4) — pure: an op, its action spec, what Proxmox shows, and what
the journal knows about the guest in; allow, refuse (with a stable code), or soft-delete out.

Rules, in order:

1. create/clone may only land on a vmid lifecycled owns or does not know, or one whose
   guest is gone from Proxmox (the submission checked the journal's row);
2. anything else needs a managed guest (``native`` or ``adopted``): ``guest_not_managed``;
3. ``terminate`` never destroys a guest with the Proxmox ``protection`` flag or one listed as
   protected: ``protected``;
4. a destructive op verifies the guest's identity fingerprint: a reused VMID is refused,
   ``fingerprint_mismatch``;
5. ``terminate`` of an ``adopted`` guest is a soft delete: released, never destroyed.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import attrs

from lifecycled.domain.actions import (
    Action,
    ActionSpec,
    GuestView,
    fingerprint_matches,
    fingerprint_of,
    is_destructive,
)
from lifecycled.domain.op import Op
from lifecycled.errors import PolicyRefused

_MANAGED = frozenset({"native", "adopted"})


@attrs.frozen(kw_only=True)
class GuestFacts:
    """What the journal knows about a guest that matters for safety."""

    origin: str | None = None  # native | adopted | discovered | released | None (no row)
    fingerprint: Mapping[str, str] = attrs.field(factory=dict)
    protected: bool = False


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
    if spec.action in (Action.CREATE, Action.CLONE):
        if facts.origin in (None, "native") or not view.exists:
            return ALLOW
        return _refuse("vmid_in_use", f"vmid {vmid} belongs to a {facts.origin} guest")
    if facts.origin not in _MANAGED:
        what = "unknown to lifecycled" if facts.origin is None else f"{facts.origin}"
        return _refuse("guest_not_managed", f"guest {vmid} is {what}, not managed by lifecycled")
    if spec.action is Action.TERMINATE:
        if str(view.config.get("protection", "0")) == "1":
            return _refuse(
                "protected",
                f"guest {vmid} has the Proxmox protection flag set; it is never destroyed",
            )
        if vmid in protected_vmids or facts.protected:
            return _refuse("protected", f"guest {vmid} is listed as protected; never destroyed")
    if is_destructive(spec, op.params) and facts.fingerprint and view.exists:
        current = fingerprint_of(op.guest.kind, view.config)
        if not fingerprint_matches(facts.fingerprint, current):
            return _refuse(
                "fingerprint_mismatch",
                f"guest {vmid} no longer matches its recorded identity "
                f"(recorded {dict(facts.fingerprint)}, found {current}: the VMID was reused?); "
                f"{spec.action} refused",
            )
    if spec.action is Action.TERMINATE and facts.origin == "adopted":
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
