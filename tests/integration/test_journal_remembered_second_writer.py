"""Attacks on what the journal's writer remembers, as a second writer would
make them: another journal on the same file (another process: the CLI, a second daemon)
changes op rows between two of this writer's group commits, often leaving an op in the
same *state* the writer remembers it in, so that only the row's other columns (attempts,
dispatched, discarded_at, the task id) tell the difference. The state-guarded UPDATE does
not catch that; only forgetting on ``PRAGMA data_version`` does."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from conftest_journal import BOOM, T0, raw_rows, request, run_cli, to_state

from lifecycled.domain.states import OpState
from lifecycled.errors import InvalidTransition, UpidTaken
from lifecycled.journal import Journal

pytestmark = pytest.mark.timeout(60)


def _history(path: Path, op_id: int) -> list[tuple[Any, ...]]:
    return raw_rows(
        path,
        "SELECT from_state, to_state, attempt, upid FROM op_history WHERE op_id = ? ORDER BY id",
        (op_id,),
    )


async def test_a_claim_after_another_process_ran_an_attempt_keeps_its_count_and_dispatch(
    tmp_path: Path,
) -> None:
    """This writer requeued an op (remembered: pending, attempt 1, never dispatched);
    another journal claims it, records a task and requeues it (pending again): this
    writer's next claim counts attempt 3 and knows a task was started (one-shot ops are
    never dispatched twice), as the row says."""
    db = tmp_path / "j.sqlite3"
    async with await Journal.open(db) as mine:
        op = await to_state(mine, OpState.DISPATCHING)
        await mine.requeue(op.id, now=T0 + 2, next_attempt_at=T0 + 2, reason="here", error=BOOM)
        async with await Journal.open(db) as other:
            again = await other.claim_next(now=T0 + 3)
            assert again is not None and again.id == op.id
            await other.record_upid(op.id, "UPID:pve1:00000001:there:", now=T0 + 4)
            await other.requeue(op.id, now=T0 + 5, next_attempt_at=T0 + 5, reason="there")
        claimed = await mine.claim_next(now=T0 + 6)
        assert claimed is not None and claimed.id == op.id
        assert (claimed.attempts, claimed.dispatched) == (3, True)
        assert claimed == await mine.get(op.id)
    assert raw_rows(db, "SELECT attempts, dispatched FROM ops WHERE id = ?", (op.id,)) == [(3, 1)]


async def test_a_task_recorded_by_another_process_stays_its_own(tmp_path: Path) -> None:
    """Two ops this writer claimed (remembered, dispatching); another journal records a task
    on the first, requeues and claims it again (dispatching again, as remembered): this
    writer cannot journal that task on the second op, and the first op's next task is
    journaled with its real attempt (2)."""
    db = tmp_path / "j.sqlite3"
    async with await Journal.open(db) as mine:
        first = await to_state(mine, OpState.DISPATCHING, vmid=101)
        second = await to_state(mine, OpState.DISPATCHING, vmid=102)
        taken = "UPID:pve1:00000001:there:"
        async with await Journal.open(db) as other:
            await other.record_upid(first.id, taken, now=T0 + 3)
            await other.requeue(first.id, now=T0 + 4, next_attempt_at=T0 + 4, reason="there")
            assert (await other.claim_next(now=T0 + 5)) is not None
        with pytest.raises(UpidTaken) as refused:
            await mine.record_upid(second.id, taken, now=T0 + 6)
        assert refused.value.holder == first.id
        running = await mine.record_upid(first.id, "UPID:pve1:00000002:here:", now=T0 + 7)
        assert running.attempts == 2
        assert running == await mine.get(first.id)
        assert await mine.get(second.id) == second
    assert _history(db, first.id)[-1] == ("dispatching", "running", 2, "UPID:pve1:00000002:here:")


async def test_a_discard_by_another_process_is_not_done_again(tmp_path: Path) -> None:
    """A dead letter another journal discarded: this writer's discard is a no-op (the first
    discard's time is kept, one history row)."""
    db = tmp_path / "j.sqlite3"
    async with await Journal.open(db) as mine:
        op = await to_state(mine, OpState.DEAD_LETTERED)
        async with await Journal.open(db) as other:
            first = await other.discard(op.id, now=T0 + 10, reason="there")
        again = await mine.discard(op.id, now=T0 + 20, reason="here")
        assert again.discarded_at == first.discarded_at == T0 + 10
    rows = raw_rows(
        db, "SELECT count(*) FROM op_history WHERE op_id = ? AND reason = 'here'", (op.id,)
    )
    assert rows == [(0,)]


async def test_an_op_another_process_finished_frees_the_node_for_this_writer(
    tmp_path: Path,
) -> None:
    """This writer counts one op in flight on pve1 (node_cap=1 then refuses a second);
    another journal finishes it: this writer claims the next op on pve1."""
    db = tmp_path / "j.sqlite3"
    async with await Journal.open(db) as mine:
        for vmid in (101, 102):
            await mine.submit(request(f"k{vmid}", vmid=vmid), now=T0)
        first = await mine.claim_next(now=T0 + 1, node_cap=1)
        assert first is not None
        assert await mine.claim_next(now=T0 + 1, node_cap=1) is None
        async with await Journal.open(db) as other:
            await other.record_upid(first.id, "UPID:pve1:00000001:there:", now=T0 + 2)
            await other.finish(first.id, OpState.SUCCEEDED, now=T0 + 3, reason="OK")
        second = await mine.claim_next(now=T0 + 4, node_cap=1)
        assert second is not None and second.guest.vmid == 102


async def test_two_writers_never_exceed_the_node_cap_together(tmp_path: Path) -> None:
    """Two journals claim in turn with node_cap=2 on one node: two ops in flight at most,
    each counting the other's claims and finishes."""
    db = tmp_path / "j.sqlite3"
    async with await Journal.open(db) as a, await Journal.open(db) as b:
        for vmid in range(101, 109):
            await a.submit(request(f"k{vmid}", vmid=vmid), now=T0)
        claimed: list[int] = []
        for turn in range(12):
            me = (a, b)[turn % 2]
            op = await me.claim_next(now=T0 + 1 + turn, node_cap=2)
            if op is not None:
                claimed.append(op.id)
            (in_flight,) = raw_rows(db, "SELECT count(*) FROM ops WHERE phase = 2")[0]
            assert in_flight <= 2
            if turn % 3 == 2 and claimed:  # the other one ends the oldest op it did not claim
                done = claimed.pop(0)
                await (b, a)[turn % 2].finish(
                    done, OpState.FAILED, now=T0 + 1 + turn, reason="gone", error=BOOM
                )
        (in_flight,) = raw_rows(db, "SELECT count(*) FROM ops WHERE phase = 2")[0]
        assert in_flight == len(claimed) <= 2


async def test_the_cli_cancelling_a_remembered_pending_op_is_seen(tmp_path: Path) -> None:
    """`lifecycled ops cancel` (another process) cancels a pending op this writer just
    submitted (remembered): the writer claims nothing and cannot cancel it again."""
    db = tmp_path / "j.sqlite3"
    async with await Journal.open(db) as mine:
        op = (await mine.submit(request("k", vmid=101), now=T0)).op
        code, _, err = await run_cli("ops", "cancel", str(op.id), "--db", str(db))
        assert code == 0, err
        assert await mine.claim_next(now=T0 + 1) is None
        with pytest.raises(InvalidTransition):
            await mine.cancel(op.id, now=T0 + 2, reason="here")
        assert (await mine.get(op.id)).state is OpState.CANCELLED


async def test_the_cli_retrying_a_dead_letter_is_claimed_with_a_fresh_series(
    tmp_path: Path,
) -> None:
    """`lifecycled dlq retry` (another process) re-queues a dead letter this writer wrote:
    the writer's next claim takes it as attempt 1, with no task of the old series."""
    db = tmp_path / "j.sqlite3"
    async with await Journal.open(db) as mine:
        op = await to_state(mine, OpState.DEAD_LETTERED)
        code, _, err = await run_cli("dlq", "retry", str(op.id), "--db", str(db))
        assert code == 0, err
        claimed = await mine.claim_next(now=time.time() + 60)
        assert claimed is not None and claimed.id == op.id
        assert (claimed.attempts, claimed.upid_text, claimed.dispatched) == (1, None, False)
        assert claimed == await mine.get(op.id)


async def test_two_journals_with_workers_keep_the_cap_and_claim_each_op_once(
    tmp_path: Path,
) -> None:
    """Two journals on one file (two daemons), three workers each, claim → task → finish
    over 40 ops on two nodes with node_cap=2: no committed snapshot ever shows more than
    two ops in flight on a node, every op runs once (one claim, attempt 1, its own task)."""
    db = tmp_path / "j.sqlite3"
    async with await Journal.open(db) as a, await Journal.open(db) as b:
        for vmid in range(101, 141):
            node = "pve1" if vmid % 2 else "pve2"
            await a.submit(request(f"k{vmid}", vmid=vmid, node=node), now=T0)
        over: list[tuple[str, int]] = []

        async def worker(journal: Journal, name: str) -> None:
            tick = 0
            while True:
                tick += 1
                op = await journal.claim_next(now=T0 + 1, node_cap=2)
                if op is None:
                    if not raw_rows(db, "SELECT 1 FROM ops WHERE phase IN (1, 2) LIMIT 1"):
                        return
                    await asyncio.sleep(0.001)
                    continue
                over.extend(
                    raw_rows(
                        db,
                        "SELECT node, count(*) FROM ops WHERE phase = 2 GROUP BY node"
                        " HAVING count(*) > 2",
                    )
                )
                await journal.record_upid(
                    op.id, f"UPID:{op.guest.node}:{op.id:08X}:{name}:", now=T0 + 2
                )
                await asyncio.sleep(0)
                await journal.finish(op.id, OpState.SUCCEEDED, now=T0 + 3, reason="OK")

        await asyncio.wait_for(
            asyncio.gather(
                *(worker(j, f"{n}{i}") for n, j in (("a", a), ("b", b)) for i in range(3))
            ),
            45,
        )
    assert over == []
    assert raw_rows(db, "SELECT DISTINCT state, attempts FROM ops") == [("succeeded", 1)]
    assert raw_rows(db, "SELECT count(*) FROM op_history WHERE to_state = 'dispatching'") == [(40,)]
