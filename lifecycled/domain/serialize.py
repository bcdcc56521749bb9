"""The wire shapes users see (SPEC §5): ops, history, timestamps — shared by CLI and HTTP."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterable
from typing import Any

from lifecycled.domain.op import HistoryEntry, Op


@functools.lru_cache(maxsize=4096)
def rfc3339(ts: float | None) -> str | None:
    """An epoch timestamp as RFC 3339 UTC with millisecond precision (``…Z``).

    Cached: an op's answer shows the same few timestamps (created, updated, next attempt
    are one moment on a new op) and the text of a float never changes."""
    if ts is None:
        return None
    moment = dt.datetime.fromtimestamp(ts, tz=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_rfc3339(text: str) -> float:
    """An RFC 3339 timestamp (``Z`` or an offset) as epoch seconds; ValueError if malformed."""
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no time zone")
    return value.timestamp()


def history_to_dict(entry: HistoryEntry) -> dict[str, Any]:
    return {
        "at": rfc3339(entry.at),
        "from": str(entry.from_state) if entry.from_state is not None else None,
        "to": str(entry.to_state),
        "reason": entry.reason,
        "attempt": entry.attempt,
        "upid": entry.upid,
    }


def op_to_dict(
    op: Op,
    *,
    history: Iterable[HistoryEntry] | None = None,
    deduplicated: bool | None = None,
) -> dict[str, Any]:
    """An op as SPEC §5 shows it, plus ``history`` / ``deduplicated`` when given."""
    out: dict[str, Any] = {
        "id": op.id,
        "idempotency_key": op.idempotency_key,
        "action": op.action,
        "guest": op.guest.to_dict(),
        "params": op.params,
        "origin": str(op.origin),
        "state": str(op.state),
        "attempts": op.attempts,
        "next_attempt_at": rfc3339(op.next_attempt_at),
        "upid": op.upid_text,
        "exitstatus": op.exitstatus,
        "error": op.error.to_dict() if op.error is not None else None,
        "created_at": rfc3339(op.created_at),
        "updated_at": rfc3339(op.updated_at),
        "finished_at": rfc3339(op.finished_at),
    }
    if deduplicated is not None:
        out["deduplicated"] = deduplicated
    if history is not None:
        out["history"] = [history_to_dict(h) for h in history]
    return out
