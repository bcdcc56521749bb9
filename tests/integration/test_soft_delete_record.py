"""A soft delete (terminate of an adopted guest, SPEC §4) releases the guest in the cluster's
ownership record too (SPEC §7), so no sidecar takes it back under management."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from test_cluster import NODES, op_for, record, settle, sidecar

from lifecycled.domain.guests import GuestOrigin
from lifecycled.sim import SimServer


async def test_a_soft_deleted_guest_stays_released_cluster_wide(
    sim_factory: Any, tmp_path: Path
) -> None:
    """Terminate of an adopted guest: its tags say released, and a reconcile pass leaves it so."""
    sim: SimServer = await sim_factory(nodes=NODES, guests=0)
    sim.sim.create_guest(101, kind="qemu", node="pve1", status="running")
    async with sidecar(sim, tmp_path, "pve1") as rt:
        await rt.guests.adopt(101, actor="test")
        op = await op_for(rt, "terminate", 101, key="bye-101")
        assert op.state.value == "succeeded" and 101 in sim.sim.guests
        assert (await rt.journal.get_guest(101)).origin is GuestOrigin.RELEASED
        assert record(sim, 101).origin is GuestOrigin.RELEASED
        await settle(rt)
        assert (await rt.journal.get_guest(101)).origin is GuestOrigin.RELEASED
