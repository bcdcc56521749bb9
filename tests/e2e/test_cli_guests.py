"""`lifecycled guests|audit|reconcile` as real subprocesses against the simulator."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from test_cli_admin import Result, cli, one_error_line

from lifecycled.journal import Journal
from lifecycled.sim import SimServer


def pve_args(sim: SimServer, tmp_path: Path) -> list[str]:
    token = tmp_path / "pve.token"
    token.write_text(sim.cfg.token + "\n")
    token.chmod(0o600)
    return ["--pve-url", sim.url, "--pve-token-file", str(token)]


async def run(*args: str, cwd: Path) -> Result:
    return await asyncio.to_thread(cli, *args, cwd=cwd)


async def test_guests_commands_end_to_end(sim: SimServer, tmp_path: Path) -> None:
    """manage and adopt read Proxmox; list/show/desired/release/audit work on the file."""
    db = str(tmp_path / "j.sqlite3")
    pve = [*pve_args(sim, tmp_path), "--node", "pve1,pve2"]  # serves both sim nodes
    stopped = sorted(g.vmid for g in sim.sim.guests.values() if not g.running and not g.template)
    first, second = stopped[0], stopped[1]

    managed = await run("guests", "manage", str(first), "--db", db, "--json", *pve, cwd=tmp_path)
    assert managed.code == 0, managed
    assert "lcd.o.native" in str(sim.sim.guests[first].config.get("tags"))  # the shared record
    body = json.loads(managed.out)
    assert body["changed"] is True and body["guest"]["origin"] == "native"
    assert body["guest"]["desired_state"] == "stopped"

    adopted = await run("guests", "adopt", str(second), "--db", db, *pve, cwd=tmp_path)
    assert adopted.code == 0 and "adopted" in adopted.out

    listed = await run("guests", "list", "--db", db, "--json", cwd=tmp_path)
    assert [g["vmid"] for g in json.loads(listed.out)] == [first, second]
    only = await run("guests", "list", "--origin", "adopted", "--db", db, "--json", cwd=tmp_path)
    assert [g["vmid"] for g in json.loads(only.out)] == [second]
    table = await run("guests", "list", "--db", db, cwd=tmp_path)
    assert table.code == 0 and str(first) in table.out and "native" in table.out

    shown = await run("guests", "show", str(second), "--db", db, "--json", cwd=tmp_path)
    detail = json.loads(shown.out)
    assert detail["config_snapshot"]["name"] == sim.sim.guests[second].config["name"]

    desired = await run("guests", "desired", str(first), "running", "--db", db, cwd=tmp_path)
    # manage wrote the record to the guest's tags (generation 1); this change is generation 2
    assert desired.code == 0 and "desired running (generation 2)" in desired.out

    released = await run("guests", "release", str(second), "--db", db, "--json", cwd=tmp_path)
    assert json.loads(released.out)["guest"]["origin"] == "released"

    audit = await run("audit", "list", "--db", db, "--json", cwd=tmp_path)
    records = json.loads(audit.out)
    assert [(r["decision"], r["actor"]) for r in records] == [
        ("released", "cli"),
        ("adopted", "cli"),
        ("managed", "cli"),
    ]
    by_decision = await run("audit", "list", "--decision", "adopted", "--db", db, cwd=tmp_path)
    assert by_decision.code == 0 and str(second) in by_decision.out


async def test_guests_errors_are_one_line(sim: SimServer, tmp_path: Path) -> None:
    """Unknown guest → exit 1; a bad desired state or timestamp → exit 2; one line each."""
    db = str(tmp_path / "j.sqlite3")
    pve = pve_args(sim, tmp_path)
    missing = await run("guests", "manage", "99999", "--db", db, *pve, cwd=tmp_path)
    assert "not found in the cluster" in one_error_line(missing, 1)
    unknown = await run("guests", "desired", "101", "running", "--db", db, cwd=tmp_path)
    assert "not known" in one_error_line(unknown, 1)
    bad = await run("guests", "desired", "101", "absent", "--db", db, cwd=tmp_path)
    assert "running or stopped" in one_error_line(bad, 2)
    when = await run("audit", "list", "--since", "yesterday", "--db", db, cwd=tmp_path)
    assert "RFC 3339" in one_error_line(when, 2)
    no_dry = await run("reconcile", "--db", db, *pve, cwd=tmp_path)
    assert "--dry-run" in one_error_line(no_dry, 2)
    elsewhere = next(g for g in sim.sim.guests.values() if g.node == "pve2")
    wrong = await run(
        "guests", "manage", str(elsewhere.vmid), "--db", db, *pve, "--node", "pve1", cwd=tmp_path
    )
    assert "on node pve2, which this lifecycled does not serve" in one_error_line(wrong, 1)
    assert sim.sim.guests[elsewhere.vmid].config.get("tags") in (None, "")


async def test_reconcile_dry_run_prints_the_plan_and_changes_nothing(
    sim: SimServer, tmp_path: Path
) -> None:
    """The plan of a managed guest stopped out of band: a start; journal and Proxmox unchanged."""
    db = tmp_path / "j.sqlite3"
    pve = [*pve_args(sim, tmp_path), "--node", "pve1,pve2"]  # serves both sim nodes
    guest = next(
        g
        for g in sorted(sim.sim.guests.values(), key=lambda g: g.vmid)
        if g.node == "pve1" and g.running and g.ha is None and g.kind == "qemu"
    )
    done = await run("guests", "manage", str(guest.vmid), "--db", str(db), *pve, cwd=tmp_path)
    assert done.code == 0, done
    sim.sim.set_guest_status(guest.vmid, "stopped")
    async with await Journal.open(db) as journal:
        before = await journal.all_guests()
    seq = sim.sim.requests[-1].seq
    args = ["reconcile", "--dry-run", "--node", "pve1", "--db", str(db), *pve]
    plan = await run(*args, "--json", cwd=tmp_path)
    assert plan.code == 0, plan
    report = json.loads(plan.out)
    assert report["dry_run"] is True
    assert [(c["vmid"], c["action"]) for c in report["enqueued"]] == [(guest.vmid, "start")]
    assert guest.vmid not in report["discovered"] and report["discovered"]
    table = await run(*args, cwd=tmp_path)
    assert table.code == 0 and "would enqueue" in table.out and "dry run" in table.out
    async with await Journal.open(db) as journal:
        assert await journal.all_guests() == before
        assert sum((await journal.counts_by_state()).values()) == 0
    assert [r for r in sim.sim.requests_since(seq) if r.method != "GET"] == []
    assert not sim.sim.guests[guest.vmid].running
