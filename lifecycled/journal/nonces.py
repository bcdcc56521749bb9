"""Nonces of signed destructive requests (SPEC §4): recorded durably, so a replay is refused
even after a restart. A nonce is kept until its signature could no longer pass the clock-skew
check; expired ones are pruned as new ones arrive.
"""

from __future__ import annotations

import sqlite3

from lifecycled.audit import AuditRecord
from lifecycled.journal.audit import insert_audit
from lifecycled.journal.store import Store

#: Expired nonces deleted per recorded nonce (keeps every transaction short).
_PRUNE_BATCH = 500


class NonceVerbs:
    """Mixed into :class:`~lifecycled.journal.Journal`."""

    _store: Store

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
