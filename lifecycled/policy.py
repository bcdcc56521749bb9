"""Safety verdicts (SPEC §4) — pure: an op, its action spec, what Proxmox shows, and what
the journal knows about the guest in; a refusal or ``None`` out."""

from __future__ import annotations

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


@attrs.frozen(kw_only=True)
class GuestFacts:
    """What the journal knows about a guest that matters for safety."""

    origin: str | None = None  # native | adopted | discovered | released | None (unknown)
    fingerprint: Mapping[str, str] = attrs.field(factory=dict)
    protected: bool = False


def evaluate(
    op: Op,
    spec: ActionSpec,
    view: GuestView,
    facts: GuestFacts,
    *,
    protected_vmids: frozenset[int] = frozenset(),
) -> PolicyRefused | None:
    """The first safety rule the op breaks, or ``None`` when it may be sent."""
    vmid = op.guest.vmid
    if spec.action is Action.TERMINATE:
        if str(view.config.get("protection", "0")) == "1":
            return PolicyRefused(
                "protected",
                f"guest {vmid} has the Proxmox protection flag set; it is never destroyed",
            )
        if vmid in protected_vmids or facts.protected:
            return PolicyRefused(
                "protected", f"guest {vmid} is listed as protected; it is never destroyed"
            )
        if facts.origin == "adopted":
            return PolicyRefused(
                "adopted_guest",
                f"guest {vmid} is adopted; terminate releases it instead of destroying it",
            )
    if facts.origin == "discovered":
        return PolicyRefused("guest_not_managed", f"guest {vmid} is not managed by lifecycled")
    if is_destructive(spec, op.params) and facts.fingerprint and view.exists:
        current = fingerprint_of(op.guest.kind, view.config)
        if not fingerprint_matches(facts.fingerprint, current):
            return PolicyRefused(
                "fingerprint_mismatch",
                f"guest {vmid} no longer matches its recorded identity (the VMID was reused?); "
                f"{spec.action} refused",
            )
    return None
