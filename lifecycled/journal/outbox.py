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

from lifecycled.domain.events import OutboxEvent
from lifecycled.journal.store import Store


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


class OutboxVerbs:
    """Mixed into :class:`~lifecycled.journal.Journal`."""

    _store: Store

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
