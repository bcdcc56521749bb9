"""The admin commands write the journal as durably as the daemon (issue 10 point 11).

Each command runs as a real subprocess whose ``sqlite3.connect`` is wrapped to trace every
statement of every connection (``Connection.set_trace_callback``), so the test sees the
``PRAGMA synchronous`` each connection really ran with.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from lifecycled.domain.classify import ErrorClass
from lifecycled.domain.op import GuestKind, GuestRef, OpError, Origin
from lifecycled.journal import Journal, SubmitRequest

#: Runs ``python -m lifecycled ARGS`` with every SQLite statement traced to $SQL_TRACE.
TRACED = """
import functools, json, os, runpy, sqlite3, sys
trace = open(os.environ["SQL_TRACE"], "a", encoding="utf-8")
opened = []
plain_connect = sqlite3.connect
@functools.wraps(plain_connect)
def connect(*args, **kwargs):
    conn = plain_connect(*args, **kwargs)
    n = len(opened)
    opened.append(n)
    conn.set_trace_callback(lambda sql: (trace.write(json.dumps([n, sql]) + "\\n"), trace.flush()))
    return conn
sqlite3.connect = connect
sys.argv = ["lifecycled", *sys.argv[1:]]
runpy.run_module("lifecycled", run_name="__main__", alter_sys=True)
"""

T0 = 1_700_000_000.0


async def _journal_with_ops(db: Path) -> tuple[int, int]:
    """A pending op and a dead-lettered one."""
    async with await Journal.open(db) as journal:
        ids = []
        for i in range(2):
            req = SubmitRequest(
                idempotency_key=f"k{i}",
                action="start",
                guest=GuestRef(node="pve1", kind=GuestKind.QEMU, vmid=100 + i),
                params={},
                origin=Origin.CLI,
            )
            ids.append((await journal.submit(req, now=T0)).op.id)
        await journal.claim_next(now=T0 + 1, nodes={"pve1"})
        await journal.dead_letter(
            ids[0],
            now=T0 + 2,
            reason="retries spent",
            error=OpError(error_class=ErrorClass.TRANSIENT, message="HTTP 595"),
        )
        await journal.ensure_node("pve1", now=T0, actor="test")
    return ids[0], ids[1]


def traced(args: list[str], trace: Path, cwd: Path) -> dict[int, list[str]]:
    """Run one admin command; the SQL each of its connections ran, by connection."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLED_")}
    env["SQL_TRACE"] = str(trace)
    trace.unlink(missing_ok=True)
    done = subprocess.run(
        [sys.executable, "-c", TRACED, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    by_conn: dict[int, list[str]] = defaultdict(list)
    for line in trace.read_text(encoding="utf-8").splitlines():
        n, sql = json.loads(line)
        by_conn[n].append(" ".join(sql.split()))
    return dict(by_conn)


@pytest.mark.parametrize(
    "command",
    [
        ["db", "migrate", "--db", "{fresh}"],
        ["db", "prune", "--older-than", "1s", "--db", "{db}"],
        ["ops", "cancel", "{pending}", "--db", "{db}"],
        ["dlq", "retry", "{dead}", "--db", "{db}"],
        ["dlq", "discard", "{dead}", "--db", "{db}"],
        ["node", "drain", "--node", "pve1", "--db", "{db}"],
    ],
)
def test_admin_commands_write_with_synchronous_full(tmp_path: Path, command: list[str]) -> None:
    """Every connection an admin command opens runs `PRAGMA synchronous = FULL` before it
    writes: an operator's cancel or retry survives a power cut like the daemon's writes."""
    db = tmp_path / "journal.sqlite3"
    dead, pending = asyncio.run(_journal_with_ops(db))
    fresh = tmp_path / "fresh.sqlite3"
    args = [a.format(pending=pending, dead=dead, db=db, fresh=fresh) for a in command]
    conns = traced(args, tmp_path / "sql.trace", tmp_path)
    writers = {
        n: sql
        for n, sql in conns.items()
        if any(s.upper().startswith(("BEGIN IMMEDIATE", "INSERT", "UPDATE", "DELETE")) for s in sql)
    }
    assert writers, conns
    for sql in writers.values():
        levels = [s.upper().split("=")[1].strip() for s in sql if "PRAGMA SYNCHRONOUS" in s.upper()]
        assert levels == ["FULL"], levels
