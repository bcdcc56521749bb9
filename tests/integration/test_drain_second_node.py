"""A daemon serving two nodes, the second drained on the journal (``lifecycled node drain
--node pve2``, docs/CLUSTER.md): a new start on it is refused at once (SPEC §4: draining
refuses new start/create/clone/inbound migrate), not only after a reconcile pass published
the state in Proxmox."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_cluster import NODES, sidecar

from lifecycled.domain.node import NodeState
from lifecycled.engine.submit import Submission
from lifecycled.errors import LifecycledError
from lifecycled.sim import SimServer


async def test_a_drained_second_node_refuses_a_start_at_once(
    sim_factory: Any, tmp_path: Path
) -> None:
    """pve2 drained in the journal of the pve1,pve2 daemon: start of a pve2 guest refused
    (node_draining), nothing journaled."""
    sim: SimServer = await sim_factory(nodes=NODES, guests=0)
    sim.sim.create_guest(201, kind="qemu", node="pve2", status="stopped")
    async with sidecar(sim, tmp_path, "pve1,pve2") as rt:
        await rt.guests.manage(201, actor="test")
        for target in (NodeState.ACTIVE, NodeState.DRAINING):
            await rt.journal.transition_node(
                "pve2", target, now=rt.clock.now(), actor="cli", action="drain", reason="test"
            )
        drained = await rt.journal.get_node("pve2")
        assert drained is not None and drained.state is NodeState.DRAINING
        with pytest.raises(LifecycledError) as refused:
            await rt.submit(Submission(action="start", vmid=201, idempotency_key="s-201"))
        assert getattr(refused.value, "code", None) == "node_draining"
        assert sum((await rt.journal.counts_by_state()).values()) == 0
