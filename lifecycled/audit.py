"""Append-only audit records of destructive decisions (SPEC §4 "Audit log").

Every destructive decision — allowed, refused (and why), soft-deleted, LOST, adopted,
released, node transitions — is one :class:`AuditRecord`: who decided, what, about which
guest, why, and a snapshot of the guest state at that moment.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import attrs


class Decision(enum.StrEnum):
    """What was decided."""

    ALLOWED = "allowed"
    REFUSED = "refused"
    SOFT_DELETED = "soft_deleted"
    LOST = "lost"
    FOUND = "found"  # a LOST guest reappeared with the same fingerprint
    MANAGED = "managed"
    ADOPTED = "adopted"
    RELEASED = "released"
    NODE_TRANSITION = "node_transition"
    PRUNED = "pruned"  # ``lifecycled audit prune`` removed older records (it audits itself)


#: The youngest records ``audit prune`` may remove: a prune never erases the last day.
MIN_AUDIT_RETENTION = 86400.0


def prune_cutoff(now: float, older_than: float) -> float:
    """The time before which ``audit prune --older-than`` removes records (ValueError if the
    retention is shorter than :data:`MIN_AUDIT_RETENTION`)."""
    if not older_than >= MIN_AUDIT_RETENTION:
        raise ValueError("the audit log keeps at least one day: --older-than must be 1d or more")
    return now - older_than


def _snapshot(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return dict(value) if value is not None else None


@attrs.frozen(kw_only=True)
class AuditRecord:
    """One audit entry. ``actor`` is ``api:<token-name>``, ``cli``, ``reconcile`` or ``janitor``."""

    at: float
    actor: str
    action: str
    decision: Decision
    reason: str
    vmid: int | None = None
    node: str | None = None
    snapshot: dict[str, Any] | None = attrs.field(default=None, converter=_snapshot)
    id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        from lifecycled.domain.serialize import rfc3339

        return {
            "id": self.id,
            "at": rfc3339(self.at),
            "actor": self.actor,
            "action": self.action,
            "decision": str(self.decision),
            "vmid": self.vmid,
            "node": self.node,
            "reason": self.reason,
            "snapshot": self.snapshot,
        }


@attrs.frozen(kw_only=True)
class AuditPage:
    items: list[AuditRecord]
    next_cursor: int | None
