"""A bad op fails alone (issue 10 point 5): an exception while handling one op ends that op
(or leaves it for the janitor) and never stops the daemon, against the simulator over HTTP.

The bad ops are written straight into the journal, as a client could get them past a less
careful door, or an older version could have journaled them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from engine_support import (
    client_for,
    journal_op,
    pick,
    running,
    seeded,
    started,
    submit,
    token_auth,
    wait_terminal,
    writes_to,
)

from lifecycled.domain.classify import ErrorClass
from lifecycled.domain.states import OpState
from lifecycled.journal import Journal
from lifecycled.pve.http import HttpPveClient
from lifecycled.sim import SimServer
from lifecycled.sim.model import Guest


@pytest.mark.parametrize(
    "bad_params",
    [{"cores\n": 2}, {"description": "\ud800"}],
    ids=["newline-in-key", "lone-surrogate-value"],
)
async def test_unencodable_op_fails_internal_and_others_proceed(
    sim: SimServer, tmp_path: Path, bad_params: dict[str, Any]
) -> None:
    """An unencodable op ends failed (internal), unsent; a good op beside it succeeds."""
    taken: set[int] = set()
    bad_guest = pick(sim, "qemu", False, avoid=taken)
    good_guest = pick(sim, "qemu", False, avoid=taken)
    async with running(sim, tmp_path) as rt:
        bad = await journal_op(rt.journal, bad_guest, "configure", "bad", bad_params)
        good = await submit(rt, "start", good_guest, key="good")
        bad_done = await wait_terminal(rt, bad.id)
        good_done = await wait_terminal(rt, good.id)
        # The runtime is still serving: a later op completes too.
        later = await submit(rt, "configure", bad_guest, key="later", cores=3)
        later_done = await wait_terminal(rt, later.id)
        history = [h.reason for h in await rt.journal.history(bad.id)]
    assert bad_done.state is OpState.FAILED
    assert bad_done.error is not None
    assert bad_done.error.error_class is ErrorClass.INTERNAL
    assert "not sent, the request cannot be encoded" in bad_done.error.message
    assert any(r.startswith("internal error in dispatcher: RequestNotSent") for r in history)
    assert good_done.state is OpState.SUCCEEDED, good_done.error
    assert later_done.state is OpState.SUCCEEDED, later_done.error
    assert writes_to(sim, bad_guest.vmid, "/config") == [f"POST {_config_path(bad_guest)}"]
    assert sim.sim.guests[good_guest.vmid].running


def _config_path(guest: Guest) -> str:
    return f"/api2/json/nodes/{guest.node}/{guest.kind}/{guest.vmid}/config"


async def test_bad_ops_journaled_before_start_do_not_crash_loop(
    sim: SimServer, tmp_path: Path
) -> None:
    """Bad ops journaled before start fail alone on every restart: no crash loop."""
    settings = await seeded(sim, tmp_path)
    taken: set[int] = set()
    guests = [pick(sim, "qemu", False, avoid=taken) for _ in range(3)]
    async with await Journal.open(settings.db) as journal:
        bad1 = await journal_op(journal, guests[0], "configure", "b1", {"cores\n": 2})
        bad2 = await journal_op(journal, guests[1], "configure", "b2", {"name": "x\ud800"})
        good = await journal_op(journal, guests[2], "start", "g", {})
    for _restart in range(2):
        async with started(settings, client_for(sim)) as (runtime, task):
            ops = [await wait_terminal(runtime, op.id) for op in (bad1, bad2, good)]
            await asyncio.sleep(0.3)  # a dead worker would have ended the runtime by now
            assert not task.done()
        assert [op.state for op in ops] == [OpState.FAILED, OpState.FAILED, OpState.SUCCEEDED]
        assert all(op.error and op.error.error_class is ErrorClass.INTERNAL for op in ops[:2])


async def test_tracker_survives_a_concurrent_writer(sim_factory: Any, tmp_path: Path) -> None:
    """An op another writer ended while tracked stops only its own tracking."""
    server = await sim_factory(task_seconds=1.0)
    taken: set[int] = set()
    first = pick(server, "qemu", False, avoid=taken)
    second = pick(server, "qemu", False, avoid=taken)
    async with running(server, tmp_path) as rt:
        a = await submit(rt, "start", first, key="a")
        b = await submit(rt, "start", second, key="b")
        async with asyncio.timeout(10):
            while {(await rt.journal.get(a.id)).state, (await rt.journal.get(b.id)).state} != {
                OpState.RUNNING
            }:
                await asyncio.sleep(0.02)
        # Another process (say, an operator's tool) ends op a meanwhile.
        async with await Journal.open(rt.settings.db) as other:
            await other.finish(
                a.id, OpState.FAILED, now=time.time(), reason="ended by another writer"
            )
        b_done = await wait_terminal(rt, b.id)
        await asyncio.sleep(1.5)  # past a's task end: the tracker met the stale op by now
        a_after = await rt.journal.get(a.id)
        later = await submit(rt, "stop", second, key="later")
        later_done = await wait_terminal(rt, later.id)
        async with asyncio.timeout(15):  # the tracker lets the stale op go (a loaded CI is slow)
            while len(rt.tracker):
                await asyncio.sleep(0.05)
    assert b_done.state is OpState.SUCCEEDED, b_done.error
    assert later_done.state is OpState.SUCCEEDED, later_done.error
    assert a_after.state is OpState.FAILED  # the other writer's word stands
    assert server.sim.guests[first.vmid].running  # its task ran to the end regardless


async def test_recover_survives_a_bad_in_flight_op(sim: SimServer, tmp_path: Path) -> None:
    """A bad in-flight op is left in flight, noted; Recover resolves the rest."""
    settings = await seeded(sim, tmp_path)
    taken: set[int] = set()
    source = pick(sim, "qemu", False, avoid=taken)
    good_guest = pick(sim, "qemu", True, avoid=taken)
    new_vmid = max(sim.sim.guests) + 1
    async with await Journal.open(settings.db) as journal:
        # A clone whose source_vmid is not a number, claimed before a crash (no UPID).
        clone = {"source_vmid": "not-a-vmid"}
        bad = await journal_op(journal, source, "clone", "bad-clone", clone, vmid=new_vmid)
        good = await journal_op(journal, good_guest, "start", "good", {})
        for _ in range(2):
            assert await journal.claim_next(now=time.time()) is not None
    async with started(settings, client_for(sim)) as (runtime, task):
        report = runtime.recoverer.last_report
        bad_after = await runtime.journal.get(bad.id)
        good_after = await runtime.journal.get(good.id)
        history = [h.reason for h in await runtime.journal.history(bad.id)]
        later = await submit(runtime, "stop", good_guest, key="later")
        later_done = await wait_terminal(runtime, later.id)
        assert not task.done()
    assert report is not None and report.counts["examined"] == 2
    assert report.counts["unresolved"] == 1
    assert bad_after.state is OpState.DISPATCHING  # its POST may have been sent: not ended
    assert any("internal error in recover: ValueError" in r for r in history)
    assert good_after.state is OpState.SUCCEEDED  # start: the guest runs, target holds
    assert later_done.state is OpState.SUCCEEDED, later_done.error


async def test_an_op_whose_earlier_post_is_unanswered_is_never_ended_blindly(
    sim: SimServer, tmp_path: Path
) -> None:
    """An op whose earlier POST went unanswered is left in flight, never failed."""
    settings = await seeded(sim, tmp_path)
    taken: set[int] = set()
    source = pick(sim, "qemu", False, avoid=taken)
    good_guest = pick(sim, "qemu", False, avoid=taken)
    new_vmid = max(sim.sim.guests) + 1
    async with await Journal.open(settings.db) as journal:
        clone = {"source_vmid": "not-a-vmid"}
        bad = await journal_op(journal, source, "clone", "ambiguous-clone", clone, vmid=new_vmid)
        assert await journal.claim_next(now=time.time()) is not None
        await journal.requeue(
            bad.id, now=time.time(), next_attempt_at=time.time(), reason="no answer", ambiguous=True
        )
    async with started(settings, client_for(sim)) as (runtime, task):
        async with asyncio.timeout(10):
            while not any(
                "left in flight" in h.reason for h in await runtime.journal.history(bad.id)
            ):
                await asyncio.sleep(0.05)
        after = await runtime.journal.get(bad.id)
        good = await submit(runtime, "start", good_guest, key="good")
        good_done = await wait_terminal(runtime, good.id)
        assert not task.done()
    assert after.state is OpState.DISPATCHING
    assert good_done.state is OpState.SUCCEEDED, good_done.error
    assert not writes_to(sim, source.vmid, "/clone")


class _FailsAfterSending(HttpPveClient):
    """The real client, except that its first dispatch raises after the POST was answered:
    an adapter bug at the worst moment (the task exists, the engine never saw its UPID)."""

    failed = False

    async def dispatch(self, *args: Any, **kwargs: Any) -> Any:
        upid = await super().dispatch(*args, **kwargs)
        if not self.failed:
            self.failed = True
            raise RuntimeError("adapter bug after the POST")
        return upid


async def test_an_exception_after_the_post_goes_to_the_task_search_never_a_second_post(
    sim: SimServer, tmp_path: Path
) -> None:
    """An exception after the POST adopts the task found: one POST, success."""
    guest = pick(sim, "qemu", True)
    settings = await seeded(sim, tmp_path)
    pve = _FailsAfterSending(sim.url, auth=token_auth(sim))
    async with started(settings, pve) as (runtime, task):
        op = await submit(runtime, "reboot", guest, key="reboot-once")
        done = await wait_terminal(runtime, op.id)
        history = [h.reason for h in await runtime.journal.history(op.id)]
        assert not task.done()
    assert pve.failed
    assert done.state is OpState.SUCCEEDED, (done.error, history)
    assert any("adopted" in r for r in history), history
    assert len(writes_to(sim, guest.vmid, "/status/reboot")) == 1


async def test_a_worker_survives_a_concurrent_writer(sim: SimServer, tmp_path: Path) -> None:
    """An op another writer ended mid-dispatch stays so; the worker carries on."""
    taken: set[int] = set()
    first = pick(sim, "qemu", True, avoid=taken)
    second = pick(sim, "qemu", False, avoid=taken)
    sim.sim.add_fault(method="GET", path=f"/{first.vmid}/status/current$", delay=1.0)
    async with running(sim, tmp_path) as rt:
        a = await submit(rt, "start", first, key="a")
        async with asyncio.timeout(10):
            while (await rt.journal.get(a.id)).state is not OpState.DISPATCHING:
                await asyncio.sleep(0.02)
        async with await Journal.open(rt.settings.db) as other:
            await other.finish(
                a.id, OpState.FAILED, now=time.time(), reason="ended by another writer"
            )
        await asyncio.sleep(1.3)  # the worker's guest read answers, then it tries to finish
        b = await submit(rt, "start", second, key="b")
        b_done = await wait_terminal(rt, b.id)
        a_after = await rt.journal.get(a.id)
    assert a_after.state is OpState.FAILED
    assert a_after.error is None or a_after.error.error_class is not ErrorClass.INTERNAL
    assert b_done.state is OpState.SUCCEEDED, b_done.error
    assert not writes_to(sim, first.vmid)


async def test_recover_with_prefetch_survives_an_op_on_an_unsendable_node(
    sim: SimServer, tmp_path: Path
) -> None:
    """Recover's prefetch skips a node no request can carry (``pve1\\n``)."""
    settings = await seeded(sim, tmp_path)
    taken: set[int] = set()
    goods = [pick(sim, "qemu", True, avoid=taken) for _ in range(2)]
    goods += [pick(sim, "lxc", True, avoid=taken) for _ in range(3)]
    bad_guest = pick(sim, "qemu", False, avoid=taken)
    async with await Journal.open(settings.db) as journal:
        for i, guest in enumerate(goods):
            await journal_op(journal, guest, "start", f"good-{i}", {})
        bad_node = f"{bad_guest.node}\n"
        bad_op = await journal_op(journal, bad_guest, "start", "bad-node", node=bad_node)
        while await journal.claim_next(now=time.time()) is not None:
            pass
    async with started(settings, client_for(sim)) as (runtime, task):
        report = runtime.recoverer.last_report
        bad_after = await runtime.journal.get(bad_op.id)
        states = [(await runtime.journal.get(i)).state for i in range(1, len(goods) + 1)]
        assert not task.done()
    assert report is not None and report.counts["examined"] == len(goods) + 1
    assert states == [OpState.SUCCEEDED] * len(goods)
    assert bad_after.state is OpState.DISPATCHING
    assert not sim.sim.guests[bad_guest.vmid].running
