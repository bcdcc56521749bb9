"""A submission reads its idempotency key once (issue 12): the daemon's path (with the
guests' shared record) and the CLI's (journal only), for a new key, a deduplicated one, a
conflicting one and a re-armed one — every outcome as before.

Every SQLite statement of every connection is traced (``sqlite3.connect`` wrapped with
``Connection.set_trace_callback``), so the test counts the key lookups the journal really ran.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from engine_support import client_for, fast_settings, manage, pick, seed_guests

from lifecycled.domain.op import Origin
from lifecycled.domain.states import OpState
from lifecycled.engine.runtime import Runtime
from lifecycled.engine.services import Services
from lifecycled.engine.submit import Submission
from lifecycled.errors import Conflict
from lifecycled.journal import Journal
from lifecycled.sim import SimServer

#: A key lookup: ``by_key``, the submission unit's, or the combined submission context's.
KEY_LOOKUP = "idempotency_key = "


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every SQL statement run on a connection opened from now on."""
    seen: list[str] = []
    plain = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn: sqlite3.Connection = plain(*args, **kwargs)
        conn.set_trace_callback(seen.append)
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)
    return seen


async def _lookups(statements: list[str], call: Callable[[], Any]) -> tuple[Any, int]:
    """``call()``'s result and how many key lookups it ran."""
    before = len(statements)
    result = await call()
    return result, sum(KEY_LOOKUP in sql for sql in statements[before:])


async def _fail(journal: Journal, op_id: int, now: float) -> None:
    """Dispatch the op (claim) and end it failed, as a permanent error would."""
    claimed = await journal.claim_next(now=now)
    assert claimed is not None and claimed.id == op_id
    await journal.finish(op_id, OpState.FAILED, now=now, reason="refused")


async def _walk(
    services: Services, journal: Journal, statements: list[str], sub: Submission
) -> list[int]:
    """New key, dedup, conflict, re-arm: the outcomes, and the key lookups each took."""
    first, new = await _lookups(statements, lambda: services.submit(sub))
    assert (first.deduplicated, first.rearmed) == (False, False)
    again, dedup = await _lookups(statements, lambda: services.submit(sub))
    assert again.deduplicated and again.op.id == first.op.id
    other = Submission(**{**_fields(sub), "action": "shutdown"})
    with pytest.raises(Conflict):
        await services.submit(other)
    await _fail(journal, first.op.id, services.clock.now())
    rearmed, rearm = await _lookups(statements, lambda: services.submit(sub))
    assert rearmed.rearmed and rearmed.op.id == first.op.id
    assert rearmed.op.state is OpState.PENDING and rearmed.op.attempts == 0
    page = await journal.list_ops(limit=10)
    assert [op.id for op in page.items] == [first.op.id]  # nothing else was journaled
    return [new, dedup, rearm]


def _fields(sub: Submission) -> dict[str, Any]:
    return {
        "action": sub.action,
        "vmid": sub.vmid,
        "kind": sub.kind,
        "node": sub.node,
        "params": dict(sub.params),
        "idempotency_key": sub.idempotency_key,
        "origin": sub.origin,
        "actor": sub.actor,
    }


async def test_the_daemon_reads_the_key_once(
    sim: SimServer, tmp_path: Path, statements: list[str]
) -> None:
    """With the shared record: one key lookup for a new key and for a deduplicated one
    (answered from that read, no write); a re-arm reads it once more, in its transaction."""
    guest = pick(sim, "qemu", False)
    settings = fast_settings(tmp_path, sim)
    runtime = await Runtime.build(settings, pve=client_for(sim))
    try:
        await manage(runtime, guest)
        sub = Submission(
            action="start",
            vmid=guest.vmid,
            params={},
            idempotency_key="once-daemon",
            origin=Origin.API,
            actor="api:test",
        )
        counts = await _walk(runtime.services, runtime.journal, statements, sub)
    finally:
        await runtime.close()
    assert counts == [1, 1, 2]


async def test_the_cli_reads_the_key_once(
    sim: SimServer, tmp_path: Path, statements: list[str]
) -> None:
    """Journal only (the CLI's services): one key lookup for a new key, a deduplicated one
    and a re-armed one — in the transaction that writes."""
    guest = pick(sim, "qemu", False)
    db = tmp_path / "j.sqlite3"
    await seed_guests(db, [guest])
    async with await Journal.open(db) as journal:
        sub = Submission(
            action="start",
            vmid=guest.vmid,
            kind=str(guest.kind),
            node=guest.node,
            params={},
            idempotency_key="once-cli",
            origin=Origin.CLI,
            actor="cli",
        )
        counts = await _walk(Services.offline(journal, node=guest.node), journal, statements, sub)
    assert counts == [1, 1, 1]
