"""Attacks on what the journal's writer remembers through the records it
hands out: the op a verb returns is the one the writer remembers and reads again in its
next unit instead of the row. Every verb's record must be exactly its row (every field,
times given as ints included), and a caller's handling of a returned record must not
change what the journal writes next."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from conftest_journal import BOOM, DENIED, managed_guest, request, to_state

from lifecycled.audit import AuditRecord, Decision
from lifecycled.domain.op import Op
from lifecycled.domain.states import OpState
from lifecycled.journal import Journal, ops

pytestmark = pytest.mark.timeout(60)

#: Whole seconds, as an int: the record must read as the REAL column does.
N0 = 1_700_000_000


async def _remembered(journal: Journal, op_id: int) -> Op:
    """The op as the writer's next unit reads it (what it remembers, else its row)."""
    return await journal._store.write(lambda conn: ops.load(conn, op_id))


async def _same(journal: Journal, op: Op) -> None:
    row = await journal.get(op.id)  # the reader decodes the row
    assert op == row
    assert await _remembered(journal, op.id) == row


async def test_every_verb_returns_and_remembers_exactly_its_row(tmp_path: Path) -> None:
    """submit, claim, UPID, requeue (ambiguous, with an error), defer with a child, note
    stuck, adopt a task, dead letter, retry, fail, re-arm, cancel, discard: each returned
    record, and what the writer then reads, equals the row."""
    async with await Journal.open(tmp_path / "j.sqlite3") as j:
        sub = await j.submit(request("k", vmid=101, params={"timeout": 30, "a": [1, 2]}), now=N0)
        await _same(j, sub.op)
        op = await j.claim_next(now=N0 + 1)
        assert op is not None
        await _same(j, op)
        await _same(j, await j.record_upid(op.id, "UPID:pve1:00000001:a:", now=N0 + 2))
        await _same(
            j,
            await j.requeue(
                op.id, now=N0 + 3, next_attempt_at=N0 + 4, reason="r", error=BOOM, ambiguous=True
            ),
        )
        op = await j.claim_next(now=N0 + 5)
        assert op is not None
        await _same(j, op)
        deferred, child = await j.defer(
            op.id, now=N0 + 6, next_attempt_at=N0 + 7, reason="d", child=request("c", vmid=102)
        )
        assert child is not None
        await _same(j, deferred)
        await _same(j, child)
        op = await j.claim_next(now=N0 + 8)
        assert op is not None
        assert await j.note_stuck(op.id, now=N0 + 9, reason="stuck")
        await _same(j, await j.get(op.id))
        await _same(
            j,
            await j.set_upid_in_flight(
                op.id, "UPID:pve1:00000002:b:", now=N0 + 10, reason="adopted"
            ),
        )
        await _same(j, await j.dead_letter(op.id, now=N0 + 11, reason="gave up", error=BOOM))
        await _same(j, await j.retry(op.id, now=N0 + 12, reason="operator"))
        op = await j.claim_next(now=N0 + 13)
        assert op is not None
        await _same(j, op)
        await _same(j, await j.record_upid(op.id, "UPID:pve1:00000003:c:", now=N0 + 14))
        failed = await j.finish(
            op.id, OpState.FAILED, now=N0 + 15, reason="task failed", exitstatus="", error=DENIED
        )
        await _same(j, failed)
        rearmed = await j.submit(
            request("k", vmid=101, params={"a": [1, 2], "timeout": 30}), now=N0 + 16
        )
        assert rearmed.rearmed
        await _same(j, rearmed.op)
        await _same(j, await j.cancel(op.id, now=N0 + 17, reason="changed my mind"))
        dead = await to_state(j, OpState.DEAD_LETTERED, vmid=103)
        await _same(j, await j.discard(dead.id, now=N0 + 18, reason="d"))


async def test_a_success_after_a_requeued_error_clears_it_as_the_row_does(
    tmp_path: Path,
) -> None:
    """A success without an error after a requeue with one: the record's error and
    exit status are the row's."""
    async with await Journal.open(tmp_path / "j.sqlite3") as j:
        op = await to_state(j, OpState.RUNNING)
        await j.requeue(op.id, now=N0 + 3, next_attempt_at=N0 + 3, reason="r", error=BOOM)
        again = await j.claim_next(now=N0 + 4)
        assert again is not None
        await j.record_upid(op.id, "UPID:pve1:00000009:z:", now=N0 + 5)
        done = await j.finish(op.id, OpState.SUCCEEDED, now=N0 + 6, reason="OK", exitstatus="OK")
        await _same(j, done)
        assert done.error is None


async def test_a_caller_changing_a_returned_records_params_does_not_change_the_journal(
    tmp_path: Path,
) -> None:
    """A caller tries to edit the params of the op claim_next returned (say, to build its
    request): refused (TypeError); the journal's finish records the op's journaled params,
    and the guest a migrate moved is on the node the op journaled."""
    db = tmp_path / "j.sqlite3"
    async with await Journal.open(db) as j:
        audit = AuditRecord(
            at=N0, actor="t", action="manage", decision=Decision.MANAGED, reason="t", vmid=101
        )
        await j.take_guest(managed_guest(101, at=N0), audit=audit, now=N0)
        sub = await j.submit(request("m", action="migrate", params={"target": "pve2"}), now=N0)
        claimed = await j.claim_next(now=N0 + 1)
        assert claimed is not None and claimed.id == sub.op.id
        with pytest.raises(TypeError):
            claimed.params["target"] = "pve9"  # the caller's own copy, it thinks
        await j.record_upid(claimed.id, "UPID:pve1:00000001:m:", now=N0 + 2)
        done = await j.finish(claimed.id, OpState.SUCCEEDED, now=N0 + 3, reason="OK")
        assert done.params == {"target": "pve2"}
        assert done == await j.get(claimed.id)
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT node FROM guests WHERE vmid = 101").fetchall() == [("pve2",)]
    finally:
        conn.close()


async def test_a_key_added_to_the_empty_params_of_a_returned_record_is_not_written(
    tmp_path: Path,
) -> None:
    """A caller adding a key to the empty params of the op submit returned is refused and
    changes nothing the writer remembers: the op claimed, given its UPID and finished keeps
    empty params."""
    async with await Journal.open(tmp_path / "j.sqlite3") as j:
        sub = await j.submit(request("e", vmid=101), now=N0)
        assert sub.op.params == {}
        with pytest.raises(TypeError):
            sub.op.params["timeout"] = 1  # the caller's own copy, it thinks
        claimed = await j.claim_next(now=N0 + 1)
        assert claimed is not None and claimed.params == {}
        with pytest.raises(TypeError):
            claimed.params.update(force=True)
        await j.record_upid(claimed.id, "UPID:pve1:00000001:e:", now=N0 + 2)
        done = await j.finish(claimed.id, OpState.SUCCEEDED, now=N0 + 3, reason="OK")
        assert done.params == {}
        assert done == await j.get(claimed.id)
