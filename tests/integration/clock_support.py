"""A test clock: virtual time that moves only when the test says so."""

from __future__ import annotations

import asyncio
import time

from lifecycled.engine.clock import first_set


class ManualClock:
    """A :class:`~lifecycled.engine.clock.Clock` on virtual time: every
    :meth:`wait_or_stop` ends when ``stop`` or ``wake`` is set, or when :meth:`advance`
    moves the time past its deadline — never by real time passing."""

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else start
        self._mono = 0.0
        self._due: list[tuple[float, asyncio.Event]] = []
        #: Loops waiting right now: their task's name → virtual monotonic deadline.
        self.waiting: dict[str, float] = {}

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    async def wait_or_stop(
        self, stop: asyncio.Event, seconds: float, *, wake: asyncio.Event | None = None
    ) -> bool:
        if seconds <= 0:
            await first_set([stop], 0)
            return stop.is_set()
        task = asyncio.current_task()
        name = task.get_name() if task is not None else "?"
        due = (self._mono + seconds, asyncio.Event())
        self._due.append(due)
        self.waiting[name] = due[0]
        try:
            await first_set([stop, due[1]] if wake is None else [stop, due[1], wake], None)
        finally:
            self._due.remove(due)
            self.waiting.pop(name, None)
        return stop.is_set()

    def advance(self, seconds: float) -> None:
        """Move time on; every wait whose deadline has come ends."""
        self._now += seconds
        self._mono += seconds
        for deadline, event in self._due:
            if deadline <= self._mono:
                event.set()
