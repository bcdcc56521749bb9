"""A LOST guest (managed, gone from the whole cluster: SPEC §1) can be released through the
daemon — the explicit request that ends its management (SPEC §1 "Ownership")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from test_cluster import NODES, settle, sidecar

from lifecycled.domain.guests import GuestOrigin, ObservedState
from lifecycled.sim import SimServer


async def test_a_lost_guest_can_be_released(sim_factory: Any, tmp_path: Path) -> None:
    """Managed, deleted behind lifecycled's back (LOST): release answers with the guest
    released, audited."""
    sim: SimServer = await sim_factory(nodes=NODES, guests=0)
    sim.sim.create_guest(101, kind="qemu", node="pve1", status="stopped")
    async with sidecar(sim, tmp_path, "pve1") as rt:
        await rt.guests.manage(101, actor="test")
        sim.sim.delete_guest(101)
        await settle(rt)
        assert (await rt.journal.get_guest(101)).observed_state is ObservedState.LOST
        result = await rt.guests.release(101, actor="test")
        assert result.guest.origin is GuestOrigin.RELEASED
        audits = (await rt.journal.list_audit(vmid=101)).items
        assert [a.decision.value for a in audits][:1] == ["released"]
