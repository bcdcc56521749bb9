"""A terminate whose guest migrated to another sidecar's node after it was accepted: the
guest is absent from the op's node but not from the cluster, so the terminate has not
reached its target (SPEC §1 "terminate → absent") and must not succeed without a call
(SPEC §7: the op is not acted on here)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from engine_support import wait_terminal
from test_cluster import NODES, sidecar

from lifecycled.engine.submit import Submission
from lifecycled.sim import SimServer


async def test_terminate_of_a_guest_moved_away_does_not_succeed(
    sim_factory: Any, tmp_path: Path
) -> None:
    """Terminate accepted while the guest is locked on pve1, then the guest moves to pve2:
    the op does not end succeeded (the guest still exists), nothing is destroyed."""
    sim: SimServer = await sim_factory(nodes=NODES, guests=0)
    sim.sim.create_guest(101, kind="qemu", node="pve1", status="stopped")
    async with sidecar(sim, tmp_path, "pve1") as rt:
        await rt.guests.manage(101, actor="test")
        sim.sim.hold_lock(101, "snapshot", seconds=None)
        result = await rt.submit(Submission(action="terminate", vmid=101, idempotency_key="rm"))
        async with asyncio.timeout(10):
            while (await rt.journal.get(result.op.id)).attempts < 1:
                await asyncio.sleep(0.02)
        sim.sim.release_lock(101)
        sim.sim.move_guest(101, "pve2")
        op = await wait_terminal(rt, result.op.id)
        assert 101 in sim.sim.guests
        assert op.state.value != "succeeded", op
