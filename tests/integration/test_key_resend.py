"""One idempotency key, one run (SPEC §1, §7): a key sent twice at once to one sidecar is one
op, the second answer deduplicated — never the 409 meant for a key another daemon ran."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from test_cluster import NODES, sidecar

from lifecycled.engine.submit import Submission
from lifecycled.sim import SimServer


async def test_same_key_twice_at_once_is_one_op_deduplicated(
    sim_factory: Any, tmp_path: Path
) -> None:
    """Two concurrent submissions of one key for a managed guest: one op, one dedup."""
    sim: SimServer = await sim_factory(nodes=NODES, guests=0)
    sim.sim.create_guest(101, kind="qemu", node="pve1", status="running")
    async with sidecar(sim, tmp_path, "pve1") as rt:
        await rt.guests.manage(101, actor="test")
        sub = Submission(action="stop", vmid=101, idempotency_key="retry-me")
        first, second = await asyncio.gather(rt.submit(sub), rt.submit(sub))
        assert first.op.id == second.op.id
        assert sorted([first.deduplicated, second.deduplicated]) == [False, True]
