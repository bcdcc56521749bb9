"""Recover with many ops in flight reads each node's task list and the guest list once."""

from __future__ import annotations

import time
from pathlib import Path

from engine_support import client_for, fast_settings, seed_guests

from lifecycled.domain.op import GuestKind, GuestRef, Origin
from lifecycled.domain.states import OpState
from lifecycled.engine.runtime import Runtime
from lifecycled.journal import Journal, SubmitRequest
from lifecycled.sim import SimServer
from lifecycled.sim.rawclient import RawClient


async def test_recover_prefetches_and_decides_without_a_request_per_op(
    sim: SimServer, tmp_path: Path
) -> None:
    """Ten ops in flight after a crash — five whose finished task is journaled, five that
    crashed before their UPID was — are all resolved from one task list per node and the
    nodes' live guest lists: the tasks' exit statuses, and "no task found, target not held" for the
    rest."""
    plain = [
        g
        for g in sorted(sim.sim.guests.values(), key=lambda g: g.vmid)
        if not g.template and g.ha is None and not g.lock
    ][:10]
    assert len(plain) == 10
    actions = {g.vmid: "stop" if g.running else "start" for g in plain}
    upids: dict[int, str] = {}
    async with RawClient(sim.url, token=sim.cfg.token) as api:
        for guest in plain[:5]:
            answer = await api.post(
                f"/nodes/{guest.node}/{guest.kind}/{guest.vmid}/status/{actions[guest.vmid]}"
            )
            upids[guest.vmid] = str(answer.data)
    await sim.sim.settle()
    sim.sim.archive_now()
    settings = fast_settings(tmp_path, sim)
    await seed_guests(settings.db, plain)
    now = time.time()
    async with await Journal.open(settings.db) as journal:
        for i, guest in enumerate(plain):
            op = (
                await journal.submit(
                    SubmitRequest(
                        idempotency_key=f"k{i}",
                        action=actions[guest.vmid],
                        guest=GuestRef(
                            node=guest.node, kind=GuestKind(guest.kind), vmid=guest.vmid
                        ),
                        params={},
                        origin=Origin.API,
                    ),
                    now=now - 10,
                )
            ).op
            claimed = await journal.claim_next(now=now - 10)
            assert claimed is not None and claimed.id == op.id
            if guest.vmid in upids:
                await journal.record_upid(op.id, upids[guest.vmid], now=now - 9)
    sim.sim.reset_requests()
    runtime = await Runtime.build(settings, pve=client_for(sim))
    try:
        report = await runtime.recoverer.recover()
        ops = (await runtime.journal.list_ops(limit=20)).items
    finally:
        await runtime.close()
    requests = [f"{r.method} {r.path}" for r in sim.sim.requests]
    assert report.counts["examined"] == 10
    by_vmid = {op.guest.vmid: op.state for op in ops}
    assert all(by_vmid[g.vmid] is OpState.SUCCEEDED for g in plain[:5]), by_vmid
    assert all(by_vmid[g.vmid] is OpState.FAILED for g in plain[5:]), by_vmid
    nodes = sorted({g.node for g in plain})
    lists = sorted({f"GET /api2/json/nodes/{g.node}/{g.kind}" for g in plain})
    assert sorted(requests) == sorted(
        [*lists, *(f"GET /api2/json/nodes/{node}/tasks" for node in nodes)]
    ), requests
