"""The engine's loops wait on the injected clock (``Clock.wait_or_stop``) and on one stop
signal owned by the runtime: a test clock drives them without real sleeping."""

from __future__ import annotations

import asyncio
from pathlib import Path

from clock_support import ManualClock
from engine_support import client_for, fast_settings, pick, running, submit

from lifecycled.domain.states import OpState
from lifecycled.engine.runtime import Runtime
from lifecycled.sim import SimServer

#: The daemon's loops (named tasks of the runtime) with the settings of ``fast_settings``.
LOOPS = {"tracker", "dispatcher-0", "dispatcher-1", "janitor", "gauges", "reconcile", "pve-probe"}


async def parked(clock: ManualClock, names: set[str]) -> None:
    """Until every loop in ``names`` waits on ``clock``."""
    async with asyncio.timeout(10):
        while not names <= clock.waiting.keys():
            await asyncio.sleep(0.01)


def status_polls(sim: SimServer, upid: str) -> int:
    return sum(1 for r in sim.sim.requests if r.method == "GET" and upid in r.path)


async def test_one_stop_wakes_every_loop_at_once(sim: SimServer, tmp_path: Path) -> None:
    """With time frozen every loop waits on the clock; one stop request ends them all at once."""
    clock = ManualClock()
    runtime = await Runtime.build(fast_settings(tmp_path, sim), pve=client_for(sim), clock=clock)
    task = asyncio.create_task(runtime.run(), name="runtime")
    try:
        await asyncio.wait_for(runtime.ready.wait(), 10)
        await parked(clock, LOOPS)
        runtime.request_stop()
        async with asyncio.timeout(2):  # no loop waits out its (virtual) timeout
            await task
        assert clock.waiting == {}
    finally:
        runtime.request_stop()
        await asyncio.wait_for(task, 15)
        await runtime.close()


async def test_tracker_polls_when_the_clock_reaches_the_poll_time(
    sim: SimServer, tmp_path: Path
) -> None:
    """A task that has ended is not polled while the clock stands still; once it moves, it is."""
    clock = ManualClock()
    guest = pick(sim, "qemu", False)
    async with running(sim, tmp_path, clock=clock) as rt:
        op = await submit(rt, "start", guest)
        async with asyncio.timeout(10):
            while (op := await rt.journal.get(op.id)).upid is None or "tracker" not in (
                clock.waiting
            ):
                await asyncio.sleep(0.01)
            assert op.upid is not None
            task = sim.sim.books[guest.node].by_upid[op.upid]
            while task.running:  # the task ends in real time ...
                await asyncio.sleep(0.01)
        # ... but the tracker waits on the clock, which has not moved: no poll yet.
        assert status_polls(sim, op.upid) == 0
        assert (await rt.journal.get(op.id)).state is OpState.RUNNING
        async with asyncio.timeout(10):
            while not (op := await rt.journal.get(op.id)).state.is_terminal:
                clock.advance(0.5)
                await asyncio.sleep(0.02)
    assert op.state is OpState.SUCCEEDED
    assert op.upid is not None and status_polls(sim, op.upid) >= 1
