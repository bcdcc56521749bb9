"""The real daemon guards itself (issue 10 points 5 and 6): a bad op fails alone while the
daemon keeps serving, and a second daemon on the same journal refuses to start."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from crash_support import Daemon, Sim, healthy, http_json, wait_for

from lifecycled.domain.op import GuestKind, GuestRef, Origin
from lifecycled.journal import Journal, SubmitRequest
from lifecycled.journal.daemonlock import DaemonLock

pytestmark = pytest.mark.timeout(120)

LIFECYCLED = Path(sys.executable).parent / "lifecycled"


def _plain_qemu(sim: Sim) -> list[dict[str, Any]]:
    return [
        g
        for g in sim.control("/state")["guests"]
        if g["kind"] == "qemu" and not g["template"] and g["ha"] is None and not g["lock"]
    ]


async def _journal_bad_op(db: Path, guest: dict[str, Any]) -> int:
    """A configure op with a newline in a parameter name, written with the journal's own
    verb (as a client could get it past a less careful door)."""
    async with await Journal.open(db) as journal:
        result = await journal.submit(
            SubmitRequest(
                idempotency_key="bad-e2e",
                action="configure",
                guest=GuestRef(node=guest["node"], kind=GuestKind.QEMU, vmid=guest["vmid"]),
                params={"cores\n": 2, "description": "\ud800"},
                origin=Origin.API,
                actor="test",
            ),
            now=time.time(),
        )
        return result.op.id


def _op(daemon: Daemon, op_id: int) -> dict[str, Any]:
    found: dict[str, Any] = http_json(f"{daemon.url}/v1/ops/{op_id}")
    return found


def _terminal(daemon: Daemon, op_id: int) -> dict[str, Any]:
    wait_for(
        lambda: _op(daemon, op_id)["state"] in ("succeeded", "failed", "dead_lettered"),
        30,
        f"op {op_id} terminal",
        daemon.proc,
        daemon.log,
    )
    return _op(daemon, op_id)


def test_a_bad_op_fails_alone_in_the_real_daemon(tmp_path: Path) -> None:
    """`lifecycled run` fails an unsendable op (internal) and keeps serving."""
    sim = Sim(tmp_path, guests=4, task_seconds=0.2)
    daemon = Daemon(tmp_path, sim, tmp_path / "journal.sqlite3")
    try:
        daemon.start()
        bad_guest, good_guest = _plain_qemu(sim)[:2]
        for g in (bad_guest, good_guest):
            http_json(f"{daemon.url}/v1/guests/{g['vmid']}/manage", "POST", {})
        bad_id = asyncio.run(_journal_bad_op(daemon.db, bad_guest))
        bad = _terminal(daemon, bad_id)
        good = http_json(
            f"{daemon.url}/v1/ops",
            "POST",
            {
                "action": "configure",
                "vmid": good_guest["vmid"],
                "params": {"cores": 3},
                "idempotency_key": "good-e2e",
            },
        )
        good = _terminal(daemon, good["id"])
        assert daemon.proc is not None and daemon.proc.poll() is None
        assert healthy(f"{daemon.url}/readyz")
    finally:
        daemon.stop()
        sim.stop()
    assert bad["state"] == "failed"
    assert bad["error"]["class"] == "internal"
    assert any(h["reason"].startswith("internal error") for h in bad["history"])
    assert good["state"] == "succeeded", good
    log = daemon.log.read_text(errors="replace")
    assert f'"event":"op.internal_error","op_id":{bad_id},' in log


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLED_")}
    return subprocess.run(
        [str(LIFECYCLED), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_second_daemon_on_one_journal_exits_at_once(tmp_path: Path) -> None:
    """A second `run` on a journal exits 1 naming the holder; SIGKILL frees the lock."""
    sim = Sim(tmp_path, guests=2, task_seconds=0.2)
    db = tmp_path / "journal.sqlite3"
    first = Daemon(tmp_path, sim, db)
    second = Daemon(tmp_path, sim, db)
    second.log = tmp_path / "second.log"
    third = Daemon(tmp_path, sim, db)
    try:
        first.start()
        assert first.proc is not None
        lock = Path(f"{db}.lock")
        assert lock.stat().st_mode & 0o777 == 0o600
        assert lock.read_text().strip() == str(first.proc.pid)
        started = time.monotonic()
        second.start(wait_ready=False)
        assert second.proc is not None
        code = second.proc.wait(20)
        assert time.monotonic() - started < 15  # at once: no Recover, no waiting
        lines = second.log.read_text().splitlines()
        admin = [
            _cli(*command, "--db", str(db), cwd=tmp_path)
            for command in (
                ("ops", "list", "--json"),
                ("dlq", "list", "--json"),
                ("guests", "list", "--json"),
                ("audit", "list", "--json"),
                ("node", "status", "--json"),
                ("db", "check"),
            )
        ]
        assert healthy(f"{first.url}/readyz")  # the first daemon is untouched
        first.kill()
        third.start()
        assert third.proc is not None
        assert lock.read_text().strip() == str(third.proc.pid)
    finally:
        for d in (third, second, first):
            if d.proc is not None and d.proc.poll() is None:
                d.proc.send_signal(signal.SIGKILL)
                d.proc.wait()
        sim.stop()
    assert code == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith("lifecycled: error: ")
    assert f"pid {first.proc.pid}" in lines[0]
    assert [a.returncode for a in admin] == [0] * len(admin), [a.stderr for a in admin]
    assert admin[0].stdout.strip().startswith("[")


def test_run_refuses_before_opening_a_locked_journal(tmp_path: Path) -> None:
    """`run` on a locked journal exits 1 naming the pid, before opening the journal."""
    db = tmp_path / "sub" / "journal.sqlite3"
    with DaemonLock(db):
        done = _cli("run", "--db", str(db), "--pve-url", "http://127.0.0.1:9", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert f"pid {os.getpid()}" in done.stderr
    assert not db.exists()
