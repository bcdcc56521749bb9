"""The journal's node lifecycle and nonce verbs on a real SQLite file (SPEC §4)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from lifecycled.audit import Decision
from lifecycled.domain.node import NodeState
from lifecycled.journal import Journal

T0 = 1_700_000_000.0
DAY = 86400.0


def add_guest(db: Path, vmid: int, node: str, origin: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO guests (vmid, node, kind, origin, created_at, updated_at) "
            "VALUES (?, ?, 'qemu', ?, ?, ?)",
            (vmid, node, origin, T0, T0),
        )


async def test_first_sight_registers_ready_once_and_audits_it(tmp_path: Path) -> None:
    """ensure_node inserts the row as ready with first_seen, once; later calls keep it."""
    async with await Journal.open(tmp_path / "j.sqlite3") as journal:
        assert await journal.get_node("pve1") is None
        first = await journal.ensure_node("pve1", now=T0, actor="runtime")
        again = await journal.ensure_node("pve1", now=T0 + 50, actor="runtime")
        assert first == again
        assert first.state is NodeState.READY and first.first_seen == T0
        audit = (await journal.list_audit()).items
        assert [(r.action, r.decision) for r in audit] == [("register", Decision.NODE_TRANSITION)]


async def test_transitions_are_validated_and_audited_in_the_same_write(tmp_path: Path) -> None:
    """A legal move updates the row and appends one audit record; an illegal one only audits."""
    async with await Journal.open(tmp_path / "j.sqlite3") as journal:
        await journal.ensure_node("pve1", now=T0, actor="runtime")
        drained = await journal.transition_node(
            "pve1", NodeState.DRAINING, now=T0 + 1, actor="cli", action="drain", reason="maint"
        )
        assert drained.changed and drained.previous is NodeState.READY
        assert drained.record.state is NodeState.DRAINING and drained.record.since == T0 + 1
        same = await journal.transition_node(
            "pve1", NodeState.DRAINING, now=T0 + 2, actor="cli", action="drain", reason="again"
        )
        assert not same.changed and same.refusal is None and same.record.since == T0 + 1
        decommissioned = await journal.decommission_node(
            "pve1", now=T0 + 10 * DAY, actor="cli", min_age=DAY, system=False
        )
        assert decommissioned.changed
        refused = await journal.transition_node(
            "pve1",
            NodeState.ACTIVE,
            now=T0 + 11 * DAY,
            actor="api:alice",
            action="undrain",
            reason="",
        )
        assert refused.refusal is not None and refused.refusal.code == "node_decommissioned"
        assert (await journal.get_node("pve1")).state is NodeState.DECOMMISSIONED  # type: ignore[union-attr]
        audit = (await journal.list_audit()).items
        assert [(r.action, r.decision, r.actor) for r in audit] == [
            ("undrain", Decision.REFUSED, "api:alice"),
            ("decommission", Decision.NODE_TRANSITION, "cli"),
            ("drain", Decision.NODE_TRANSITION, "cli"),
            ("register", Decision.NODE_TRANSITION, "runtime"),
        ]
        assert audit[2].snapshot is not None
        assert audit[2].snapshot["from"] == "ready" and audit[2].snapshot["to"] == "draining"


async def test_transition_verb_does_not_decommission(tmp_path: Path) -> None:
    """Decommissioning goes through decommission_node, which checks guests and age."""
    async with await Journal.open(tmp_path / "j.sqlite3") as journal:
        with pytest.raises(ValueError, match="decommission_node"):
            await journal.transition_node(
                "pve1", NodeState.DECOMMISSIONED, now=T0, actor="cli", action="x", reason=""
            )


async def test_decommission_counts_managed_guests_and_live_ones(tmp_path: Path) -> None:
    """Native and adopted guests on the node and live vmids block it; others do not."""
    db = tmp_path / "j.sqlite3"
    async with await Journal.open(db) as journal:
        await journal.ensure_node("pve1", now=T0, actor="runtime")
        await journal.transition_node(
            "pve1", NodeState.DRAINING, now=T0, actor="cli", action="drain", reason=""
        )
    add_guest(db, 101, "pve1", "native")
    add_guest(db, 102, "pve1", "adopted")
    add_guest(db, 103, "pve1", "discovered")
    add_guest(db, 104, "pve1", "released")
    add_guest(db, 105, "pve2", "native")
    async with await Journal.open(db) as journal:
        change = await journal.decommission_node(
            "pve1",
            now=T0 + 30 * DAY,
            actor="cli",
            min_age=DAY,
            system=False,
            live_guests=[101, 200],
        )
        assert change.refusal is not None and change.refusal.code == "guests_remain"
        assert change.guests == (101, 102, 200)
        assert change.record.state is NodeState.DRAINING
        rec = (await journal.list_audit(decision="refused")).items[0]
        assert rec.snapshot is not None and rec.snapshot["guests"] == [101, 102, 200]
        assert rec.reason.startswith("guests_remain: 3 guest(s)")


async def test_system_mark_is_audited_and_refuses_decommission(tmp_path: Path) -> None:
    """mark_system_node changes the row once (audited); a system node is never decommissioned."""
    async with await Journal.open(tmp_path / "j.sqlite3") as journal:
        await journal.ensure_node("pve1", now=T0, actor="runtime")
        marked = await journal.mark_system_node("pve1", True, now=T0, actor="runtime")
        assert marked.is_system
        await journal.mark_system_node("pve1", True, now=T0, actor="runtime")  # no change
        await journal.transition_node(
            "pve1", NodeState.DRAINING, now=T0, actor="cli", action="drain", reason=""
        )
        change = await journal.decommission_node(
            "pve1", now=T0 + 30 * DAY, actor="cli", min_age=DAY, system=False
        )
        assert change.refusal is not None and change.refusal.code == "system_node"
        actions = [r.action for r in (await journal.list_audit()).items]
        assert actions.count("system_node") == 1


async def test_a_nonce_is_refused_the_second_time_even_after_reopening(tmp_path: Path) -> None:
    """remember_nonce is insert-if-absent and durable: a reopened journal still refuses it."""
    db = tmp_path / "j.sqlite3"
    async with await Journal.open(db) as journal:
        assert await journal.remember_nonce("nonce-aaaaaaaaaaaa", "k1", now=T0, expires_at=T0 + 300)
        assert not await journal.remember_nonce(
            "nonce-aaaaaaaaaaaa", "k1", now=T0 + 1, expires_at=T0 + 301
        )
    async with await Journal.open(db) as journal:
        assert not await journal.remember_nonce(
            "nonce-aaaaaaaaaaaa", "k2", now=T0 + 2, expires_at=T0 + 302
        )
        assert await journal.nonce_count() == 1


async def test_a_replay_appends_its_audit_record_in_the_same_write(tmp_path: Path) -> None:
    """on_replay is written only when the nonce was already there."""
    from lifecycled.audit import AuditRecord

    rec = AuditRecord(
        at=T0, actor="api:bob", action="terminate", decision=Decision.REFUSED, reason="replay"
    )
    async with await Journal.open(tmp_path / "j.sqlite3") as journal:
        await journal.remember_nonce(
            "nonce-bbbbbbbbbbbb", "k1", now=T0, expires_at=T0 + 9, on_replay=rec
        )
        assert (await journal.list_audit()).items == []
        await journal.remember_nonce(
            "nonce-bbbbbbbbbbbb", "k1", now=T0, expires_at=T0 + 9, on_replay=rec
        )
        assert [r.reason for r in (await journal.list_audit()).items] == ["replay"]


async def test_expired_nonces_are_pruned_as_new_ones_arrive(tmp_path: Path) -> None:
    """Nonces past their expiry are deleted when the next nonce is recorded."""
    db = tmp_path / "j.sqlite3"
    async with await Journal.open(db) as journal:
        for i in range(5):
            await journal.remember_nonce(f"nonce-old-{i:08d}", "k1", now=T0, expires_at=T0 + 10)
        await journal.remember_nonce("nonce-keep-0000000", "k1", now=T0, expires_at=T0 + 1000)
        assert await journal.nonce_count() == 6
        await journal.remember_nonce("nonce-new-00000000", "k1", now=T0 + 11, expires_at=T0 + 311)
        assert await journal.nonce_count() == 2
    with sqlite3.connect(db) as conn:
        left = {row[0] for row in conn.execute("SELECT nonce FROM nonces")}
    assert left == {"nonce-keep-0000000", "nonce-new-00000000"}
