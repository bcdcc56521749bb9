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
