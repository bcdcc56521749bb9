"""Outbox verbs: the push sender reads unsent events in order and marks them sent.

Events are written by triggers (see the migrations) in the same transaction as the change
they describe, so a committed change always has its event and vice versa — but only while
push is on (:meth:`OutboxVerbs.set_push`, the ``push`` row of ``journal_flags``): a journal
without push keeps no outbox. Delivered events are deleted as they are acknowledged, except
the newest, which keeps the sequence position.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

import aiosqlite

from lifecycled.domain.events import OutboxEvent
from lifecycled.journal.db import Database, one, rows


def _event(row: sqlite3.Row) -> OutboxEvent:
    return OutboxEvent(
        seq=int(row["seq"]),
        type=str(row["kind"]),
        vmid=row["vmid"],
        payload=json.loads(row["payload"]),
        created_at=float(row["created_at"]),
        attempts=int(row["attempts"]),
    )


async def _prune_delivered(conn: aiosqlite.Connection) -> None:
    """Delete delivered events; the newest row stays, so the sequence position is kept."""
    await conn.execute(
        "DELETE FROM outbox WHERE sent_at IS NOT NULL AND seq < (SELECT MAX(seq) FROM outbox)"
    )


class OutboxVerbs:
    """Mixed into :class:`~lifecycled.journal.Journal`."""

    _db: Database

    async def unsent_events(self, *, limit: int = 100) -> list[OutboxEvent]:
        """The oldest unsent events, in sequence order."""

        async def unit(conn: aiosqlite.Connection) -> list[sqlite3.Row]:
            return await rows(
                conn,
                "SELECT seq, vmid, kind, payload, created_at, attempts FROM outbox "
                "WHERE sent_at IS NULL ORDER BY seq LIMIT ?",
                (limit,),
            )

        return [_event(r) for r in await self._db.read(unit)]

    async def set_push(self, *, enabled: bool) -> None:
        """Whether changes write outbox events from now on (the daemon's ``--notify-url``).

        Turning push off keeps undelivered events (a later run with push delivers them) and
        deletes delivered ones.
        """

        async def unit(conn: aiosqlite.Connection) -> None:
            if enabled:
                await conn.execute(
                    "INSERT OR IGNORE INTO journal_flags (name, value) VALUES ('push', 1)"
                )
            else:
                await conn.execute("DELETE FROM journal_flags WHERE name = 'push'")
                await _prune_delivered(conn)

        await self._db.write(unit)

    async def push_enabled(self) -> bool:
        """Whether changes currently write outbox events."""

        async def unit(conn: aiosqlite.Connection) -> sqlite3.Row | None:
            return await one(conn, "SELECT 1 FROM journal_flags WHERE name = 'push'")

        return await self._db.read(unit) is not None

    async def mark_sent(self, seqs: Sequence[int], *, now: float) -> None:
        """Record that the receiver acknowledged these events, and delete delivered ones."""
        if not seqs:
            return

        async def unit(conn: aiosqlite.Connection) -> None:
            await conn.executemany(
                "UPDATE outbox SET sent_at = ?, attempts = attempts + 1 WHERE seq = ? AND sent_at IS NULL",
                [(now, s) for s in seqs],
            )
            await _prune_delivered(conn)

        await self._db.write(unit)

    async def outbox_size(self) -> int:
        """How many events the outbox holds (delivered or not)."""

        async def unit(conn: aiosqlite.Connection) -> sqlite3.Row | None:
            return await one(conn, "SELECT COUNT(*) AS n FROM outbox")

        row = await self._db.read(unit)
        return int(row["n"]) if row is not None else 0

    async def note_attempt(self, seqs: Sequence[int]) -> None:
        """Count a failed delivery of these events (they stay unsent)."""
        if not seqs:
            return

        async def unit(conn: aiosqlite.Connection) -> None:
            await conn.executemany(
                "UPDATE outbox SET attempts = attempts + 1 WHERE seq = ? AND sent_at IS NULL",
                [(s,) for s in seqs],
            )

        await self._db.write(unit)

    async def outbox_position(self) -> tuple[int, int]:
        """``(last_seq, unsent)``: the newest sequence number and how many await delivery."""

        async def unit(conn: aiosqlite.Connection) -> sqlite3.Row | None:
            return await one(
                conn,
                "SELECT (SELECT COALESCE(MAX(seq), 0) FROM outbox) AS last_seq, "
                "(SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL) AS unsent",
            )

        row = await self._db.read(unit)
        return (int(row["last_seq"]), int(row["unsent"])) if row is not None else (0, 0)

    async def prune_outbox(self, *, before: float) -> int:
        """Delete delivered events older than ``before``; how many were deleted."""

        async def unit(conn: aiosqlite.Connection) -> int:
            cursor = await conn.execute(
                "DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < ?", (before,)
            )
            return int(cursor.rowcount)

        return await self._db.write(unit)
