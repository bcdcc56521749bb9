"""The engine's loops wait on the injected clock (``Clock.wait_or_stop``) and on one stop
signal owned by the runtime: a test clock drives them without real sleeping."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from clock_support import ManualClock
from engine_support import (
    client_for,
    fast_settings,
    pick,
    running,
    seed_guests,
    submit,
    writes_to,
)

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


@contextlib.asynccontextmanager
async def started(
    sim: SimServer, tmp_path: Path, clock: ManualClock, **overrides: Any
) -> AsyncIterator[tuple[Runtime, asyncio.Task[None]]]:
    """A runtime on ``clock`` (every simulator guest managed, retry jitter fixed at half the
    ceiling), ready, and its task."""
    settings = fast_settings(tmp_path, sim, **overrides)
    await seed_guests(settings.db, sim.sim.guests.values())
    runtime = await Runtime.build(settings, pve=client_for(sim), clock=clock, rand=lambda: 0.5)
    task = asyncio.create_task(runtime.run(), name="runtime")
    try:
        await asyncio.wait_for(runtime.ready.wait(), 10)
        yield runtime, task
    finally:
        runtime.request_stop()
        await asyncio.wait_for(task, 15)
        await runtime.close()


async def test_one_stop_wakes_every_loop_at_once(sim: SimServer, tmp_path: Path) -> None:
    """With time frozen every loop waits on the clock; one stop request ends them all at once."""
    clock = ManualClock()
    async with started(sim, tmp_path, clock) as (runtime, task):
        await parked(clock, LOOPS)
        runtime.request_stop()
        async with asyncio.timeout(2):  # no loop waits out its (virtual) timeout
            await task
        assert clock.waiting == {}


async def test_a_retry_is_claimed_when_the_clock_reaches_its_time(
    sim: SimServer, tmp_path: Path
) -> None:
    """A requeued op waits, with its workers idle on the clock, until the clock passes its
    next attempt; then it is sent again and succeeds."""
    clock = ManualClock()
    guest = pick(sim, "qemu", False)
    sim.sim.add_fault(
        method="POST",
        path=f"/qemu/{guest.vmid}/status/start$",
        count=1,
        status=500,
        reason=f"can't lock file '/var/lock/qemu-server/lock-{guest.vmid}.conf' - got timeout",
    )
    async with started(sim, tmp_path, clock, retry_backoff=4.0, max_backoff=4.0) as (rt, _):
        op = await submit(rt, "start", guest)
        async with asyncio.timeout(10):
            while (op := await rt.journal.get(op.id)).attempts < 1 or op.state is not (
                OpState.PENDING
            ):
                await asyncio.sleep(0.01)
        await parked(clock, {"dispatcher-0", "dispatcher-1"})
        assert op.next_attempt_at == clock.now() + 2.0  # half of the 4 s ceiling
        assert len(writes_to(sim, guest.vmid, "/status/start")) == 1
        clock.advance(1.9)  # not yet due: the workers look, and wait again
        await parked(clock, {"dispatcher-0", "dispatcher-1"})
        assert (await rt.journal.get(op.id)).state is OpState.PENDING
        async with asyncio.timeout(10):
            while not (op := await rt.journal.get(op.id)).state.is_terminal:
                clock.advance(0.5)
                await asyncio.sleep(0.02)
    assert op.state is OpState.SUCCEEDED
    assert op.attempts == 2
    assert len(writes_to(sim, guest.vmid, "/status/start")) == 2


async def test_tracker_polls_when_the_clock_reaches_the_poll_time(
    sim: SimServer, tmp_path: Path
) -> None:
    """A task that has ended is not polled while the clock stands still; once it moves, it is."""
    clock = ManualClock()
    guest = pick(sim, "qemu", False)
    async with running(sim, tmp_path, clock=clock) as rt:
        op = await submit(rt, "start", guest)
        async with asyncio.timeout(10):
            while (op := await rt.journal.get(op.id)).upid_text is None or "tracker" not in (
                clock.waiting
            ):
                await asyncio.sleep(0.01)
            assert op.upid_text is not None
            task = sim.sim.books[guest.node].by_upid[op.upid_text]
            while task.running:  # the task ends in real time ...
                await asyncio.sleep(0.01)
        # ... but the tracker waits on the clock, which has not moved: no poll yet.
        assert status_polls(sim, op.upid_text) == 0
        assert (await rt.journal.get(op.id)).state is OpState.RUNNING
        async with asyncio.timeout(10):
            while not (op := await rt.journal.get(op.id)).state.is_terminal:
                clock.advance(0.5)
                await asyncio.sleep(0.02)
    assert op.state is OpState.SUCCEEDED
    assert op.upid_text is not None and status_polls(sim, op.upid_text) >= 1
