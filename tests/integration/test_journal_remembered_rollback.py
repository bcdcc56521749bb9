"""Attacks on what the journal's writer remembers by the writer's own
failures: a COMMIT that fails after every unit ran, a unit undone in the savepoint pass,
a caller cancelled while its unit is in the batch, more ops than the writer remembers, a
maintenance statement outside the group commits. What it remembers (the op records and
each node's in-flight count) must stay what the file holds."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest
from conftest_journal import T0, raw_rows, request, to_state

from lifecycled.domain.op import GuestKind, GuestRef, Origin
from lifecycled.domain.states import OpState
from lifecycled.errors import JournalError
from lifecycled.journal import Journal, SubmitRequest, ops

pytestmark = pytest.mark.timeout(60)


def _orphan_history_at_commit(conn: sqlite3.Connection) -> None:
    """A unit whose write breaks a foreign key checked only at COMMIT: the batch's COMMIT
    fails (SQLite keeps the transaction open; the writer rolls it back)."""
    conn.execute("PRAGMA defer_foreign_keys = ON")
    conn.execute(
        "INSERT INTO op_history (op_id, at, from_state, to_state, reason) "
        "VALUES (999999, 0, NULL, 'pending', 'orphan')"
    )


async def test_a_claim_whose_commit_failed_does_not_count_against_the_node_cap(
    tmp_path: Path,
) -> None:
    """A claim (node_cap=1) shares a batch whose COMMIT fails: nothing committed, so the next
    claim with node_cap=1 takes the same op as attempt 1."""
    db = tmp_path / "j.sqlite3"
    async with await Journal.open(db) as journal:
        op = (await journal.submit(request("k", vmid=101), now=T0)).op
        assert await journal.claim_next(now=T0 - 1, node_cap=1) is None  # counted: 0
        outcomes = await asyncio.gather(
            journal.claim_next(now=T0 + 1, node_cap=1),
            journal._store.write(_orphan_history_at_commit),
            return_exceptions=True,
        )
        assert all(isinstance(o, JournalError) for o in outcomes), outcomes
        assert raw_rows(db, "SELECT state FROM ops WHERE id = ?", (op.id,)) == [("pending",)]
        claimed = await journal.claim_next(now=T0 + 2, node_cap=1)
        assert claimed is not None and (claimed.id, claimed.attempts) == (op.id, 1)
        assert claimed == await journal.get(op.id)


async def test_a_task_id_whose_commit_failed_is_not_remembered(tmp_path: Path) -> None:
    """record_upid shares a batch whose COMMIT fails: the op is still dispatching, so the
    next record_upid journals its own task (not refused, not a no-op)."""
    db = tmp_path / "j.sqlite3"
    async with await Journal.open(db) as journal:
        op = await to_state(journal, OpState.DISPATCHING)
        outcomes = await asyncio.gather(
            journal.record_upid(op.id, "UPID:pve1:00000001:lost:", now=T0 + 2),
            journal._store.write(_orphan_history_at_commit),
            return_exceptions=True,
        )
        assert all(isinstance(o, JournalError) for o in outcomes), outcomes
        running = await journal.record_upid(op.id, "UPID:pve1:00000002:kept:", now=T0 + 3)
        assert running.upid_text == "UPID:pve1:00000002:kept:"
        assert running == await journal.get(op.id)
    assert raw_rows(db, "SELECT upid FROM op_history WHERE upid IS NOT NULL") == [
        ("UPID:pve1:00000002:kept:",)
    ]


async def test_a_unit_undone_in_the_savepoint_pass_leaves_the_count_exact(
    tmp_path: Path,
) -> None:
    """A unit claims and fails after writing (the batch runs again under savepoints, the
    unit undone); a claim in the same batch takes the op: exactly one op is in flight on
    the node, so node_cap=1 refuses the next and a finish frees it."""
    db = tmp_path / "j.sqlite3"
    async with await Journal.open(db) as journal:
        first = (await journal.submit(request("a", vmid=101), now=T0)).op
        second = (await journal.submit(request("b", vmid=102), now=T0)).op
        assert await journal.claim_next(now=T0 - 1, node_cap=1) is None  # counted: 0

        def claims_then_fails(conn: sqlite3.Connection) -> None:
            assert ops.claim(conn, now=T0 + 1, node_cap=1, nodes=None) is not None
            raise RuntimeError("failed after writing")

        outcomes = await asyncio.gather(
            journal._store.write(claims_then_fails),
            journal.claim_next(now=T0 + 1, node_cap=1),
            return_exceptions=True,
        )
        assert isinstance(outcomes[0], RuntimeError)
        claimed = outcomes[1]
        assert not isinstance(claimed, BaseException) and claimed is not None
        assert claimed.id == first.id and claimed == await journal.get(first.id)
        assert await journal.claim_next(now=T0 + 2, node_cap=1) is None
        await journal.record_upid(first.id, "UPID:pve1:00000001:a:", now=T0 + 3)
        await journal.finish(first.id, OpState.SUCCEEDED, now=T0 + 4, reason="OK")
        after = await journal.claim_next(now=T0 + 5, node_cap=1)
        assert after is not None and after.id == second.id


async def test_a_claim_whose_caller_was_cancelled_in_the_batch_is_counted(
    tmp_path: Path,
) -> None:
    """A claim's caller is cancelled while its unit runs in the writer thread: the claim
    commits, counts against node_cap=1, and the op it took is what later verbs see."""
    db = tmp_path / "j.sqlite3"
    async with await Journal.open(db) as journal:
        first = (await journal.submit(request("a", vmid=101), now=T0)).op
        await journal.submit(request("b", vmid=102), now=T0)
        started, release = threading.Event(), threading.Event()

        def holds_the_batch(conn: sqlite3.Connection) -> None:
            started.set()
            release.wait(10)

        hold = asyncio.ensure_future(journal._store.write(holds_the_batch))
        claim = asyncio.ensure_future(journal.claim_next(now=T0 + 1, node_cap=1))
        await asyncio.to_thread(started.wait, 10)
        claim.cancel()
        release.set()
        await hold
        with pytest.raises(asyncio.CancelledError):
            await claim
        assert (await journal.get(first.id)).state is OpState.DISPATCHING
        assert await journal.claim_next(now=T0 + 2, node_cap=1) is None
        running = await journal.record_upid(first.id, "UPID:pve1:00000001:a:", now=T0 + 3)
        assert running.attempts == 1 and running == await journal.get(first.id)


async def test_more_ops_than_the_writer_remembers_keep_the_cap_and_the_records(
    tmp_path: Path,
) -> None:
    """One unit submits more ops than the writer remembers (it forgets them all at the
    limit): node_cap=2 still takes two ops on the node, not three, and each claimed op is
    its row."""
    db = tmp_path / "j.sqlite3"
    many = int(getattr(ops, "_REMEMBERED", 4096)) + 5  # (main remembers nothing)
    async with await Journal.open(db) as journal:
        assert await journal.claim_next(now=T0 - 1, node_cap=2) is None  # counted: 0

        def floods(conn: sqlite3.Connection) -> None:
            for vmid in range(1000, 1000 + many):
                req = SubmitRequest(
                    idempotency_key=f"k{vmid}",
                    action="start",
                    guest=GuestRef(node="pve1", kind=GuestKind.QEMU, vmid=vmid),
                    params={},
                    origin=Origin.API,
                )
                ops.submit(conn, req, now=T0)

        await journal._store.write(floods)
        claimed = [await journal.claim_next(now=T0 + 1, node_cap=2) for _ in range(3)]
        assert claimed[2] is None
        for op in claimed[:2]:
            assert op is not None and op == await journal.get(op.id)
    assert raw_rows(db, "SELECT count(*) FROM ops WHERE phase = 2") == [(2,)]


async def test_a_maintenance_statement_ending_an_in_flight_op_frees_the_node(
    tmp_path: Path,
) -> None:
    """A statement outside the group commits (maintenance on the writer's own connection)
    fails the op in flight on pve1: node_cap=1 then takes the next op there."""
    async with await Journal.open(tmp_path / "j.sqlite3") as journal:
        first = await to_state(journal, OpState.RUNNING, vmid=101)
        await journal.submit(request("b", vmid=102), now=T0 + 1)
        assert await journal.claim_next(now=T0 + 2, node_cap=1) is None

        def maintenance(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE ops SET state = 'failed' WHERE id = ?", (first.id,))

        await journal._store.writer.call(maintenance)
        after = await journal.claim_next(now=T0 + 3, node_cap=1)
        assert after is not None and after.guest.vmid == 102


async def test_a_reopened_journal_reads_what_another_process_wrote_meanwhile(
    tmp_path: Path,
) -> None:
    """Closed, changed by another journal, opened again: the op is read from its row."""
    db = tmp_path / "j.sqlite3"
    async with await Journal.open(db) as journal:
        op = await to_state(journal, OpState.DISPATCHING)
    async with await Journal.open(db) as other:
        await other.record_upid(op.id, "UPID:pve1:00000001:there:", now=T0 + 2)
    async with await Journal.open(db) as journal:
        done = await journal.finish(op.id, OpState.SUCCEEDED, now=T0 + 3, reason="OK")
        assert done.upid_text == "UPID:pve1:00000001:there:"
        assert done == await journal.get(op.id)


async def test_a_full_disk_in_the_batch_leaves_the_count_and_records_as_the_file_says(
    tmp_path: Path,
) -> None:
    """A claim (node_cap=1) shares a batch with a unit that runs out of space (the file may
    not grow): whether SQLite drops the whole transaction or only that statement, what the
    writer then claims and reads is what the file holds."""
    db = tmp_path / "j.sqlite3"
    async with await Journal.open(db) as journal:
        first = (await journal.submit(request("a", vmid=101), now=T0)).op
        second = (await journal.submit(request("b", vmid=102), now=T0)).op
        assert await journal.claim_next(now=T0 - 1, node_cap=1) is None  # counted: 0

        def fills_the_disk(conn: sqlite3.Connection) -> None:
            (pages,) = conn.execute("PRAGMA page_count").fetchone()
            conn.execute(f"PRAGMA max_page_count = {int(pages)}")
            try:
                conn.execute(
                    "INSERT INTO op_history (op_id, at, from_state, to_state, reason) "
                    "VALUES (?, 0, NULL, 'pending', ?)",
                    (second.id, "x" * 2_000_000),
                )
            finally:
                conn.execute("PRAGMA max_page_count = 1073741823")

        outcomes = await asyncio.gather(
            journal.claim_next(now=T0 + 1, node_cap=1),
            journal._store.write(fills_the_disk),
            return_exceptions=True,
        )
        assert isinstance(outcomes[1], Exception), outcomes
        (state,) = raw_rows(db, "SELECT state FROM ops WHERE id = ?", (first.id,))[0]
        again = await journal.claim_next(now=T0 + 2, node_cap=1)
        if state == "dispatching":  # only the full statement was undone: the claim stands
            assert again is None
            assert await journal.get(first.id) == outcomes[0]
        else:  # the whole transaction was lost: nothing is in flight
            assert isinstance(outcomes[0], Exception), outcomes
            assert again is not None and (again.id, again.attempts) == (first.id, 1)
        running = await journal.record_upid(first.id, "UPID:pve1:00000001:a:", now=T0 + 3)
        assert running.attempts == 1 and running == await journal.get(first.id)
