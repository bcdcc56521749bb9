"""Helpers for the node lifecycle and signing tests (imported explicitly, not a conftest)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from lifecycled.journal import Journal
from lifecycled.sim import Guest, SimServer


async def manage(db: Path, *guests: Guest, origin: str = "native") -> None:
    """Record ``guests`` as managed in the journal at ``db`` (created if absent).

    Rows are written directly, so these tests depend only on the schema, not on how guests
    are taken under management.
    """
    async with await Journal.open(db):
        pass
    now = time.time()
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT OR REPLACE INTO guests (vmid, node, kind, origin, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(g.vmid, g.node, g.kind, origin, now, now) for g in guests],
        )
    conn.close()


def pick_on(
    server: SimServer, node: str, kind: str, running: bool, *, avoid: set[int] | None = None
) -> Guest:
    """A plain guest (no HA, unprotected, no template, no lock) on ``node``."""
    for guest in sorted(server.sim.guests.values(), key=lambda g: g.vmid):
        if guest.node != node or guest.kind != kind or guest.running != running:
            continue
        if guest.ha is not None or guest.template or guest.lock:
            continue
        if str(guest.config.get("protection", 0)) == "1":
            continue
        if avoid is not None:
            if guest.vmid in avoid:
                continue
            avoid.add(guest.vmid)
        return guest
    raise LookupError(f"no spare {'running' if running else 'stopped'} {kind} guest on {node}")
