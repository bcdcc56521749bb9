"""Maintenance: prune, purge of discarded dead letters, online backup, integrity check."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from conftest_journal import T0, raw_rows, to_state

from lifecycled.domain.states import OpState
from lifecycled.errors import JournalError, NotFound
from lifecycled.journal import Journal


async def test_prune_deletes_old_finished_ops_and_their_history(journal: Journal) -> None:
    """prune removes finished ops (and history) before the cutoff, never open ops or live DLQ."""
    keep = {
        s: await to_state(journal, s, vmid=i)
        for i, s in enumerate([OpState.DISPATCHING, OpState.RUNNING, OpState.DEAD_LETTERED])
    }
    gone = [
        await to_state(journal, s, vmid=10 + i)
        for i, s in enumerate([OpState.SUCCEEDED, OpState.FAILED, OpState.CANCELLED])
    ]
    discarded = await to_state(journal, OpState.DEAD_LETTERED, vmid=20)
    await journal.discard(discarded.id, now=T0 + 4, reason="x")
    keep[OpState.PENDING] = await to_state(journal, OpState.PENDING, vmid=30)
    assert await journal.prune(before=T0) == 0
    assert await journal.prune(before=T0 + 1000) == len(gone) + 1
    for op in [*gone, discarded]:
        with pytest.raises(NotFound):
            await journal.get(op.id)
    for op in keep.values():
        assert (await journal.get(op.id)).id == op.id
    ids = {op.id for op in [*gone, discarded]}
    left = {r[0] for r in raw_rows(journal.path, "SELECT DISTINCT op_id FROM op_history")}
    assert not ids & left


async def test_prune_in_batches(journal: Journal) -> None:
    """A prune larger than one batch deletes everything it should."""
    for i in range(1203):
        await to_state(journal, OpState.CANCELLED, vmid=i)
    assert await journal.prune(before=T0 + 100) == 1203
    assert raw_rows(journal.path, "SELECT count(*) FROM ops") == [(0,)]
    assert raw_rows(journal.path, "SELECT count(*) FROM op_history") == [(0,)]


async def test_purge_discarded(journal: Journal) -> None:
    """purge_discarded deletes discarded dead letters (optionally older ones) only."""
    a = await to_state(journal, OpState.DEAD_LETTERED, vmid=1)
    b = await to_state(journal, OpState.DEAD_LETTERED, vmid=2)
    live = await to_state(journal, OpState.DEAD_LETTERED, vmid=3)
    await journal.discard(a.id, now=T0 + 10, reason="x")
    await journal.discard(b.id, now=T0 + 20, reason="x")
    assert await journal.purge_discarded(before=T0 + 15) == 1
    assert await journal.purge_discarded() == 1
    assert [op.id for op in (await journal.list_ops()).items] == [live.id]


async def test_backup_is_a_private_readable_copy(journal: Journal, tmp_path: Path) -> None:
    """backup writes a 0600 copy that opens as a journal with the same ops and history."""
    op = await to_state(journal, OpState.RUNNING)
    dest = tmp_path / "backup.sqlite3"
    await journal.backup(dest)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    async with await Journal.open(dest, create=False, migrate=False) as copy:
        assert await copy.get(op.id) == op
        assert await copy.history(op.id) == await journal.history(op.id)
        assert await copy.integrity_check() == ["ok"]


async def test_backup_refuses_to_overwrite(journal: Journal, tmp_path: Path) -> None:
    """An existing backup destination is left untouched."""
    dest = tmp_path / "exists.sqlite3"
    dest.write_bytes(b"precious")
    with pytest.raises(JournalError, match="already exists"):
        await journal.backup(dest)
    assert dest.read_bytes() == b"precious"


async def test_backup_into_a_missing_folder_fails_cleanly(journal: Journal, tmp_path: Path) -> None:
    """A backup into a folder that does not exist is an OSError and leaves nothing."""
    dest = tmp_path / "no" / "such" / "b.sqlite3"
    with pytest.raises(FileNotFoundError):
        await journal.backup(dest)
    assert not dest.exists()


async def test_integrity_check_ok(journal: Journal) -> None:
    """A sound journal's integrity check is ['ok']."""
    await to_state(journal, OpState.SUCCEEDED)
    assert await journal.integrity_check() == ["ok"]


async def test_audit_table_is_append_only(journal: Journal) -> None:
    """The audit table refuses UPDATE and DELETE (trigger)."""
    import sqlite3

    conn = sqlite3.connect(journal.path)
    try:
        conn.execute(
            "INSERT INTO audit (at, actor, action, decision, reason) VALUES (1, 'cli', 'x', 'y', '')"
        )
        conn.commit()
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE audit SET reason = 'z'")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM audit")
    finally:
        conn.close()
