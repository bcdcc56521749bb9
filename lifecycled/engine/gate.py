"""The policy gate: gathers what :func:`lifecycled.policy.evaluate` needs, then asks it."""

from __future__ import annotations

from lifecycled.domain.actions import ActionSpec, GuestView
from lifecycled.domain.op import Op
from lifecycled.errors import PolicyRefused
from lifecycled.policy import GuestFacts, evaluate


class Policy:
    """Safety checks run before anything is sent (SPEC §2 step 2)."""

    def __init__(self, *, protected_vmids: frozenset[int] = frozenset()) -> None:
        self.protected_vmids = protected_vmids

    async def facts(self, op: Op) -> GuestFacts:
        """What the journal knows about the guest (ownership, fingerprint, protection)."""
        return GuestFacts()

    async def check(self, op: Op, spec: ActionSpec, view: GuestView) -> PolicyRefused | None:
        return evaluate(op, spec, view, await self.facts(op), protected_vmids=self.protected_vmids)
