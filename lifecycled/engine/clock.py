"""Time as a port: the engine never calls ``time`` directly, so tests can steer it.

Every wait of the daemon's loops is "sleep until a timeout, unless stop (or new work)
comes first": that is :meth:`Clock.wait_or_stop`, the one way the engine waits. A test
clock implements it on virtual time, so the loops it drives never sleep for real.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock epoch seconds (what the journal stores)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin, for intervals."""
        ...

    async def wait_or_stop(
        self, stop: asyncio.Event, seconds: float, *, wake: asyncio.Event | None = None
    ) -> bool:
        """Wait ``seconds``, or less when ``stop`` or ``wake`` is set first (already set:
        no wait). True when ``stop`` is set: the caller's loop ends."""
        ...


async def first_set(events: list[asyncio.Event], seconds: float | None) -> None:
    """Return when any of ``events`` is set, or after ``seconds`` (None: no time limit).

    The one place the engine waits on events; each waiter it starts is cancelled on return.
    """
    if any(e.is_set() for e in events):
        return
    if seconds is not None and seconds <= 0:
        await asyncio.sleep(0)  # a zero wait still yields to the loop
        return
    waiters = {asyncio.ensure_future(e.wait()) for e in events}
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def wait_or_stop(
        self, stop: asyncio.Event, seconds: float, *, wake: asyncio.Event | None = None
    ) -> bool:
        events = [stop] if wake is None else [stop, wake]
        await first_set(events, max(seconds, 0.0))
        return stop.is_set()
