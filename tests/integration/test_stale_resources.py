"""No stale proof (reference §13.10): ``/cluster/resources`` shows power states up to a
pvestatd period late; Recover and reconcile act on live reads only, and an HA resource in
state ``ignored`` is not HA-managed."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from engine_support import (
    WRITES,
    client_for,
    fast_settings,
    manage,
    pick,
    running,
    seed_guests,
    submit,
    wait_terminal,
)

from lifecycled.domain.guests import DesiredState, ObservedState
from lifecycled.domain.op import GuestKind, GuestRef, Origin
from lifecycled.domain.states import OpState
from lifecycled.engine.runtime import Runtime
from lifecycled.journal import Journal, SubmitRequest
from lifecycled.sim import SimServer
from lifecycled.sim.model import Guest
from lifecycled.sim.rawclient import RawClient

SimFactory = Callable[..., Awaitable[SimServer]]

#: Long enough that pvestatd never samples again during a test: the view stays stale.
FROZEN = 3600.0


async def cluster_status(server: SimServer) -> dict[int, str]:
    async with RawClient(server.url, token=server.cfg.token) as api:
        items = (await api.get("/cluster/resources", {"type": "vm"})).data
    return {int(i["vmid"]): str(i["status"]) for i in items}


def plain(server: SimServer, running_now: bool, n: int) -> list[Guest]:
    avoid: set[int] = set()
    return [pick(server, "qemu", running_now, avoid=avoid) for _ in range(n)]


async def test_recover_never_takes_the_lagging_view_as_proof(
    sim_factory: SimFactory, tmp_path: Path
) -> None:
    """Ops with no UPID and no task (a crash before the POST) are not marked succeeded
    because ``/cluster/resources`` still shows their target: stop ops whose guests it shows
    "stopped" but are live running, and a start whose guest it shows "running" but is live
    stopped. Recover reads the nodes' live lists (five ops: the prefetched path)."""
    server = await sim_factory(resources_lag=FROZEN)
    stops = plain(server, running_now=False, n=4)
    (start,) = plain(server, running_now=True, n=1)
    for guest in stops:
        server.sim.set_guest_status(guest.vmid, "running")
    server.sim.set_guest_status(start.vmid, "stopped")
    view = await cluster_status(server)
    assert [view[g.vmid] for g in stops] == ["stopped"] * 4 and view[start.vmid] == "running"
    settings = fast_settings(tmp_path, server)
    await seed_guests(settings.db, [*stops, start])
    now = time.time()
    async with await Journal.open(settings.db) as journal:
        for i, (guest, action) in enumerate([*((g, "stop") for g in stops), (start, "start")]):
            await journal.submit(
                SubmitRequest(
                    idempotency_key=f"k{i}",
                    action=action,
                    guest=GuestRef(node=guest.node, kind=GuestKind.QEMU, vmid=guest.vmid),
                    params={},
                    origin=Origin.API,
                ),
                now=now,
            )
            assert await journal.claim_next(now=now) is not None
    runtime = await Runtime.build(settings, pve=client_for(server))
    try:
        report = await runtime.recoverer.recover()
        ops = (await runtime.journal.list_ops(limit=10)).items
    finally:
        await runtime.close()
    assert report.counts["examined"] == 5
    assert {op.state for op in ops} == {OpState.FAILED}, [(op.action, op.state) for op in ops]
    assert all(server.sim.guests[g.vmid].running for g in stops)
    assert not server.sim.guests[start.vmid].running


@pytest.mark.parametrize(("action", "was_running"), [("start", False), ("shutdown", True)])
async def test_reconcile_does_not_fight_a_just_finished_op(
    sim_factory: SimFactory, tmp_path: Path, action: str, was_running: bool
) -> None:
    """Right after an op changed a guest's power state the lagging view still shows the old
    one: reconcile neither sends the opposite action nor records the old state."""
    server = await sim_factory(resources_lag=FROZEN)
    guest = pick(server, "qemu", was_running, where=lambda g: g.node == "pve1")
    async with running(server, tmp_path, manage_guests=False) as rt:
        await manage(rt, guest)
        op = await wait_terminal(rt, (await submit(rt, action, guest)).id)
        assert op.state is OpState.SUCCEEDED
        assert server.sim.guests[guest.vmid].running is not was_running
        stale = "running" if was_running else "stopped"
        assert (await cluster_status(server))[guest.vmid] == stale
        seq = server.sim.requests[-1].seq
        report = await rt.reconciler.pass_once()
        row = await rt.journal.find_guest(guest.vmid)
    assert report.outcome == "ok"
    assert [c for c in report.enqueued if c["vmid"] == guest.vmid] == []
    assert [r for r in server.sim.requests_since(seq) if r.method in WRITES] == []
    assert row is not None
    assert row.desired_state is (DesiredState.STOPPED if was_running else DesiredState.RUNNING)
    assert row.observed_state is (ObservedState.STOPPED if was_running else ObservedState.RUNNING)


async def test_ha_ignored_guest_is_not_ha_managed(sim: SimServer, tmp_path: Path) -> None:
    """A guest whose HA resource is ``ignored`` is recorded as not HA-managed, and a start
    goes to the guest directly (a ``qmstart`` task, no ``hastart`` request)."""
    guest = pick(sim, "qemu", False, where=lambda g: g.node == "pve1")
    sim.sim.set_ha(guest.vmid, "ignored")
    async with running(sim, tmp_path, manage_guests=False) as rt:
        record = await manage(rt, guest)
        op = await wait_terminal(rt, (await submit(rt, "start", guest)).id)
    assert record.ha_managed is False
    assert op.state is OpState.SUCCEEDED and op.upid is not None
    assert op.upid.type == "qmstart"
    assert sim.sim.guests[guest.vmid].running
