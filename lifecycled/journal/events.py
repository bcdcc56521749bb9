"""Events of the journal: the audit log, the push outbox and the nonces of signed requests.

**Audit**: append (alone or inside another write) and query; append-only by trigger.

**Outbox**: the push sender reads unsent events in order and marks them sent. Events are
written by triggers (see the migrations) in the same transaction as the change they
describe, so a committed change always has its event and vice versa — but only while push is
on (:meth:`Events.set_push`, the ``push`` row of ``journal_flags``): a journal without push
keeps no outbox. Delivered events are deleted as they are acknowledged, except the newest,
which keeps the sequence position.

**Nonces** of signed destructive requests (SPEC §4): recorded durably, so a replay is
refused even after a restart. A nonce is kept until its signature could no longer pass the
clock-skew check; expired ones are pruned as new ones arrive.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

import attrs

from lifecycled.audit import AuditPage, AuditRecord, Decision
from lifecycled.domain.events import OutboxEvent
from lifecycled.errors import ValidationError
from lifecycled.journal.store import Part

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


def _event(row: sqlite3.Row) -> OutboxEvent:
    return OutboxEvent(
        seq=int(row["seq"]),
        type=str(row["kind"]),
        vmid=row["vmid"],
        payload=json.loads(row["payload"]),
        created_at=float(row["created_at"]),
        attempts=int(row["attempts"]),
    )


def _prune_delivered(conn: sqlite3.Connection) -> None:
    """Delete delivered events; the newest row stays, so the sequence position is kept."""
    conn.execute(
        "DELETE FROM outbox WHERE sent_at IS NOT NULL AND seq < (SELECT MAX(seq) FROM outbox)"
    )


#: Expired nonces deleted per recorded nonce (keeps every transaction short).
_PRUNE_BATCH = 500


class Events(Part):
    """Audit, outbox and nonce verbs (Journal delegates to them)."""

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

    async def unsent_events(self, *, limit: int = 100) -> list[OutboxEvent]:
        """The oldest unsent events, in sequence order."""
        found = await self._store.rows(
            "SELECT seq, vmid, kind, payload, created_at, attempts FROM outbox "
            "WHERE sent_at IS NULL ORDER BY seq LIMIT ?",
            (limit,),
        )
        return [_event(r) for r in found]

    async def set_push(self, *, enabled: bool) -> None:
        """Whether changes write outbox events from now on (the daemon's ``--notify-url``).

        Turning push off keeps undelivered events (a later run with push delivers them) and
        deletes delivered ones.
        """

        def unit(conn: sqlite3.Connection) -> None:
            if enabled:
                conn.execute("INSERT OR IGNORE INTO journal_flags (name, value) VALUES ('push', 1)")
            else:
                conn.execute("DELETE FROM journal_flags WHERE name = 'push'")
                _prune_delivered(conn)

        await self._store.write(unit)

    async def push_enabled(self) -> bool:
        """Whether changes currently write outbox events."""
        return await self._store.one("SELECT 1 FROM journal_flags WHERE name = 'push'") is not None

    async def mark_sent(self, seqs: Sequence[int], *, now: float) -> None:
        """Record that the receiver acknowledged these events, and delete delivered ones."""
        if not seqs:
            return

        def unit(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE outbox SET sent_at = ?, attempts = attempts + 1 WHERE seq = ? AND sent_at IS NULL",
                [(now, s) for s in seqs],
            )
            _prune_delivered(conn)

        await self._store.write(unit)

    async def outbox_size(self) -> int:
        """How many events the outbox holds (delivered or not)."""
        row = await self._store.one("SELECT COUNT(*) AS n FROM outbox")
        return int(row["n"]) if row is not None else 0

    async def note_attempt(self, seqs: Sequence[int]) -> None:
        """Count a failed delivery of these events (they stay unsent)."""
        if not seqs:
            return

        def unit(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE outbox SET attempts = attempts + 1 WHERE seq = ? AND sent_at IS NULL",
                [(s,) for s in seqs],
            )

        await self._store.write(unit)

    async def outbox_position(self) -> tuple[int, int]:
        """``(last_seq, unsent)``: the newest sequence number and how many await delivery."""
        row = await self._store.one(
            "SELECT (SELECT COALESCE(MAX(seq), 0) FROM outbox) AS last_seq, "
            "(SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL) AS unsent",
        )
        return (int(row["last_seq"]), int(row["unsent"])) if row is not None else (0, 0)

    async def prune_outbox(self, *, before: float) -> int:
        """Delete delivered events older than ``before``; how many were deleted."""

        def unit(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < ?", (before,)
            )
            return int(cursor.rowcount)

        return await self._store.write(unit)

    async def remember_nonce(
        self,
        nonce: str,
        key_id: str,
        *,
        now: float,
        expires_at: float,
        on_replay: AuditRecord | None = None,
    ) -> bool:
        """Record ``nonce``; ``False`` when it was already recorded (a replay).

        One transaction: prune a batch of expired nonces, insert this one if absent and,
        on a replay, append ``on_replay`` to the audit log.
        """

        def unit(conn: sqlite3.Connection) -> bool:
            conn.execute(
                "DELETE FROM nonces WHERE nonce IN "
                "(SELECT nonce FROM nonces WHERE expires_at < ? ORDER BY expires_at LIMIT ?)",
                (now, _PRUNE_BATCH),
            )
            cursor = conn.execute(
                "INSERT INTO nonces (nonce, key_id, seen_at, expires_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (nonce) DO NOTHING",
                (nonce, key_id, now, expires_at),
            )
            fresh = cursor.rowcount == 1
            if not fresh and on_replay is not None:
                insert_audit(conn, on_replay)
            return fresh

        return await self._store.write(unit)

    async def nonce_count(self) -> int:
        """How many nonces are remembered (expired ones not yet pruned included)."""
        row = await self._store.one("SELECT count(*) AS n FROM nonces")
        return 0 if row is None else int(row["n"])
