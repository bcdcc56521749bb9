"""Ops claimed together are Checked from one live listing per node and kind, not one
``status/current`` each; a guest the listing cannot settle is read alone (issue 15)."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from engine_support import client_for, fast_settings, running, seed_guests, submit, wait_terminal

from lifecycled.domain.actions import ActionSpec, GuestView
from lifecycled.domain.op import GuestKind, GuestRef, Op, Origin
from lifecycled.domain.states import OpState
from lifecycled.engine.check import LiveCheck
from lifecycled.engine.runtime import Runtime
from lifecycled.journal import SubmitRequest
from lifecycled.sim import SimServer
from lifecycled.sim.model import Guest

pytestmark = pytest.mark.timeout(60)

NODE = "pve1"


def plain_guests(sim: SimServer) -> list[Guest]:
    """The node's guests with no HA, lock, template or protection flag."""
    return [
        g
        for g in sorted(sim.sim.guests.values(), key=lambda g: g.vmid)
        if g.node == NODE
        and g.ha is None
        and not g.lock
        and not g.template
        and str(g.config.get("protection", 0)) != "1"
    ]


@pytest.fixture
async def runtime(sim: SimServer, tmp_path: Path) -> AsyncIterator[Runtime]:
    """A built (not running) Runtime whose journal manages every simulator guest."""
    settings = fast_settings(tmp_path, sim)
    await seed_guests(settings.db, sim.sim.guests.values())
    built = await Runtime.build(settings, pve=client_for(sim))
    try:
        yield built
    finally:
        await built.close()


async def claim_in_one_tick(runtime: Runtime, work: list[tuple[Guest, str]]) -> list[Op]:
    """Submit one op per (guest, action) and claim them all, as one dispatcher tick would."""
    now = time.time()
    for i, (guest, action) in enumerate(work):
        await runtime.journal.submit(
            SubmitRequest(
                idempotency_key=f"tick-{i}",
                action=action,
                guest=GuestRef(node=guest.node, kind=GuestKind(guest.kind), vmid=guest.vmid),
                params={},
                origin=Origin.API,
            ),
            now=now,
        )
    claimed = [await runtime.journal.claim_next(now=now) for _ in work]
    assert all(op is not None for op in claimed)
    return [op for op in claimed if op is not None]


def power_work(sim: SimServer) -> list[tuple[Guest, str]]:
    """Start each stopped plain guest of the node, shut each running one down."""
    work = [(g, "shutdown" if g.running else "start") for g in plain_guests(sim)]
    assert len(work) >= 4 and {g.kind for g, _ in work} == {"qemu", "lxc"}
    return work


def requests(sim: SimServer) -> Counter[str]:
    return Counter(f"{r.method} {r.path.removeprefix('/api2/json')}" for r in sim.sim.requests)


async def dispatch_all(runtime: Runtime, ops: list[Op]) -> dict[int, Op]:
    await asyncio.gather(*(runtime.dispatcher.handle(op) for op in ops))
    return {op.id: await runtime.journal.get(op.id) for op in ops}


async def test_ops_claimed_in_one_tick_share_one_listing_per_kind(
    sim: SimServer, runtime: Runtime
) -> None:
    """N power ops on N guests of one node, claimed together: the simulator sees one
    ``GET /nodes/pve1/qemu`` and one ``…/lxc`` and no ``status/current``, then N POSTs; every
    op is journaled ``running`` with its task."""
    work = power_work(sim)
    ops = await claim_in_one_tick(runtime, work)
    sim.sim.reset_requests()
    done = await dispatch_all(runtime, ops)
    seen = requests(sim)
    assert seen[f"GET /nodes/{NODE}/qemu"] == 1
    assert seen[f"GET /nodes/{NODE}/lxc"] == 1
    assert not [r for r in seen if r.endswith("/status/current")], seen
    posts = Counter(f"POST /nodes/{NODE}/{g.kind}/{g.vmid}/status/{action}" for g, action in work)
    assert +Counter({r: n for r, n in seen.items() if r.startswith("POST")}) == posts
    assert sum(seen.values()) == len(work) + 2
    assert all(op.state is OpState.RUNNING and op.upid for op in done.values()), done


async def test_a_guest_the_listing_cannot_settle_alone_reads_status_current(
    sim: SimServer, runtime: Runtime
) -> None:
    """One paused VM (listed as ``running``: only QMP knows it is paused) among the tick's
    ops is the only one read with ``status/current``; that read shows it paused, so its
    resume is sent, like every other op's POST."""
    work = power_work(sim)
    vm = next(g for g, _ in work if g.kind == "qemu" and g.running)
    work = [(g, a) for g, a in work if g is not vm]
    sim.sim.set_guest_status(vm.vmid, "paused")
    ops = await claim_in_one_tick(runtime, [*work, (vm, "resume")])
    sim.sim.reset_requests()
    done = await dispatch_all(runtime, ops)
    seen = requests(sim)
    status_reads = [r for r in seen.elements() if r.endswith("/status/current")]
    assert status_reads == [f"GET /nodes/{NODE}/qemu/{vm.vmid}/status/current"]
    assert seen[f"GET /nodes/{NODE}/qemu"] == 1 and seen[f"GET /nodes/{NODE}/lxc"] == 1
    assert seen[f"POST /nodes/{NODE}/qemu/{vm.vmid}/status/resume"] == 1
    assert all(op.state is OpState.RUNNING and op.upid for op in done.values()), done


async def test_a_failed_listing_falls_back_to_status_current_per_op(
    sim: SimServer, runtime: Runtime
) -> None:
    """When the node's VM listing answers 500, each VM op reads its own ``status/current``
    and is dispatched as before; the container ops still share their listing."""
    work = power_work(sim)
    ops = await claim_in_one_tick(runtime, work)
    sim.sim.add_fault(method="GET", path=f"/nodes/{NODE}/qemu$", status=500, reason="boom")
    sim.sim.reset_requests()
    done = await dispatch_all(runtime, ops)
    seen = requests(sim)
    vms = [g for g, _ in work if g.kind == "qemu"]
    assert sorted(r for r in seen.elements() if r.endswith("/status/current")) == sorted(
        f"GET /nodes/{NODE}/qemu/{g.vmid}/status/current" for g in vms
    )
    assert seen[f"GET /nodes/{NODE}/lxc"] == 1
    assert all(op.state is OpState.RUNNING and op.upid for op in done.values()), done


async def test_a_held_target_in_the_listing_sends_nothing(sim: SimServer, runtime: Runtime) -> None:
    """A shutdown of a guest the listing shows stopped succeeds with nothing sent — the
    verdict status/current would have given — from the listing alone."""
    guest = next(g for g in plain_guests(sim) if not g.running)
    ops = await claim_in_one_tick(runtime, [(guest, "shutdown")])
    sim.sim.reset_requests()
    done = await dispatch_all(runtime, ops)
    assert requests(sim) == Counter({f"GET /nodes/{NODE}/{guest.kind}": 1})
    op = done[ops[0].id]
    assert op.state is OpState.SUCCEEDED


def label(method: str, path: str) -> str:
    """A request without its vmid and UPID (the request mix of docs/BENCHMARKS.md)."""
    p = re.sub(r"/(qemu|lxc)/\d+", r"/\1/{x}", path.removeprefix("/api2/json"))
    return f"{method} {re.sub(r'/tasks/UPID[^/]*', '/tasks/{x}', p)}"


async def test_one_op_costs_one_listing_and_no_status_current(
    sim: SimServer, tmp_path: Path
) -> None:
    """One shutdown through the daemon (submission, Check, POST, tracking), counted from the
    simulator's log: its Check is one ``GET /nodes/pve1/qemu`` and no ``status/current``;
    its submission reads the guest's config at most three times and writes its ownership
    record once (issue 14, SPEC §7) — the larger share of the op's requests."""
    guest = next(g for g in plain_guests(sim) if g.kind == "qemu" and not g.running)
    async with running(sim, tmp_path) as rt:
        first = await submit(rt, "start", guest, key="warm")  # writes the record to the tags
        assert (await wait_terminal(rt, first.id)).state is OpState.SUCCEEDED
        sim.sim.reset_requests()
        op = await submit(rt, "shutdown", guest, key="counted")
        assert (await wait_terminal(rt, op.id)).state is OpState.SUCCEEDED
    seen = Counter(label(r.method, r.path) for r in sim.sim.requests)
    assert seen["GET /nodes/pve1/qemu"] == 1
    assert seen["GET /nodes/pve1/qemu/{x}/status/current"] == 0
    assert seen["POST /nodes/pve1/qemu/{x}/status/shutdown"] == 1
    assert seen["GET /nodes/pve1/qemu/{x}/config"] <= 3
    assert seen["PUT /nodes/pve1/qemu/{x}/config"] == 1


async def test_ops_arriving_during_a_listing_share_the_next_one(sim: SimServer) -> None:
    """While one listing of a node is in flight, ops that arrive wait for it to end and then
    share one new listing, sent after they arrived (never an answer requested before them),
    so a node has at most one listing of a kind in flight."""
    sim.sim.add_fault(method="GET", path=f"/nodes/{NODE}/qemu$", delay=0.5, count=1)
    client = client_for(sim)

    async def never(op: Op, spec: ActionSpec) -> GuestView:
        raise AssertionError("no per-op read expected")

    check = LiveCheck(pve=client, observe=never)
    vms = [g.vmid for g in plain_guests(sim) if g.kind == "qemu"]
    assert len(vms) >= 3
    sim.sim.reset_requests()
    try:
        first = asyncio.create_task(check.listing(NODE, GuestKind.QEMU, vms[0]))
        async with asyncio.timeout(5):
            while not sim.sim.requests:  # the first listing reached the node
                await asyncio.sleep(0.01)
        arrived = time.time()
        later = await asyncio.gather(*(check.listing(NODE, GuestKind.QEMU, v) for v in vms[1:]))
        assert (await first) is not None
    finally:
        await client.close()
    lists = [r for r in sim.sim.requests if r.path.endswith(f"/nodes/{NODE}/qemu")]
    assert len(lists) == 2
    assert lists[1].time >= arrived
    assert lists[1].time >= lists[0].time + 0.5  # one listing of a node and kind at a time
    assert all(got is later[0] for got in later) and later[0] is not None
    assert set(later[0]) == set(vms[1:])  # each member's guest, and only theirs, decoded
