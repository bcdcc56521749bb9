"""Audit verbs of the journal: append (alone or inside another write) and query."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import attrs

from lifecycled.audit import AuditPage, AuditRecord, Decision
from lifecycled.errors import ValidationError
from lifecycled.journal.store import Store

_COLUMNS = "id, at, actor, action, decision, vmid, node, reason, snapshot"


def insert_audit(conn: sqlite3.Connection, rec: AuditRecord) -> int:
    """Append ``rec`` inside the caller's transaction; its new id."""
    cursor = conn.execute(
        "INSERT INTO audit (at, actor, action, decision, vmid, node, reason, snapshot) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            rec.at,
            rec.actor,
            rec.action,
            str(rec.decision),
            rec.vmid,
            rec.node,
            rec.reason,
            json.dumps(rec.snapshot, sort_keys=True, default=str)
            if rec.snapshot is not None
            else None,
        ),
    )
    return int(cursor.lastrowid or 0)


def audit_from_row(row: sqlite3.Row) -> AuditRecord:
    return AuditRecord(
        id=int(row["id"]),
        at=float(row["at"]),
        actor=str(row["actor"]),
        action=str(row["action"]),
        decision=Decision(row["decision"]),
        vmid=row["vmid"],
        node=row["node"],
        reason=str(row["reason"]),
        snapshot=json.loads(row["snapshot"]) if row["snapshot"] else None,
    )


class AuditVerbs:
    """Mixed into :class:`~lifecycled.journal.Journal`."""

    _store: Store

    async def append_audit(self, rec: AuditRecord) -> AuditRecord:
        """Append one audit record in its own transaction; the record with its id."""

        new_id = await self._store.write(lambda conn: insert_audit(conn, rec))
        return attrs.evolve(rec, id=new_id)

    async def prune_audit(self, *, before: float, actor: str, now: float) -> AuditRecord:
        """Delete audit records older than ``before``; the prune's own audit record (its
        snapshot holds the count), written in the same transaction.

        The append-only trigger lets a delete through only below the cutoff this transaction
        sets in ``journal_flags`` (removed again before it commits).
        """

        def unit(conn: sqlite3.Connection) -> AuditRecord:
            conn.execute(
                "INSERT OR REPLACE INTO journal_flags (name, value) "
                "VALUES ('audit_prune_before', ?)",
                (before,),
            )
            cursor = conn.execute("DELETE FROM audit WHERE at < ?", (before,))
            count = int(cursor.rowcount)
            conn.execute("DELETE FROM journal_flags WHERE name = 'audit_prune_before'")
            rec = AuditRecord(
                at=now,
                actor=actor,
                action="audit_prune",
                decision=Decision.PRUNED,
                reason=f"pruned {count} audit records older than the cutoff",
                snapshot={"before": before, "pruned": count},
            )
            return attrs.evolve(rec, id=insert_audit(conn, rec))

        return await self._store.write(unit)

    async def list_audit(
        self,
        *,
        vmid: int | None = None,
        action: str | None = None,
        decision: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 50,
        cursor: int | None = None,
    ) -> AuditPage:
        """Newest first; ``cursor`` is the last id seen. Filters combine with AND."""
        if not 1 <= limit <= 1000:
            raise ValidationError(
                f"limit must be between 1 and 1000, not {limit}", {"limit": "out of range"}
            )
        where: list[str] = []
        params: list[Any] = []
        for column, value in (("vmid", vmid), ("action", action), ("decision", decision)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            where.append("at >= ?")
            params.append(since)
        if until is not None:
            where.append("at < ?")
            params.append(until)
        if cursor is not None:
            where.append("id < ?")
            params.append(cursor)
        sql = f"SELECT {_COLUMNS} FROM audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit + 1)
        found = await self._store.rows(sql, params)
        items = [audit_from_row(r) for r in found[:limit]]
        more = len(found) > limit
        return AuditPage(items=items, next_cursor=items[-1].id if more and items else None)
