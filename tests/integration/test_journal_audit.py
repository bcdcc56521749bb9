"""The append-only audit log in the journal (SPEC §4 "Audit log")."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from lifecycled.audit import AuditRecord, Decision
from lifecycled.journal import Journal


async def test_append_and_filter(tmp_path: Path) -> None:
    """Records come back newest first, filtered by guest, action, decision and time, paged."""
    async with await Journal.open(tmp_path / "j.sqlite3") as journal:
        for i in range(5):
            await journal.append_audit(
                AuditRecord(
                    at=100.0 + i,
                    actor="cli",
                    action="terminate" if i % 2 else "stop",
                    decision=Decision.REFUSED if i == 3 else Decision.ALLOWED,
                    reason=f"r{i}",
                    vmid=100 + (i % 2),
                    node="pve1",
                    snapshot={"status": "running"},
                )
            )
        page = await journal.list_audit(limit=2)
        assert [r.reason for r in page.items] == ["r4", "r3"]
        assert page.next_cursor is not None
        rest = await journal.list_audit(limit=10, cursor=page.next_cursor)
        assert [r.reason for r in rest.items] == ["r2", "r1", "r0"]
        assert [r.reason for r in (await journal.list_audit(vmid=101)).items] == ["r3", "r1"]
        assert [r.reason for r in (await journal.list_audit(decision="refused")).items] == ["r3"]
        assert [r.reason for r in (await journal.list_audit(action="stop", since=101.5)).items] == [
            "r4",
            "r2",
        ]
        assert (await journal.list_audit(until=101.0)).items[0].snapshot == {"status": "running"}


async def test_audit_rows_cannot_be_changed(tmp_path: Path) -> None:
    """The audit table refuses UPDATE and DELETE (a trigger), so history cannot be rewritten."""
    path = tmp_path / "j.sqlite3"
    async with await Journal.open(path) as journal:
        rec = await journal.append_audit(
            AuditRecord(
                at=1.0, actor="cli", action="terminate", decision=Decision.ALLOWED, reason="x"
            )
        )
        assert rec.id is not None
    conn = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE audit SET reason = 'y'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM audit")
    finally:
        conn.close()


def _record(at: float, reason: str) -> AuditRecord:
    return AuditRecord(at=at, actor="cli", action="stop", decision=Decision.ALLOWED, reason=reason)


async def test_prune_deletes_old_records_and_audits_itself(tmp_path: Path) -> None:
    """prune_audit removes records before the cutoff only, in one transaction with its own
    record; outside a prune the log stays append-only."""
    async with await Journal.open(tmp_path / "j.sqlite3") as journal:
        for at, reason in ((100.0, "old-1"), (150.0, "old-2"), (300.0, "new")):
            await journal.append_audit(_record(at, reason))
        pruned = await journal.prune_audit(before=200.0, actor="api:alice", now=400.0)
        assert pruned.decision is Decision.PRUNED and pruned.action == "audit_prune"
        assert pruned.snapshot == {"before": 200.0, "pruned": 2}
        items = (await journal.list_audit()).items
        assert [(r.reason, r.actor) for r in items] == [
            ("pruned 2 audit records older than the cutoff", "api:alice"),
            ("new", "cli"),
        ]
    with sqlite3.connect(tmp_path / "j.sqlite3") as conn:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM audit WHERE at < 1000")
        assert conn.execute("SELECT COUNT(*) FROM journal_flags").fetchone() == (0,)
