"""``lifecycled guests release`` from the CLI while the daemon runs (SPEC §5: admin commands
work on the journal file): the release holds — the daemon does not take the guest back under
management from the ownership record in its tags (SPEC §1: ownership changes only by an
explicit request)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest_journal import run_cli
from test_cluster import NODES, record, settle, sidecar

from lifecycled.domain.guests import GuestOrigin
from lifecycled.sim import SimServer


async def test_a_cli_release_is_not_undone_by_the_daemon(sim_factory: Any, tmp_path: Path) -> None:
    """Managed by the daemon, released by the CLI on its journal: a reconcile pass keeps it
    released and writes the release to its tags."""
    sim: SimServer = await sim_factory(nodes=NODES, guests=0)
    sim.sim.create_guest(101, kind="qemu", node="pve1", status="running")
    async with sidecar(sim, tmp_path, "pve1") as rt:
        await rt.guests.manage(101, actor="test")
        code, _, err = await run_cli(
            "guests", "release", "101", "--db", str(tmp_path / "pve1" / "journal.sqlite3")
        )
        assert code == 0, err
        assert (await rt.journal.get_guest(101)).origin is GuestOrigin.RELEASED
        await settle(rt)
        assert (await rt.journal.get_guest(101)).origin is GuestOrigin.RELEASED
        assert record(sim, 101).origin is GuestOrigin.RELEASED
