"""Whether Proxmox answers: the ``degraded`` state of ``/readyz`` and ``/v1/status``.

Every request the client makes reports here (the request hook): any HTTP answer means the API
is reachable, a call that got no answer (refused, reset, timed out) means it is not. While the
daemon is idle a light probe (``GET /version``) keeps the verdict fresh. Being unreachable
never refuses submissions: ops wait in the journal and are retried when Proxmox is back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from lifecycled.domain.serialize import rfc3339

log = logging.getLogger("lifecycled.engine.health")

#: The request hook's code for a call that got no HTTP answer (see ``pve.port.RequestHook``).
NO_ANSWER = "error"


class PveHealth:
    """The last verdict on Proxmox's reachability, since when, and why."""

    def __init__(self, *, now: Callable[[], float], on_change: Callable[[bool], None]) -> None:
        self._now = now
        self._on_change = on_change
        self.up: bool | None = None
        self.since: float | None = None
        self.reason: str | None = None
        self.last_answer: float | None = None
        self.last_request: float | None = None

    def record(self, up: bool, reason: str | None = None) -> None:
        """One observation: a request that got an answer (``up``) or none (with ``reason``)."""
        now = self._now()
        self.last_request = now
        if up:
            self.last_answer = now
        if up != self.up:
            self.up, self.since = up, now
            self._on_change(up)
            if up:
                log.info("pve.reachable")
            else:
                log.warning("pve.unreachable", extra={"reason": reason})
        self.reason = None if up else (reason or self.reason or "no answer")

    def on_request(self, method: str, endpoint: str, code: str, seconds: float) -> None:
        """The client's request hook."""
        if code == NO_ANSWER:
            self.record(False, f"{method} {endpoint}: no answer")
        else:
            self.record(True)

    def idle_for(self) -> float:
        """Seconds since the last request (a probe is due when the daemon is idle)."""
        return float("inf") if self.last_request is None else self._now() - self.last_request

    def to_dict(self) -> dict[str, Any]:
        return {
            "up": self.up,
            "since": rfc3339(self.since) if self.since is not None else None,
            "reason": self.reason,
            "last_answer": rfc3339(self.last_answer) if self.last_answer is not None else None,
        }
