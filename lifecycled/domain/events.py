"""Push events (SPEC §5 "Push"): what the outbox holds and how a batch is put on the wire."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from lifecycled.domain.serialize import rfc3339


@attrs.frozen(kw_only=True)
class OutboxEvent:
    """One durable event: ``seq`` is global and increasing, so per-guest order holds."""

    seq: int
    type: str
    vmid: int | None
    payload: Mapping[str, Any]
    created_at: float
    attempts: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "type": self.type,
            "vmid": self.vmid,
            "at": rfc3339(self.created_at),
            "data": dict(self.payload),
        }


def events_body(node: str, events: Sequence[OutboxEvent]) -> dict[str, Any]:
    """A batch of events; the receiver drops any ``seq`` it has already seen."""
    return {"type": "events", "node": node, "events": [e.to_wire() for e in events]}


def heartbeat_body(
    node: str, state_hash: str, last_seq: int, unsent: int, now: float
) -> dict[str, Any]:
    """The periodic heartbeat: the observed-state hash lets the receiver detect drift."""
    return {
        "type": "heartbeat",
        "node": node,
        "at": rfc3339(now),
        "state_hash": state_hash,
        "last_seq": last_seq,
        "unsent": unsent,
    }


def full_sync_body(
    node: str, guests: Sequence[Mapping[str, Any]], state_hash: str, last_seq: int, now: float
) -> dict[str, Any]:
    """The whole guest table, sent when a heartbeat answer asks for it."""
    return {
        "type": "full_sync",
        "node": node,
        "at": rfc3339(now),
        "state_hash": state_hash,
        "last_seq": last_seq,
        "guests": [dict(g) for g in guests],
    }


def wants_full_sync(answer: Any) -> bool:
    """Whether a heartbeat answer asks for a full sync (``{"full_sync": true}``)."""
    return isinstance(answer, Mapping) and answer.get("full_sync") is True
