"""A guest released by an explicit request stays released when it moves to a node whose
sidecar runs ``--manage-discovered`` (SPEC §1: ownership changes only by an explicit request;
a released guest is never acted on again; SPEC §7: every sidecar reads the same record)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from test_cluster import NODES, record, settle, sidecar

from lifecycled.domain.guests import GuestOrigin
from lifecycled.sim import SimServer


async def test_a_released_guest_is_not_taken_by_manage_discovered(
    sim_factory: Any, tmp_path: Path
) -> None:
    """Managed and released on pve1, moved to pve2 whose sidecar manages what it discovers:
    its record stays released and pve2's sidecar does not manage it."""
    sim: SimServer = await sim_factory(nodes=NODES, guests=0)
    sim.sim.create_guest(101, kind="qemu", node="pve1", status="running")
    async with contextlib.AsyncExitStack() as stack:
        a = await stack.enter_async_context(sidecar(sim, tmp_path, "pve1"))
        b = await stack.enter_async_context(
            sidecar(sim, tmp_path, "pve2", manage_discovered="native")
        )
        await a.guests.manage(101, actor="test")
        await a.guests.release(101, actor="test")
        assert record(sim, 101).origin is GuestOrigin.RELEASED
        sim.sim.move_guest(101, "pve2")
        await settle(b)
        assert record(sim, 101).origin is GuestOrigin.RELEASED
        row = await b.journal.find_guest(101)
        assert row is None or not row.managed
