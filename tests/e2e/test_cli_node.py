"""`lifecycled node …` and `lifecycled keys …` as real subprocesses on a real journal file."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from lifecycled.domain.signing import parse_trusted_keys
from lifecycled.journal import Journal

LIFECYCLED = Path(sys.executable).parent / "lifecycled"


@dataclass
class Result:
    code: int
    out: str
    err: str


def cli(*args: str, cwd: Path) -> Result:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLED_")}
    env["COLUMNS"] = "200"
    done = subprocess.run(
        [str(LIFECYCLED), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in done.stderr + done.stdout
    return Result(done.returncode, done.stdout, done.stderr)


def node_cli(tmp_path: Path, *args: str) -> Result:
    return cli("node", *args, "--db", "j.sqlite3", "--node", "pve7", cwd=tmp_path)


def one_error_line(result: Result, code: int) -> str:
    assert result.code == code, result
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("lifecycled: error: ")
    return lines[0].removeprefix("lifecycled: error: ")


@pytest.fixture
def journal_dir(tmp_path: Path) -> Path:
    assert cli("db", "migrate", "--db", "j.sqlite3", cwd=tmp_path).code == 0
    return tmp_path


async def refused(db: Path) -> list[str]:
    async with await Journal.open(db) as journal:
        page = await journal.list_audit(action="decommission", decision="refused")
    return [r.reason.split(":", 1)[0] for r in page.items]


def test_status_of_a_node_never_seen(journal_dir: Path) -> None:
    """status before any start says so; --json gives state null; exit 0."""
    result = node_cli(journal_dir, "status")
    assert result.code == 0 and "not registered" in result.out
    shown = json.loads(node_cli(journal_dir, "status", "--json").out)
    assert shown == {"node": "pve7", "state": None}


def test_drain_undrain_round_trip_with_json(journal_dir: Path) -> None:
    """drain → draining (changed), again → unchanged, undrain → active; status shows it."""
    first = node_cli(journal_dir, "drain", "--reason", "kernel 6.8", "--json")
    assert first.code == 0, first
    body = json.loads(first.out)
    assert body["changed"] is True and body["previous"] == "ready"
    assert body["node"]["state"] == "draining" and body["node"]["reason"] == "kernel 6.8"
    again = json.loads(node_cli(journal_dir, "drain", "--json").out)
    assert again["changed"] is False
    undrained = node_cli(journal_dir, "undrain")
    assert undrained.code == 0 and "draining → active" in undrained.out
    status = json.loads(node_cli(journal_dir, "status", "--json").out)
    assert status["state"] == "active" and status["node"] == "pve7"


async def test_decommission_refusals_exit_1_with_one_line_and_are_audited(
    journal_dir: Path,
) -> None:
    """Not draining, too young, guests remain, system node: exit 1, one line each, audited."""
    db = journal_dir / "j.sqlite3"
    assert "drain it first" in one_error_line(node_cli(journal_dir, "decommission"), 1)
    assert node_cli(journal_dir, "drain").code == 0
    too_young = node_cli(journal_dir, "decommission", "--json")
    assert one_error_line(too_young, 1).startswith("node_too_young: ")
    assert json.loads(too_young.out)["error"]["code"] == "node_too_young"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO guests (vmid, node, kind, origin, created_at, updated_at) "
            "VALUES (4242, 'pve7', 'qemu', 'native', 0, 0)"
        )
    conn.close()
    busy = node_cli(journal_dir, "decommission", "--node-min-age", "0")
    assert one_error_line(busy, 1).startswith("guests_remain: 1 guest(s) remain on node pve7")
    system = node_cli(journal_dir, "decommission", "--node-min-age", "0", "--system-node")
    assert one_error_line(system, 1).startswith("system_node: ")
    assert await refused(db) == [
        "system_node",
        "guests_remain",
        "node_too_young",
        "invalid_node_transition",
    ]
    status = json.loads(node_cli(journal_dir, "status", "--json").out)
    assert status["state"] == "draining"


def test_decommission_succeeds_then_is_final(journal_dir: Path) -> None:
    """An empty, old-enough, drained node decommissions; drain then fails with exit 1."""
    assert node_cli(journal_dir, "drain").code == 0
    done = node_cli(journal_dir, "decommission", "--node-min-age", "0", "--json")
    assert done.code == 0, done
    body = json.loads(done.out)
    assert body["node"]["state"] == "decommissioned" and body["guests"] == []
    assert body["proxmox_checked"] is False
    again = node_cli(journal_dir, "drain")
    assert one_error_line(again, 1).startswith("node_decommissioned: ")


def test_usage_errors_and_a_missing_journal(tmp_path: Path) -> None:
    """A bad option is exit 2; a journal that does not exist is exit 1; both one line."""
    assert "--bogus" in one_error_line(cli("node", "drain", "--bogus", cwd=tmp_path), 2)
    missing = cli("node", "status", "--db", "nope.sqlite3", cwd=tmp_path)
    assert "no journal at nope.sqlite3" in one_error_line(missing, 1)
    bad_age = cli(
        "node", "decommission", "--db", "nope.sqlite3", "--node-min-age", "soon", cwd=tmp_path
    )
    assert "node-min-age" in one_error_line(bad_age, 2)


def test_keys_generate_writes_a_private_key_and_prints_the_trusted_line(tmp_path: Path) -> None:
    """keys generate: PEM private key with mode 0600, the printed line is a valid trusted key;
    keys public prints the same line; overwriting needs --force."""
    made = cli("keys", "generate", "--key-id", "ops-2025", "--out", "ops.pem", cwd=tmp_path)
    assert made.code == 0, made
    pem = tmp_path / "ops.pem"
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    assert pem.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    keys = parse_trusted_keys(made.out, "stdout")
    assert set(keys) == {"ops-2025"}
    public = cli("keys", "public", "--key-id", "ops-2025", "--key", "ops.pem", cwd=tmp_path)
    assert public.out == made.out
    again = cli("keys", "generate", "--key-id", "ops-2025", "--out", "ops.pem", cwd=tmp_path)
    assert "--force" in one_error_line(again, 2)
    bad_id = cli("keys", "generate", "--key-id", "no/slash", "--out", "x.pem", cwd=tmp_path)
    assert "--key-id" in one_error_line(bad_id, 2)


async def test_without_node_the_journals_only_node_is_meant(journal_dir: Path) -> None:
    """Without --node, node commands act on the one node the journal serves, not the host name."""
    async with await Journal.open(journal_dir / "j.sqlite3") as journal:
        await journal.ensure_node("pve7", now=1_700_000_000.0, actor="test")
    shown = cli("node", "status", "--db", "j.sqlite3", "--json", cwd=journal_dir)
    assert shown.code == 0
    assert json.loads(shown.out)["node"] == "pve7"
    drained = cli("node", "drain", "--db", "j.sqlite3", "--json", cwd=journal_dir)
    assert drained.code == 0
    assert (
        json.loads(cli("node", "status", "--db", "j.sqlite3", "--json", cwd=journal_dir).out)[
            "state"
        ]
        == "draining"
    )


@pytest.mark.parametrize(
    "reason",
    [
        pytest.param("[link=https://evil.example]click[/link] me", id="link-markup"),
        pytest.param("oops [/bogus] closing tag", id="unbalanced-close"),
    ],
)
def test_stored_strings_are_printed_literally(journal_dir: Path, reason: str) -> None:
    """A drain reason holding rich markup is shown as written by `audit list` and
    `node status`, never rendered as a link nor crashing the table."""
    assert node_cli(journal_dir, "drain", "--reason", reason).code == 0
    listed = cli("audit", "list", "--db", "j.sqlite3", cwd=journal_dir)
    assert listed.code == 0, listed
    assert reason in listed.out
    assert "\x1b]8;" not in listed.out  # no OSC 8 hyperlink escape
    status = node_cli(journal_dir, "status")
    assert status.code == 0 and reason in status.out, status
