"""Op states and their classes (SPEC §1 "Op states"); the transitions between them are
:mod:`lifecycled.domain.lifecycle`."""

from __future__ import annotations

import enum


class OpState(enum.StrEnum):
    """Where an op is in its life."""

    PENDING = "pending"
    DISPATCHING = "dispatching"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD_LETTERED = "dead_lettered"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """No worker will touch an op in this state again without an operator or a re-arm."""
        return self in TERMINAL

    @property
    def is_in_flight(self) -> bool:
        """Claimed by a worker: Proxmox may be acting on it."""
        return self in IN_FLIGHT

    @property
    def is_open(self) -> bool:
        """Not terminal: pending or in flight."""
        return self not in TERMINAL


IN_FLIGHT: frozenset[OpState] = frozenset({OpState.DISPATCHING, OpState.RUNNING})
TERMINAL: frozenset[OpState] = frozenset(
    {OpState.SUCCEEDED, OpState.FAILED, OpState.DEAD_LETTERED, OpState.CANCELLED}
)
#: Terminal states an operator retry or a re-armed idempotency key may take back to pending.
REARMABLE: frozenset[OpState] = frozenset(
    {OpState.FAILED, OpState.DEAD_LETTERED, OpState.CANCELLED}
)
