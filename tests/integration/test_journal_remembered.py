"""The writer reads an op it wrote itself from what it remembers, not from its row — and
forgets whenever that may no longer be what the file holds (another connection committed,
a unit's or a transaction's changes were rolled back)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from conftest_journal import T0, manage_audit, managed_guest, raw_rows, request, to_state

from lifecycled.domain.guests import desired_for
from lifecycled.domain.lifecycle import Verb
from lifecycled.domain.states import OpState
from lifecycled.errors import UpidTaken
from lifecycled.journal import Journal, ops

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every SQL statement run on a connection opened from now on (triggers' repeats of
    the statement that fired them are left out)."""
    seen: list[str] = []
    plain = sqlite3.connect

    def note(sql: str) -> None:
        if not seen or seen[-1] != sql:
            seen.append(sql)

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn: sqlite3.Connection = plain(*args, **kwargs)
        conn.set_trace_callback(note)
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)
    return seen


_RUNNING = desired_for("start")


def _history(path: Path, op_id: int) -> list[tuple[Any, ...]]:
    return raw_rows(
        path,
        "SELECT from_state, to_state, attempt, upid FROM op_history WHERE op_id = ? ORDER BY id",
        (op_id,),
    )


async def test_an_op_another_connection_changed_is_read_again(tmp_path: Path) -> None:
    """Another journal (another process) requeues, claims and re-dispatches a running op:
    this writer's finish then records the attempt and the task the row holds now, not the
    ones it wrote itself (the states match: only the row says which attempt it is)."""
    db = tmp_path / "j.sqlite3"
    async with await Journal.open(db) as mine:
        op = await to_state(mine, OpState.RUNNING)
        async with await Journal.open(db) as other:
            await other.requeue(op.id, now=T0 + 3, next_attempt_at=T0 + 3, reason="elsewhere")
            again = await other.claim_next(now=T0 + 4)
            assert again is not None and again.id == op.id
            await other.record_upid(op.id, "UPID:pve1:00000002:second:", now=T0 + 5)
        done = await mine.finish(op.id, OpState.SUCCEEDED, now=T0 + 6, reason="OK")
        assert (done.attempts, done.upid_text) == (2, "UPID:pve1:00000002:second:")
        assert done == await mine.get(op.id)
    assert _history(db, op.id)[-1] == ("running", "succeeded", 2, "UPID:pve1:00000002:second:")


async def test_a_rolled_back_change_is_not_remembered(tmp_path: Path) -> None:
    """A unit records a task id and then fails: its change is rolled back, and the next
    record_upid takes the op from the row (still dispatching), not from what the failed
    unit wrote."""
    async with await Journal.open(tmp_path / "j.sqlite3") as journal:
        op = await to_state(journal, OpState.DISPATCHING)

        def records_then_fails(conn: sqlite3.Connection) -> None:
            ops.take_upid(conn, op.id, "UPID:pve1:1:gone:", Verb.RECORD_UPID, now=T0, reason="r")
            raise RuntimeError("failed after writing")

        outcomes = await asyncio.gather(
            journal._store.write(records_then_fails),
            journal.submit(request(None, vmid=502), now=T0),
            return_exceptions=True,
        )
        assert isinstance(outcomes[0], RuntimeError)
        assert (await journal.get(op.id)).state is OpState.DISPATCHING
        running = await journal.record_upid(op.id, "UPID:pve1:2:kept:", now=T0 + 3)
        assert (running.state, running.upid_text) == (OpState.RUNNING, "UPID:pve1:2:kept:")
        assert running == await journal.get(op.id)


async def test_a_taken_upid_is_refused_for_an_op_read_from_its_row(tmp_path: Path) -> None:
    """After a reopen (nothing remembered) the holder is still found, in another op's row
    or in its history only."""
    db = tmp_path / "j.sqlite3"
    async with await Journal.open(db) as journal:
        holder = await to_state(journal, OpState.RUNNING, vmid=101)
        requeued = await to_state(journal, OpState.RUNNING, vmid=102)
        await journal.requeue(requeued.id, now=T0 + 3, next_attempt_at=T0 + 9, reason="r")
        taker = await to_state(journal, OpState.DISPATCHING, vmid=103)
    for taken, by in ((holder.upid_text, holder.id), (requeued.upid_text, requeued.id)):
        assert taken is not None
        async with await Journal.open(db) as journal:
            with pytest.raises(UpidTaken) as refused:
                await journal.record_upid(taker.id, taken, now=T0 + 4)
            assert refused.value.holder == by
            assert await journal.get(taker.id) == taker


async def test_the_lifecycle_reads_no_op_row_the_writer_wrote(
    tmp_path: Path, statements: list[str]
) -> None:
    """submit → claim → UPID → finish runs 12 statements in the writer: the submission's one
    read and its three writes, the claim's query and its two writes, two writes for the
    UPID (its holder check inside the UPDATE), three for the finish — no op row is read
    back after the claim, and the node cap is checked without counting the node's ops."""
    async with await Journal.open(tmp_path / "j.sqlite3") as journal:
        for vmid in (101, 102):
            await journal.take_guest(managed_guest(vmid), audit=manage_audit(vmid), now=T0)
            before = len(statements)  # the second op's: the node's count is known by then
            sub = await journal.submit_guest_op(
                request(f"k{vmid}", vmid=vmid), now=T0, desired=_RUNNING
            )
            claimed = await journal.claim_next(now=T0 + 1, node_cap=8)
            assert claimed is not None and claimed.id == sub.op.id
            await journal.record_upid(claimed.id, f"UPID:pve1:{vmid}:a:", now=T0 + 2)
            await journal.finish(claimed.id, OpState.SUCCEEDED, now=T0 + 3, reason="OK")
        ran = [
            s
            for s in statements[before:]
            if s.split()[0].upper() not in {"BEGIN", "COMMIT", "PRAGMA"}
        ]
    assert len(ran) == 12, ran
    reads = [s for s in ran if s.lstrip().upper().startswith("SELECT")]
    assert len(reads) == 2, reads  # the submission's and the claim's


async def test_a_statement_outside_the_group_commits_makes_the_writer_read_rows_again(
    tmp_path: Path,
) -> None:
    """Anything run on the writer's connection outside a group commit (migrations,
    maintenance) may change op rows: the next finish takes the op from its row."""
    async with await Journal.open(tmp_path / "j.sqlite3") as journal:
        op = await to_state(journal, OpState.RUNNING)

        def maintenance(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE ops SET exitstatus = 'from the row' WHERE id = ?", (op.id,))

        await journal._store.writer.call(maintenance)
        done = await journal.finish(op.id, OpState.SUCCEEDED, now=T0 + 3, reason="OK")
        assert done.exitstatus == "from the row"
        assert done == await journal.get(op.id)


async def test_the_node_cap_counts_ops_another_connection_put_in_flight(tmp_path: Path) -> None:
    """The writer keeps each node's in-flight count itself; ops another journal (another
    process) claimed on the node count too: with node_cap=2 and one op in flight here and
    one there, no third op is claimed on that node."""
    db = tmp_path / "j.sqlite3"
    async with await Journal.open(db) as mine:
        for vmid in (101, 102, 103):
            await mine.submit(request(f"k{vmid}", vmid=vmid), now=T0)
        first = await mine.claim_next(now=T0 + 1, node_cap=2)
        assert first is not None
        async with await Journal.open(db) as other:
            assert await other.claim_next(now=T0 + 1, node_cap=2) is not None
        assert await mine.claim_next(now=T0 + 2, node_cap=2) is None
        await mine.finish(first.id, OpState.SUCCEEDED, now=T0 + 3, reason="OK")
        third = await mine.claim_next(now=T0 + 4, node_cap=2)
        assert third is not None and third.guest.vmid == 103


async def test_a_rolled_back_claim_does_not_count_against_the_node_cap(tmp_path: Path) -> None:
    """A unit claims an op and then fails: the claim is rolled back and the node's count
    with it — the next claim with node_cap=1 gets the op."""
    async with await Journal.open(tmp_path / "j.sqlite3") as journal:
        op = await journal.submit(request("k", vmid=101), now=T0 + 1)
        assert await journal.claim_next(now=T0, node_cap=1) is None  # not due yet: counted

        def claims_then_fails(conn: sqlite3.Connection) -> None:
            assert ops.claim(conn, now=T0 + 1, node_cap=1, nodes=None) is not None
            raise RuntimeError("failed after writing")

        outcomes = await asyncio.gather(
            journal._store.write(claims_then_fails),
            journal.submit(request(None, vmid=502), now=T0 + 5),
            return_exceptions=True,
        )
        assert isinstance(outcomes[0], RuntimeError)
        claimed = await journal.claim_next(now=T0 + 1, node_cap=1)
        assert claimed is not None and claimed.id == op.op.id
