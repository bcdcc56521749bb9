"""Polling that knows how long tasks take: after history exists, a task is looked at when
it has likely ended, and still noticed within one poll interval of its end."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from clock_support import ManualClock
from conftest import SimFactory
from engine_support import pick, running, submit, wait_terminal

from lifecycled.domain.op import Op
from lifecycled.domain.polling import MIN_SAMPLES, READ_BURST, READ_RATE
from lifecycled.domain.states import OpState
from lifecycled.engine.runtime import Runtime
from lifecycled.engine.tracker import READ_CONCURRENCY, Tracker
from lifecycled.sim import SimServer
from lifecycled.sim.model import Guest
from lifecycled.sim.records import RequestRecord

POLL_INTERVAL = 2.0


def status_polls(sim: SimServer, upid: str) -> int:
    """``GET …/tasks/{upid}/status`` requests the simulator received for ``upid``."""
    return sum(
        1
        for r in sim.sim.requests
        if r.method == "GET" and upid in r.path and r.path.endswith("/status")
    )


async def test_a_learned_two_second_task_is_polled_at_most_twice(
    sim_factory: SimFactory, tmp_path: Path
) -> None:
    """With 2 s starts in the journal's history, a lone 2 s start is polled at most twice and
    its op ends within one poll interval of the task's end."""
    sim = await sim_factory(nodes=("pve1",), task_durations={"qmstart": 2.0})
    taken: set[int] = set()
    guests = [pick(sim, "qemu", True, avoid=taken) for _ in range(MIN_SAMPLES + 1)]
    for guest in guests:
        sim.sim.set_guest_status(guest.vmid, "stopped")
    lone, history = guests[0], guests[1:]
    async with running(sim, tmp_path, poll_interval=POLL_INTERVAL) as rt:
        ops = [await submit(rt, "start", guest) for guest in history]
        for op in ops:
            assert (await wait_terminal(rt, op.id)).state is OpState.SUCCEEDED
    # A restarted daemon learns the durations from the journal before it tracks anything.
    async with running(sim, tmp_path, poll_interval=POLL_INTERVAL) as rt:
        op = await submit(rt, "start", lone)
        done = await wait_terminal(rt, op.id)
    assert done.state is OpState.SUCCEEDED
    assert done.upid_text is not None and done.finished_at is not None
    assert 1 <= status_polls(sim, done.upid_text) <= 2
    task = sim.sim.books["pve1"].by_upid[done.upid_text]
    assert task.ended_at is not None
    assert 0 <= done.finished_at - task.ended_at <= POLL_INTERVAL


async def test_a_burst_the_archiver_has_not_filed_is_noticed_within_one_poll_interval(
    sim_factory: SimFactory, tmp_path: Path
) -> None:
    """Twenty tasks on one node that end after the last fork stay listed as running until the
    archiver runs (30 s here); each op still ends within one poll interval of its task."""
    burst = 20
    sim = await sim_factory(
        nodes=("pve1",), guests=80, archive_interval=30.0, task_durations={"qmstart": 1.0}
    )
    taken: set[int] = set()
    guests = [pick(sim, "qemu", True, avoid=taken) for _ in range(burst)]
    for guest in guests:
        sim.sim.set_guest_status(guest.vmid, "stopped")
    async with running(sim, tmp_path, poll_interval=POLL_INTERVAL, workers=8, node_cap=burst) as rt:
        ops = [await submit(rt, "start", guest) for guest in guests]
        done = [await wait_terminal(rt, op.id) for op in ops]
    assert {op.state for op in done} == {OpState.SUCCEEDED}
    lags = []
    for op in done:
        assert op.upid_text is not None and op.finished_at is not None
        ended_at = sim.sim.books["pve1"].by_upid[op.upid_text].ended_at
        assert ended_at is not None
        lags.append(op.finished_at - ended_at)
    assert min(lags) >= 0
    assert max(lags) <= POLL_INTERVAL


async def _tracker_idle(clock: ManualClock, tracker: Tracker) -> None:
    """Until the tracker has done everything due (no node's tick under way, nothing left to
    plan) and waits on ``clock`` for a later time."""
    async with asyncio.timeout(10):
        while clock.waiting.get("tracker", -1.0) <= clock.monotonic() or tracker.busy:
            await asyncio.sleep(0.005)


async def _step(clock: ManualClock, tracker: Tracker, seconds: float) -> None:
    clock.advance(seconds)
    await _tracker_idle(clock, tracker)


async def test_a_task_that_ended_while_listed_running_is_read_within_one_poll_interval(
    sim_factory: SimFactory, tmp_path: Path
) -> None:
    """A task that ends while its node's list still shows it RUNNING (no fork since, no
    archiver run) is read, and its op ends, within one poll interval — though younger tasks
    on the node make the tracker list it every half second (time on a test clock)."""
    sim = await sim_factory(
        nodes=("pve1",),
        archive_interval=3600.0,
        task_durations={"qmstart": 3.0, "qmshutdown": 600.0},
    )
    clock = ManualClock()
    taken: set[int] = set()
    old = pick(sim, "qemu", False, avoid=taken)
    young = [pick(sim, "qemu", True, avoid=taken) for _ in range(3)]
    async with running(
        sim, tmp_path, clock=clock, poll_interval=POLL_INTERVAL, workers=4, node_cap=8
    ) as rt:
        op = await submit(rt, "start", old)
        async with asyncio.timeout(10):
            while op.id not in rt.tracker.tracked_ids():
                await asyncio.sleep(0.005)
        await _tracker_idle(clock, rt.tracker)
        for _ in range(21):  # 10.5 s of tracking on the clock: the cadence is now 2 s
            await _step(clock, rt.tracker, 0.5)
        op = await rt.journal.get(op.id)
        assert op.upid_text is not None
        task = sim.sim.books["pve1"].by_upid[op.upid_text]
        assert task.running  # still running in real time: each read said so
        others = [await submit(rt, "shutdown", guest) for guest in young]
        async with asyncio.timeout(10):
            while not {o.id for o in others} <= rt.tracker.tracked_ids():
                await asyncio.sleep(0.005)
            while task.running:  # it ends now, after the last fork on the node
                await asyncio.sleep(0.01)
        ended = clock.monotonic()
        assert not task.archived and (await rt.journal.get(op.id)).state is OpState.RUNNING
        for _ in range(8):  # one poll interval on the clock, in quarter-second steps
            await _step(clock, rt.tracker, POLL_INTERVAL / 8)
            assert clock.monotonic() - ended <= POLL_INTERVAL
        assert not task.archived  # the list showed it RUNNING all along
        assert (await rt.journal.get(op.id)).state is OpState.SUCCEEDED
        assert {(await rt.journal.get(o.id)).state for o in others} == {OpState.RUNNING}


def _stopped_guests(sim: SimServer, n: int, node: str = "pve1") -> list[Guest]:
    """``n`` plain qemu guests of ``node``, stopped (ready to be started)."""
    taken: set[int] = set()
    on_node: Callable[[Guest], bool] = lambda g: g.node == node  # noqa: E731
    guests = [pick(sim, "qemu", True, avoid=taken, where=on_node) for _ in range(n)]
    for guest in guests:
        sim.sim.set_guest_status(guest.vmid, "stopped")
    return guests


async def _tracking(rt: Runtime, clock: ManualClock, ops: list[Op]) -> None:
    """Until every op of ``ops`` is tracked and the tracker is idle."""
    async with asyncio.timeout(30):
        while not {op.id for op in ops} <= rt.tracker.tracked_ids():
            await asyncio.sleep(0.005)
    await _tracker_idle(clock, rt.tracker)


async def _started_past_youth(rt: Runtime, clock: ManualClock, guests: list[Guest]) -> list[Op]:
    """Start ``guests``, wait until every op is tracked, then 12 s on the clock (in quarter
    seconds): past the young tasks' fast cadence."""
    ops = [await submit(rt, "start", guest) for guest in guests]
    await _tracking(rt, clock, ops)
    for _ in range(48):
        await _step(clock, rt.tracker, 0.25)
    return ops


def _status_reads(sim: SimServer, since: int, node: str = "pve1") -> list[RequestRecord]:
    return [
        r
        for r in sim.sim.requests
        if r.seq > since
        and r.method == "GET"
        and r.path.startswith(f"/api2/json/nodes/{node}/tasks/")
        and r.path.endswith("/status")
    ]


async def test_many_long_tasks_on_a_node_share_its_read_budget_and_none_is_starved(
    sim_factory: SimFactory, tmp_path: Path
) -> None:
    """Sixty clones-long tasks on one node get at most READ_RATE status reads a second between
    them (not one per task every 1.8 s), and every one of them is still read, in turn."""
    tasks = 60
    sim = await sim_factory(
        nodes=("pve1",), guests=150, archive_interval=3600.0, task_durations={"qmstart": 3600.0}
    )
    clock = ManualClock()
    guests = _stopped_guests(sim, tasks)
    async with running(
        sim, tmp_path, clock=clock, poll_interval=POLL_INTERVAL, workers=8, node_cap=tasks
    ) as rt:
        await _started_past_youth(rt, clock, guests)
        since = sim.sim.requests[-1].seq
        window = 10.0
        for _ in range(int(window / 0.25)):
            await _step(clock, rt.tracker, 0.25)
        reads = _status_reads(sim, since)
        assert len(rt.tracker) == tasks
    assert len(reads) <= READ_RATE * window + READ_BURST
    per_task = Counter(r.path for r in reads)
    assert len(per_task) == tasks  # none starved
    assert min(per_task.values()) >= 2


async def test_a_node_failing_its_status_reads_is_not_read_once_per_task(
    sim_factory: SimFactory, tmp_path: Path
) -> None:
    """When a node answers its task status reads with a 500, the tracker stops reading it
    for the tick and backs off all its tasks: a handful of failed reads, not one per task."""
    tasks = 12
    sim = await sim_factory(
        nodes=("pve1",), guests=40, archive_interval=3600.0, task_durations={"qmstart": 3600.0}
    )
    clock = ManualClock()
    guests = _stopped_guests(sim, tasks)
    async with running(
        sim, tmp_path, clock=clock, poll_interval=POLL_INTERVAL, workers=4, node_cap=tasks
    ) as rt:
        await _started_past_youth(rt, clock, guests)
        sim.sim.add_fault(method="GET", path=r"/tasks/[^/]+/status$", status=500, count=None)
        since = sim.sim.requests[-1].seq
        for _ in range(14):  # 3.5 s on the clock: every task's read comes due
            await _step(clock, rt.tracker, 0.25)
        failed = [r for r in _status_reads(sim, since) if r.status == 500]
        assert len(rt.tracker) == tasks
    assert 1 <= len(failed) <= READ_CONCURRENCY


async def test_a_node_slow_to_answer_holds_up_no_other_node(
    sim_factory: SimFactory, tmp_path: Path
) -> None:
    """While one node takes seconds to answer each status read, a task that ended on
    another node is still noticed at once when its look comes (nodes tick side by side)."""
    sim = await sim_factory(
        nodes=("pve1", "pve2"),
        guests=40,
        archive_interval=3600.0,
        task_durations={"qmstart": 3600.0, "qmstop": 0.2},
    )
    clock = ManualClock()
    slow = _stopped_guests(sim, 3, "pve1")
    other = pick(sim, "qemu", True, where=lambda g: g.node == "pve2")
    async with running(sim, tmp_path, clock=clock, poll_interval=POLL_INTERVAL, node_cap=8) as rt:
        ops = [await submit(rt, "start", guest) for guest in slow]
        await _tracking(rt, clock, ops)
        sim.sim.add_fault(
            method="GET", path=r"/nodes/pve1/tasks/[^/]+/status$", delay=4.0, count=None
        )
        armed = sim.sim.requests[-1].seq
        op = await submit(rt, "stop", other)
        await _tracking(rt, clock, [op])
        op = await rt.journal.get(op.id)
        assert op.upid_text is not None
        task = sim.sim.books["pve2"].by_upid[op.upid_text]
        async with asyncio.timeout(10):
            while task.running:
                await asyncio.sleep(0.01)
        started = time.monotonic()
        clock.advance(POLL_INTERVAL + 0.25)  # pve1's reads and pve2's look are all due
        async with asyncio.timeout(20):
            while not (op := await rt.journal.get(op.id)).state.is_terminal:
                await asyncio.sleep(0.01)
        took = time.monotonic() - started
        slow_reads = _status_reads(sim, armed)
    assert op.state is OpState.SUCCEEDED
    assert took < 2.0
    assert slow_reads  # pve1's reads (4 s each) had been sent before pve2's op ended


async def test_a_task_that_ended_while_its_node_failed_is_noticed_soon_after_it_answers(
    sim_factory: SimFactory, tmp_path: Path
) -> None:
    """A task that ended while its node answered its task reads with 500s has its op terminal
    within one poll interval of the node's first answer again, though a task tracked late in
    the outage (backed off less) is the one whose look finds the node answering."""
    tasks = 12
    sim = await sim_factory(
        nodes=("pve1",),
        guests=40,
        archive_interval=3600.0,
        task_durations={"qmstart": 3600.0, "qmshutdown": 6.0},
    )
    clock = ManualClock()
    guests = _stopped_guests(sim, tasks)
    other = pick(sim, "qemu", True, where=lambda g: g.node == "pve1")
    late = pick(sim, "qemu", True, avoid={other.vmid}, where=lambda g: g.node == "pve1")
    sim.sim.set_guest_status(late.vmid, "stopped")
    async with running(
        sim, tmp_path, clock=clock, poll_interval=POLL_INTERVAL, workers=4, node_cap=tasks + 2
    ) as rt:
        await _started_past_youth(rt, clock, guests)
        op = await submit(rt, "shutdown", other)
        await _tracking(rt, clock, [op])
        op = await rt.journal.get(op.id)
        assert op.upid_text is not None
        task = sim.sim.books["pve1"].by_upid[op.upid_text]
        sim.sim.add_fault(method="GET", path=r"/nodes/pve1/tasks", status=500, count=None)
        while clock.monotonic() < 45.0:  # the node's tasks back off to FAILING_MAX
            await _step(clock, rt.tracker, 0.25)
        young = await submit(rt, "start", late)
        await _tracking(rt, clock, [young])
        async with asyncio.timeout(10):
            while task.running:  # it ends during the outage, after the node's last fork
                await asyncio.sleep(0.01)
        while clock.monotonic() < 60.0:
            await _step(clock, rt.tracker, 0.25)
        assert task.ended_at is not None and not task.archived
        assert not (await rt.journal.get(op.id)).state.is_terminal
        sim.sim.clear_faults()
        recovered = clock.monotonic()
        cleared = sim.sim.requests[-1].seq
        answered: float | None = None
        while not (op := await rt.journal.get(op.id)).state.is_terminal:
            assert clock.monotonic() - recovered <= 120.0
            await _step(clock, rt.tracker, 0.25)
            if answered is None and any(
                r.seq > cleared and r.status == 200 and "/nodes/pve1/" in r.path
                for r in sim.sim.requests
            ):
                answered = clock.monotonic()
        ended = clock.monotonic()
    assert op.state is OpState.SUCCEEDED
    assert answered is not None
    assert ended - answered <= POLL_INTERVAL


async def test_a_node_answering_again_has_its_backed_off_tasks_read_within_its_budget(
    sim_factory: SimFactory, tmp_path: Path
) -> None:
    """When a failing node answers again, all its sixty backed-off tasks are read within
    two seconds, no more than READ_BURST of them at once (the budget holds the rest)."""
    tasks = 60
    sim = await sim_factory(
        nodes=("pve1",), guests=150, archive_interval=3600.0, task_durations={"qmstart": 3600.0}
    )
    clock = ManualClock()
    guests = _stopped_guests(sim, tasks + 1)
    late, guests = guests[0], guests[1:]
    async with running(
        sim, tmp_path, clock=clock, poll_interval=POLL_INTERVAL, workers=8, node_cap=tasks + 2
    ) as rt:
        ops = await _started_past_youth(rt, clock, guests)
        sim.sim.add_fault(method="GET", path=r"/nodes/pve1/tasks", status=500, count=None)
        while clock.monotonic() < 45.0:  # the node's tasks back off to FAILING_MAX
            await _step(clock, rt.tracker, 0.25)
        young = await submit(rt, "start", late)  # backed off less: its look comes first
        await _tracking(rt, clock, [young])
        while clock.monotonic() < 60.0:
            await _step(clock, rt.tracker, 0.25)
        sim.sim.clear_faults()
        since = sim.sim.requests[-1].seq
        while not [r for r in _status_reads(sim, since) if r.status == 200]:
            assert clock.monotonic() < 120.0
            await _step(clock, rt.tracker, 0.25)
        at_once = len(_status_reads(sim, since))  # the reads of the tick that was answered
        for _ in range(8):  # two seconds on the clock
            await _step(clock, rt.tracker, 0.25)
        reads = _status_reads(sim, since)
        upids = {(await rt.journal.get(op.id)).upid_text for op in ops}
    assert at_once <= READ_BURST
    assert all(r.status == 200 for r in reads)
    assert upids <= {r.path.split("/tasks/")[1].removesuffix("/status") for r in reads}
