"""An ownership record tag no lifecycled writes — a generation beyond what the journal can
store (``lcd.g.`` and 20 digits, a valid Proxmox tag anyone with VM.Config.Options may set) —
is ignored as an invalid tag: it breaks neither the reconcile pass of every guest nor a
submission for the guest (no 5xx), and the next record write replaces it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from test_cluster import NODES, record, settle, sidecar

from lifecycled.engine.submit import Submission
from lifecycled.sim import SimServer


async def test_a_generation_too_large_is_ignored(sim_factory: Any, tmp_path: Path) -> None:
    """Guest 101's tags carry lcd.g.<20 digits>: the pass still starts 102, and a stop of
    101 is accepted and rewrites its record with a storable generation."""
    sim: SimServer = await sim_factory(nodes=NODES, guests=0)
    sim.sim.create_guest(101, kind="qemu", node="pve1", status="running")
    sim.sim.create_guest(102, kind="qemu", node="pve1", status="running")
    async with sidecar(sim, tmp_path, "pve1") as rt:
        await rt.guests.manage(101, actor="test")
        await rt.guests.manage(102, actor="test")
        tags = str(sim.sim.guests[101].config["tags"])
        sim.sim.update_config(101, {"tags": tags.replace("lcd.g.1", "lcd.g." + "9" * 20)})
        sim.sim.set_guest_status(102, "stopped")
        report = await settle(rt)
        assert report.outcome == "ok", report.error
        assert [(e["vmid"], e["action"]) for e in report.enqueued] == [(102, "start")]
        result = await rt.submit(Submission(action="stop", vmid=101, idempotency_key="k-101"))
        assert not result.deduplicated
        assert record(sim, 101).generation < 2**63
