"""`lifecycled submit` journals directly (the daemon picks it up), dedups, and errs in one line."""

from __future__ import annotations

import json
from pathlib import Path

from conftest_journal import run_cli
from engine_support import pick, running

from lifecycled.domain.states import OpState
from lifecycled.sim import SimServer


async def test_submit_waits_for_the_daemon_and_dedups(sim: SimServer, tmp_path: Path) -> None:
    """A CLI submission runs in the daemon; --wait returns the terminal op; a resubmit dedups."""
    guest = pick(sim, "qemu", False)
    db = str(tmp_path / "journal.sqlite3")
    async with running(sim, tmp_path) as rt:
        code, out, err = await run_cli(
            "submit",
            "start",
            str(guest.vmid),
            "--kind",
            "qemu",
            "--guest-node",
            guest.node,
            "--key",
            "cli-1",
            "--db",
            db,
            "--wait",
            "--timeout",
            "20",
            "--json",
        )
        assert code == 0, err
        op = json.loads(out)
        assert op["state"] == "succeeded" and op["deduplicated"] is False
        assert (await rt.journal.get(op["id"])).origin.value == "cli"
        code, out, _ = await run_cli(
            "submit",
            "start",
            str(guest.vmid),
            "--kind",
            "qemu",
            "--guest-node",
            guest.node,
            "--key",
            "cli-1",
            "--db",
            db,
            "--json",
        )
        assert code == 0
        assert json.loads(out)["deduplicated"] is True
        code, out, err = await run_cli(
            "submit",
            "stop",
            str(guest.vmid),
            "--kind",
            "qemu",
            "--guest-node",
            guest.node,
            "--key",
            "cli-1",
            "--db",
            db,
        )
        assert code == 1
        assert err.count("\n") == 1 and err.startswith("lifecycled: error: ") and "cli-1" in err
        assert (await rt.journal.list_ops(limit=10)).items[0].state is OpState.SUCCEEDED
    assert sim.sim.guests[guest.vmid].running


async def test_submit_resolves_kind_and_node_from_proxmox(sim: SimServer, tmp_path: Path) -> None:
    """Without --kind/--guest-node the guest is looked up in /cluster/resources."""
    guest = pick(sim, "lxc", False)
    token = tmp_path / "tok"
    token.write_text(sim.sim.cfg.token + "\n")
    token.chmod(0o600)
    db = str(tmp_path / "journal.sqlite3")
    async with running(sim, tmp_path):
        code, out, err = await run_cli(
            "submit",
            "start",
            str(guest.vmid),
            "--db",
            db,
            "--json",
            "--pve-url",
            sim.url,
            "--pve-token-file",
            str(token),
        )
    assert code == 0, err
    shown = json.loads(out)
    assert shown["guest"] == {"node": guest.node, "kind": "lxc", "vmid": guest.vmid}


async def test_submit_bad_input_is_one_line_and_writes_nothing(
    sim: SimServer, tmp_path: Path
) -> None:
    """An unknown action or a vmid out of range: one line, exit 2, no op journaled."""
    db = str(tmp_path / "journal.sqlite3")
    async with running(sim, tmp_path) as rt:
        for args in (("explode", "101"), ("start", "7")):
            code, _, err = await run_cli(
                "submit", *args, "--kind", "qemu", "--guest-node", "pve1", "--db", db
            )
            assert code == 2, err
            assert err.count("\n") == 1 and "Traceback" not in err
        assert (await rt.journal.list_ops(limit=10)).items == []
