"""`lifecycled doctor` as a real subprocess against good and broken set-ups."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from conftest import SimFactory
from test_cli_admin import Result, cli
from test_cli_guests import pve_args

from lifecycled.sim import SimServer


def _run(args: list[str], cwd: Path) -> Result:
    return cli("doctor", *args, cwd=cwd)


async def doctor(*args: str, cwd: Path) -> Result:
    return await asyncio.to_thread(_run, list(args), cwd)


def checks(result: Result) -> dict[str, dict[str, Any]]:
    body = json.loads(result.out)
    return {c["check"]: c for c in body["checks"]}


def statuses(result: Result) -> dict[str, str]:
    return {name: c["status"] for name, c in checks(result).items()}


async def test_doctor_all_green_against_the_simulator(sim: SimServer, tmp_path: Path) -> None:
    """A good set-up: every check ✓, exit 0, in the documented order."""
    db = tmp_path / "j.sqlite3"
    made = await asyncio.to_thread(cli, "db", "migrate", "--db", str(db), cwd=tmp_path)
    assert made.code == 0, made
    args = ["--db", str(db), "--node", "pve1", *pve_args(sim, tmp_path)]
    result = await doctor(*args, "--json", cwd=tmp_path)
    assert result.code == 0, result
    found = statuses(result)
    assert set(found.values()) == {"ok"}, found
    names = list(found)
    order = ["config", "journal", "journal integrity", "journal schema", "daemon lock"]
    assert names[:6] == [*order, "proxmox reachable"]
    assert names[6:9] == ["tls", "token", "privileges: read"]
    assert names[-2:] == ["node", "clock"]
    assert "privileges: terminate" in found and "privileges: clone" in found

    text = await doctor(*args, cwd=tmp_path)
    assert text.code == 0
    lines = text.out.splitlines()
    assert all(line.startswith("✓ ") for line in lines), lines
    assert lines[0] == "✓ config: valid (no config file: defaults, environment and flags)"
    cfg = tmp_path / "lifecycled.toml"
    cfg.write_text('node = "pve1"\n')
    named = await doctor(*args, "--config", str(cfg), cwd=tmp_path)
    assert named.out.splitlines()[0] == f"✓ config: valid ({cfg})"
    assert len(lines) == len(found)


async def test_doctor_wrong_node(sim: SimServer, tmp_path: Path) -> None:
    """A --node that is not in the cluster is ✗ with the cluster's node names; exit 1."""
    result = await doctor(
        "--db", str(tmp_path / "j.sqlite3"), "--node", "pve9", "--json",
        *pve_args(sim, tmp_path), cwd=tmp_path,
    )  # fmt: skip
    assert result.code == 1
    node = checks(result)["node"]
    assert node["status"] == "fail"
    assert "pve9" in node["detail"] and "pve1, pve2" in node["detail"]
    assert checks(result)["clock"]["status"] == "skip"
    assert statuses(result)["token"] == "ok"


async def test_doctor_bad_token(sim: SimServer, tmp_path: Path) -> None:
    """A token Proxmox refuses: reachable ✓, token ✗ with a hint, later checks skipped."""
    token = tmp_path / "bad.token"
    token.write_text("root@pam!lifecycled=not-the-secret\n")
    token.chmod(0o600)
    result = await doctor(
        "--db", str(tmp_path / "j.sqlite3"), "--node", "pve1", "--json",
        "--pve-url", sim.url, "--pve-token-file", str(token), cwd=tmp_path,
    )  # fmt: skip
    assert result.code == 1
    found = checks(result)
    assert found["proxmox reachable"]["status"] == "ok"
    assert found["token"]["status"] == "fail" and "401" in found["token"]["detail"]
    assert found["token"]["hint"]
    assert {found[n]["status"] for n in ("privileges", "node", "clock")} == {"skip"}
    assert "not-the-secret" not in result.out + result.err


async def test_doctor_unreachable_proxmox(tmp_path: Path) -> None:
    """Nothing listens at pve_url: reachable ✗, everything after it skipped, exit 1."""
    token = tmp_path / "pve.token"
    token.write_text("root@pam!lifecycled=secret-secret\n")
    token.chmod(0o600)
    result = await doctor(
        "--db", str(tmp_path / "j.sqlite3"), "--node", "pve1", "--json",
        "--pve-url", "http://127.0.0.1:9", "--pve-token-file", str(token), cwd=tmp_path,
    )  # fmt: skip
    assert result.code == 1
    found = statuses(result)
    assert found["proxmox reachable"] == "fail"
    assert [found[n] for n in ("tls", "token", "privileges", "node", "clock")] == ["skip"] * 5


async def test_doctor_token_without_rights(sim_factory: SimFactory, tmp_path: Path) -> None:
    """A token holding only VM.Audit/Sys.Audit/VM.PowerMgmt: power actions ✓, the rest ✗ naming what is missing."""
    sim = await sim_factory(token_privileges={"VM.Audit", "Sys.Audit", "VM.PowerMgmt"})
    result = await doctor(
        "--db", str(tmp_path / "j.sqlite3"), "--node", "pve1", "--json",
        *pve_args(sim, tmp_path), cwd=tmp_path,
    )  # fmt: skip
    assert result.code == 1
    found = checks(result)
    assert found["privileges: read"]["status"] == "ok"
    assert found["privileges: reboot"]["status"] == "ok"
    assert found["privileges: terminate"]["status"] == "fail"
    assert "VM.Allocate" in found["privileges: terminate"]["detail"]
    assert "VM.Clone" in found["privileges: clone"]["detail"]


async def test_doctor_clock_skew(sim_factory: SimFactory, tmp_path: Path) -> None:
    """A node clock 30 s ahead is ✗ clock with the measured skew."""
    sim = await sim_factory(clock_offset=30.0)
    result = await doctor(
        "--db", str(tmp_path / "j.sqlite3"), "--node", "pve1", "--json",
        *pve_args(sim, tmp_path), cwd=tmp_path,
    )  # fmt: skip
    assert result.code == 1
    clock = checks(result)["clock"]
    assert clock["status"] == "fail"
    assert "+30" in clock["detail"] or "+29" in clock["detail"]


async def test_doctor_bad_config_and_corrupt_journal(sim: SimServer, tmp_path: Path) -> None:
    """A config with a wrong type is one ✗ config line; a corrupt journal is ✗ (never a traceback)."""
    cfg = tmp_path / "bad.toml"
    cfg.write_text('workers = "many"\n')
    result = await doctor("--config", str(cfg), cwd=tmp_path)
    assert result.code == 1
    assert result.out.startswith("✗ config: ") and "Traceback" not in result.err

    db = tmp_path / "j.sqlite3"
    db.write_bytes(b"this is not a sqlite file" * 100)
    result = await doctor(
        "--db", str(db), "--node", "pve1", "--json", *pve_args(sim, tmp_path), cwd=tmp_path
    )
    assert result.code == 1
    assert "Traceback" not in result.err
    assert any(
        c["status"] == "fail" and c["check"].startswith("journal") for c in checks(result).values()
    )
    assert db.read_bytes() == b"this is not a sqlite file" * 100


async def test_doctor_tls_trust(sim_factory: SimFactory, tmp_path: Path) -> None:
    """HTTPS with a certificate the CA file does not vouch for is ✗ tls; the right CA is ✓."""
    sim = await sim_factory(tls=True)
    assert sim.cert_pem is not None
    base = ["--db", str(tmp_path / "j.sqlite3"), "--node", "pve1", "--json"]
    untrusted = await doctor(*base, *pve_args(sim, tmp_path), cwd=tmp_path)
    assert untrusted.code == 1
    found = checks(untrusted)
    assert found["proxmox reachable"]["status"] == "ok"
    assert found["tls"]["status"] == "fail" and "pve_ca_file" in found["tls"]["hint"]
    assert found["token"]["status"] == "skip"

    ca = tmp_path / "ca.pem"
    ca.write_text(sim.cert_pem)
    trusted = await doctor(*base, *pve_args(sim, tmp_path), "--pve-ca-file", str(ca), cwd=tmp_path)
    assert trusted.code == 0, trusted
    assert str(ca) in checks(trusted)["tls"]["detail"]


async def test_doctor_names_the_daemon_holding_the_journal(sim: SimServer, tmp_path: Path) -> None:
    """While a daemon holds the journal's lock doctor says ✗ with its pid; the lock is not touched."""
    from lifecycled.journal.daemonlock import DaemonLock

    db = tmp_path / "j.sqlite3"
    args = ["--db", str(db), "--node", "pve1", "--json", *pve_args(sim, tmp_path)]
    with DaemonLock(db):
        held = checks(await doctor(*args, cwd=tmp_path))
        assert held["daemon lock"]["status"] == "fail"
        assert f"pid {os.getpid()}" in held["daemon lock"]["detail"]
    free = checks(await doctor(*args, cwd=tmp_path))
    assert free["daemon lock"]["status"] == "ok"


async def test_doctor_says_an_older_journal_is_migrated_at_start(
    sim: SimServer, tmp_path: Path
) -> None:
    """A journal at an older schema version is ✓ (the daemon migrates it), never rewritten by doctor."""
    import shutil

    from lifecycled.journal import Journal

    old = tmp_path / "old-migrations"
    old.mkdir()
    for sql in sorted(Path(__file__).parents[2].joinpath("migrations").glob("000[1-3]_*.sql")):
        shutil.copy(sql, old / sql.name)
    db = tmp_path / "j.sqlite3"
    async with await Journal.open(db, migrations_dir=old) as journal:
        assert journal.schema_version == 3
    before = db.read_bytes()
    result = await doctor(
        "--db", str(db), "--node", "pve1", "--json", *pve_args(sim, tmp_path), cwd=tmp_path
    )
    schema = checks(result)["journal schema"]
    assert schema["status"] == "ok" and schema["detail"].startswith("version 3 (")
    assert "migrates it at start" in schema["detail"]
    assert db.read_bytes() == before
