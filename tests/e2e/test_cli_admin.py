"""The admin CLI (`lifecycled db|ops|dlq`) as a real subprocess on a real journal file."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from lifecycled.audit import AuditRecord, Decision
from lifecycled.domain.classify import ErrorClass
from lifecycled.domain.op import GuestKind, GuestRef, OpError, Origin
from lifecycled.domain.states import OpState
from lifecycled.journal import Journal, SubmitRequest

LIFECYCLED = Path(sys.executable).parent / "lifecycled"
T0 = 1_700_000_000.0


@dataclass
class Result:
    code: int
    out: str
    err: str


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Result:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLED_")}
    base["COLUMNS"] = "200"
    done = subprocess.run(
        [str(LIFECYCLED), *args],
        cwd=cwd,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in done.stderr + done.stdout
    return Result(done.returncode, done.stdout, done.stderr)


def one_error_line(result: Result, code: int) -> str:
    """The result failed with ``code`` and exactly one error line on stderr."""
    assert result.code == code, result
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("lifecycled: error: ")
    return lines[0].removeprefix("lifecycled: error: ")


async def _make_ops(db: Path, states: list[OpState]) -> list[int]:
    ids = []
    async with await Journal.open(db) as journal:
        for i, state in enumerate(states):
            req = SubmitRequest(
                idempotency_key=f"k{i}",
                action="start" if i % 2 == 0 else "stop",
                guest=GuestRef(node="pve1", kind=GuestKind.QEMU, vmid=100 + i),
                params={},
                origin=Origin.API,
            )
            op = (await journal.submit(req, now=T0)).op
            ids.append(op.id)
            if state is OpState.PENDING:
                continue
            await journal.claim_next(now=T0 + 1, nodes={"pve1"})
            await journal.record_upid(op.id, f"UPID:pve1:{op.id:08X}", now=T0 + 2)
            if state is OpState.DEAD_LETTERED:
                err = OpError(error_class=ErrorClass.TRANSIENT, message="HTTP 595: no route")
                await journal.dead_letter(op.id, now=T0 + 3, reason="5 attempts failed", error=err)
            elif state is OpState.SUCCEEDED:
                await journal.finish(op.id, state, now=T0 + 3, reason="OK", exitstatus="OK")
    return ids


def make_ops(db: Path, states: list[OpState]) -> list[int]:
    return asyncio.run(_make_ops(db, states))


def test_help_lists_the_admin_commands(tmp_path: Path) -> None:
    """--help shows db, ops and dlq; each group lists its subcommands."""
    top = cli("--help", cwd=tmp_path)
    assert top.code == 0
    for name in ("db", "ops", "dlq"):
        assert name in top.out
    dlq = cli("dlq", "--help", cwd=tmp_path)
    assert dlq.code == 0
    for name in ("list", "show", "retry", "discard", "purge"):
        assert name in dlq.out


def test_reading_commands_never_create_a_journal(tmp_path: Path) -> None:
    """`dlq list`/`ops list`/`guests list` on a missing journal: one line, exit 1, no file made."""
    (tmp_path / "data").mkdir()
    for args in (["dlq", "list"], ["ops", "list", "--json"], ["guests", "list"], ["audit", "list"]):
        result = cli(*args, cwd=tmp_path)
        assert result.code == 1, (args, result)
        assert result.err.startswith("lifecycled: error: no journal at data/lifecycled.sqlite3;")
        assert "check --db or --config" in result.err and len(result.err.splitlines()) == 1
    assert list((tmp_path / "data").iterdir()) == []
    made = cli("db", "migrate", "--db", "x.sqlite3", cwd=tmp_path)
    assert made.code == 0
    assert stat.S_IMODE((tmp_path / "x.sqlite3").stat().st_mode) == 0o600
    assert json.loads(cli("dlq", "list", "--db", "x.sqlite3", "--json", cwd=tmp_path).out) == []


def test_admin_commands_read_the_daemons_config(tmp_path: Path) -> None:
    """The journal comes from --config or LIFECYCLED_CONFIG (the daemon's file); --db still wins."""
    db = tmp_path / "state" / "j.sqlite3"
    (tmp_path / "state").mkdir()
    (dead,) = make_ops(db, [OpState.DEAD_LETTERED])
    cfg = tmp_path / "lifecycled.toml"
    cfg.write_text(f'db = "{db}"\nnode = "pve1"\n')
    by_flag = cli("dlq", "list", "--config", str(cfg), "--json", cwd=tmp_path)
    assert [o["id"] for o in json.loads(by_flag.out)] == [dead]
    env = {"LIFECYCLED_CONFIG": str(cfg)}
    by_env = cli("ops", "show", str(dead), "--json", cwd=tmp_path, env=env)
    assert json.loads(by_env.out)["id"] == dead
    other = cli("dlq", "list", "--config", str(cfg), "--db", "other.sqlite3", cwd=tmp_path)
    assert other.code == 1 and "other.sqlite3" in other.err
    cfg.write_text("workers = 0\n")
    bad = cli("dlq", "list", "--config", str(cfg), cwd=tmp_path)
    assert bad.code == 2 and len(bad.err.splitlines()) == 1 and "workers" in bad.err


def test_dead_letter_is_listed_and_shown_with_history(tmp_path: Path) -> None:
    """A dead-lettered op appears in `dlq list` and `dlq show --json` carries its history."""
    db = tmp_path / "j.sqlite3"
    (dead,) = make_ops(db, [OpState.DEAD_LETTERED])
    listed = json.loads(cli("dlq", "list", "--db", str(db), "--json", cwd=tmp_path).out)
    assert [item["id"] for item in listed] == [dead]
    shown = cli("dlq", "show", str(dead), "--db", str(db), "--json", cwd=tmp_path)
    assert shown.code == 0
    op = json.loads(shown.out)
    assert op["state"] == "dead_lettered"
    assert op["error"] == {"class": "transient", "message": "HTTP 595: no route"}
    assert [(h["from"], h["to"]) for h in op["history"]] == [
        (None, "pending"),
        ("pending", "dispatching"),
        ("dispatching", "running"),
        ("running", "dead_lettered"),
    ]
    assert op["history"][-1]["reason"] == "5 attempts failed"
    table = cli("dlq", "show", str(dead), "--db", str(db), cwd=tmp_path)
    assert table.code == 0
    assert "5 attempts failed" in table.out and "dead_lettered" in table.out
    people = cli("dlq", "list", "--db", str(db), cwd=tmp_path)
    assert "HTTP 595: no route" in people.out
    assert "\x1b[" not in people.out  # no colour codes when stdout is not a terminal


def test_dlq_retry_is_idempotent(tmp_path: Path) -> None:
    """Retrying a dead letter re-queues it; retrying it again reports it and exits 0."""
    db = tmp_path / "j.sqlite3"
    (dead,) = make_ops(db, [OpState.DEAD_LETTERED])
    first = cli("dlq", "retry", str(dead), "--db", str(db), cwd=tmp_path)
    assert first.code == 0 and f"op {dead} re-queued" in first.out
    again = cli("dlq", "retry", str(dead), "--db", str(db), "--json", cwd=tmp_path)
    assert again.code == 0
    (report,) = json.loads(again.out)
    assert (report["id"], report["outcome"], report["op"]["state"]) == (
        dead,
        "unchanged",
        "pending",
    )
    assert json.loads(cli("dlq", "list", "--db", str(db), "--json", cwd=tmp_path).out) == []
    shown = json.loads(cli("ops", "show", str(dead), "--db", str(db), "--json", cwd=tmp_path).out)
    assert shown["attempts"] == 0 and shown["history"][-1]["reason"] == "retried by cli"


def test_dlq_retry_all_by_action(tmp_path: Path) -> None:
    """`dlq retry --all --action start` re-queues only that action's dead letters."""
    db = tmp_path / "j.sqlite3"
    ids = make_ops(db, [OpState.DEAD_LETTERED] * 4)  # actions: start, stop, start, stop
    result = cli("dlq", "retry", "--all", "--action", "start", "--db", str(db), cwd=tmp_path)
    assert result.code == 0
    left = json.loads(cli("dlq", "list", "--db", str(db), "--json", cwd=tmp_path).out)
    assert sorted(item["id"] for item in left) == [ids[1], ids[3]]
    none = cli("dlq", "retry", "--all", "--action", "reboot", "--db", str(db), cwd=tmp_path)
    assert none.code == 0 and "no dead letters" in none.out


def test_dlq_retry_reports_missing_ids_and_fails(tmp_path: Path) -> None:
    """Retrying a missing id retries the rest, then fails with one line naming it."""
    db = tmp_path / "j.sqlite3"
    (dead,) = make_ops(db, [OpState.DEAD_LETTERED])
    result = cli("dlq", "retry", str(dead), "42", "--db", str(db), cwd=tmp_path)
    assert one_error_line(result, 1) == "op 42 not found"
    assert f"op {dead} re-queued" in result.out


def test_dlq_discard_and_purge(tmp_path: Path) -> None:
    """discard hides a dead letter (twice is fine); purge deletes it."""
    db = tmp_path / "j.sqlite3"
    dead, done = make_ops(db, [OpState.DEAD_LETTERED, OpState.SUCCEEDED])
    assert cli("dlq", "discard", str(dead), "--db", str(db), cwd=tmp_path).code == 0
    again = cli("dlq", "discard", str(dead), "--db", str(db), cwd=tmp_path)
    assert again.code == 0 and "already discarded" in again.out
    assert json.loads(cli("dlq", "list", "--db", str(db), "--json", cwd=tmp_path).out) == []
    wrong = cli("dlq", "discard", str(done), "--db", str(db), cwd=tmp_path)
    assert "only a dead-lettered op can be discarded" in one_error_line(wrong, 1)
    purge = cli("dlq", "purge", "--db", str(db), cwd=tmp_path)
    assert purge.code == 0 and "purged 1" in purge.out
    gone = cli("ops", "show", str(dead), "--db", str(db), cwd=tmp_path)
    assert one_error_line(gone, 1) == f"op {dead} not found"


def test_ops_list_show_cancel(tmp_path: Path) -> None:
    """ops list filters, ops show has history, ops cancel works on pending and refuses running."""
    db = tmp_path / "j.sqlite3"
    running, pending = make_ops(db, [OpState.RUNNING, OpState.PENDING])
    listed = json.loads(
        cli("ops", "list", "--state", "running", "--db", str(db), "--json", cwd=tmp_path).out
    )
    assert [item["id"] for item in listed] == [running]
    by_vmid = cli("ops", "list", "--vmid", "101", "--db", str(db), "--json", cwd=tmp_path)
    assert [item["id"] for item in json.loads(by_vmid.out)] == [pending]
    paged = cli("ops", "list", "--limit", "1", "--db", str(db), cwd=tmp_path)
    assert f"--cursor {pending}" in paged.out
    cancelled = cli("ops", "cancel", str(pending), "--db", str(db), "--json", cwd=tmp_path)
    assert cancelled.code == 0 and json.loads(cancelled.out)["state"] == "cancelled"
    refused = cli("ops", "cancel", str(running), "--db", str(db), cwd=tmp_path)
    assert one_error_line(refused, 1) == (
        f"op {running} is running: only a pending op can be cancelled"
    )


@pytest.mark.parametrize("group", ["ops", "dlq"])
def test_show_of_a_missing_id(tmp_path: Path, group: str) -> None:
    """`ops show 42` / `dlq show 42` on an existing journal: 'op 42 not found', exit 1."""
    db = tmp_path / "j.sqlite3"
    make_ops(db, [])
    result = cli(group, "show", "42", "--db", str(db), cwd=tmp_path)
    assert one_error_line(result, 1) == "op 42 not found"


def test_read_command_on_a_missing_journal_creates_nothing(tmp_path: Path) -> None:
    """A show on a journal that does not exist fails clearly and does not create it."""
    result = cli("ops", "show", "1", "--db", "missing.sqlite3", cwd=tmp_path)
    assert "no journal at missing.sqlite3" in one_error_line(result, 1)
    assert not (tmp_path / "missing.sqlite3").exists()
    in_missing_dir = cli("dlq", "list", "--db", "nodir/x.sqlite3", cwd=tmp_path)
    assert "no journal at nodir/x.sqlite3" in one_error_line(in_missing_dir, 1)
    assert not (tmp_path / "nodir").exists()


def test_corrupt_journal_is_one_clear_line(tmp_path: Path) -> None:
    """A file that is not a journal is reported in one line, exit 1."""
    (tmp_path / "bad.sqlite3").write_bytes(b"this is not a database\n" * 100)
    result = cli("dlq", "list", "--db", "bad.sqlite3", cwd=tmp_path)
    assert "corrupt or not a lifecycled journal" in one_error_line(result, 1)


@pytest.mark.parametrize(
    "args",
    [
        ["dlq", "retry"],
        ["dlq", "retry", "1", "--all"],
        ["dlq", "retry", "1", "--action", "start"],
        ["db", "prune", "--older-than", "3x"],
        ["dlq", "purge", "--older-than", "soon"],
    ],
)
def test_usage_errors_exit_2_in_one_line(tmp_path: Path, args: list[str]) -> None:
    """Bad combinations and malformed durations are usage errors: one line, exit 2."""
    make_ops(tmp_path / "j.sqlite3", [])
    one_error_line(cli(*args, "--db", "j.sqlite3", cwd=tmp_path), 2)


@pytest.mark.parametrize(
    "args", [["ops", "list", "--limit", "0"], ["ops", "list", "--state", "bogus"]]
)
def test_invalid_option_values_exit_2(tmp_path: Path, args: list[str]) -> None:
    """Option values the parser rejects exit 2 without a traceback."""
    result = cli(*args, "--db", "j.sqlite3", cwd=tmp_path)
    assert result.code == 2


def test_db_migrate_check_backup_prune(tmp_path: Path) -> None:
    """db migrate creates, check says ok, backup writes a 0600 copy once, prune reports."""
    migrate = cli("db", "migrate", "--db", "j.sqlite3", cwd=tmp_path)
    assert migrate.code == 0 and "applied 0001_initial" in migrate.out
    again = cli("db", "migrate", "--db", "j.sqlite3", cwd=tmp_path)
    assert again.code == 0 and "up to date" in again.out
    check = cli("db", "check", "--db", "j.sqlite3", "--json", cwd=tmp_path)
    assert check.code == 0 and json.loads(check.out)["integrity"] == ["ok"]
    make_ops(tmp_path / "j.sqlite3", [OpState.SUCCEEDED])
    backup = cli("db", "backup", "b.sqlite3", "--db", "j.sqlite3", cwd=tmp_path)
    assert backup.code == 0
    assert stat.S_IMODE((tmp_path / "b.sqlite3").stat().st_mode) == 0o600
    twice = cli("db", "backup", "b.sqlite3", "--db", "j.sqlite3", cwd=tmp_path)
    assert "already exists" in one_error_line(twice, 1)
    prune = cli("db", "prune", "--older-than", "1d", "--db", "b.sqlite3", cwd=tmp_path)
    assert prune.code == 0 and prune.out.startswith("pruned 1 ops")
    missing = cli("db", "check", "--db", "nope.sqlite3", cwd=tmp_path)
    assert "no journal at nope.sqlite3" in one_error_line(missing, 1)


def test_audit_prune(tmp_path: Path) -> None:
    """audit prune --older-than 90d deletes older records, audits itself, refuses < 1d."""

    async def seed() -> None:
        async with await Journal.open(tmp_path / "j.sqlite3") as journal:
            for age, reason in ((200 * 86400, "old"), (3600, "recent")):
                await journal.append_audit(
                    AuditRecord(
                        at=time.time() - age,
                        actor="cli",
                        action="stop",
                        decision=Decision.ALLOWED,
                        reason=reason,
                    )
                )

    asyncio.run(seed())
    pruned = cli(
        "audit", "prune", "--older-than", "90d", "--db", "j.sqlite3", "--json", cwd=tmp_path
    )
    assert pruned.code == 0, pruned
    assert json.loads(pruned.out)["pruned"] == 1
    listed = cli("audit", "list", "--db", "j.sqlite3", "--json", cwd=tmp_path)
    rows = json.loads(listed.out)
    assert [(r["action"], r["decision"], r["actor"]) for r in rows] == [
        ("audit_prune", "pruned", "cli"),
        ("stop", "allowed", "cli"),
    ]
    too_short = cli("audit", "prune", "--older-than", "1h", "--db", "j.sqlite3", cwd=tmp_path)
    assert "at least one day" in one_error_line(too_short, 2)


def test_db_path_from_the_environment(tmp_path: Path) -> None:
    """LIFECYCLED_DB names the journal when --db is not given."""
    (dead,) = make_ops(tmp_path / "env.sqlite3", [OpState.DEAD_LETTERED])
    result = cli("dlq", "list", "--json", cwd=tmp_path, env={"LIFECYCLED_DB": "env.sqlite3"})
    assert [item["id"] for item in json.loads(result.out)] == [dead]


async def _dead_letter_with(db: Path, message: str, upid: str) -> int:
    async with await Journal.open(db) as journal:
        req = SubmitRequest(
            idempotency_key="markup",
            action="start",
            guest=GuestRef(node="pve1", kind=GuestKind.QEMU, vmid=100),
            params={},
            origin=Origin.API,
        )
        op = (await journal.submit(req, now=T0)).op
        await journal.claim_next(now=T0 + 1, nodes={"pve1"})
        await journal.record_upid(op.id, upid, now=T0 + 2)
        err = OpError(error_class=ErrorClass.TRANSIENT, message=message)
        await journal.dead_letter(op.id, now=T0 + 3, reason=message, error=err)
        return op.id


def test_piped_tables_are_plain_rows_uncut_and_literal(tmp_path: Path) -> None:
    """Piped output is tab-separated rows: a long UPID is never cut, [markup] is printed as is."""
    db = tmp_path / "j.sqlite3"
    upid = "UPID:pve1:003A1F2C:1A2B3C4D5:6553F00D:qmstart:100:automation@pve!lifecycled-long:"
    message = "[link=https://evil.example]click[/link] [bold]x"
    op_id = asyncio.run(_dead_letter_with(db, message, upid))
    listed = cli("dlq", "list", "--db", str(db), cwd=tmp_path)
    assert listed.code == 0
    assert message in listed.out
    assert all("│" not in line and "━" not in line for line in listed.out.splitlines())
    shown = cli("ops", "show", str(op_id), "--db", str(db), cwd=tmp_path)
    assert shown.code == 0
    assert any(line.split("\t")[-1] == upid for line in shown.out.splitlines())


def test_maintenance_commands_speak_json(tmp_path: Path) -> None:
    """db backup, db prune and dlq purge print one JSON document with --json."""
    db = tmp_path / "j.sqlite3"
    make_ops(db, [OpState.SUCCEEDED])
    backup = cli("db", "backup", "b.sqlite3", "--db", str(db), "--json", cwd=tmp_path)
    assert json.loads(backup.out)["backup"] == "b.sqlite3"
    assert json.loads(backup.out)["bytes"] == (tmp_path / "b.sqlite3").stat().st_size
    prune = cli("db", "prune", "--older-than", "1d", "--db", str(db), "--json", cwd=tmp_path)
    assert json.loads(prune.out)["pruned"] == 1
    purge = cli("dlq", "purge", "--db", str(db), "--json", cwd=tmp_path)
    assert json.loads(purge.out) == {"purged": 0}
