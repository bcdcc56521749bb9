"""State changes: each verb's effect, its history row, and the transitions it refuses."""

from __future__ import annotations

import asyncio
import contextlib
import itertools

import pytest
from conftest_journal import BOOM, DENIED, T0, raw_rows, submit, to_state

from lifecycled.domain.classify import ErrorClass
from lifecycled.domain.op import OpError
from lifecycled.domain.states import OpState
from lifecycled.errors import InvalidTransition, NotFound
from lifecycled.journal import Journal

ALL = list(OpState)


async def test_record_upid_marks_running_and_dispatched(journal: Journal) -> None:
    """record_upid: dispatching → running with the UPID, dispatched set, history carries it."""
    op = await to_state(journal, OpState.DISPATCHING)
    running = await journal.record_upid(op.id, "UPID:pve1:1", now=T0 + 2)
    assert (running.state, running.upid_text, running.dispatched) == (
        OpState.RUNNING,
        "UPID:pve1:1",
        True,
    )
    last = (await journal.history(op.id))[-1]
    assert (last.to_state, last.upid, last.reason) == (
        OpState.RUNNING,
        "UPID:pve1:1",
        "task started",
    )


async def test_finish_success_and_failure(journal: Journal) -> None:
    """finish records the terminal state, exit status, error and finished_at."""
    ok = await to_state(journal, OpState.RUNNING, vmid=1)
    done = await journal.finish(ok.id, OpState.SUCCEEDED, now=T0 + 9, reason="OK", exitstatus="OK")
    assert (done.state, done.exitstatus, done.finished_at, done.error) == (
        OpState.SUCCEEDED,
        "OK",
        T0 + 9,
        None,
    )
    bad = await to_state(journal, OpState.DISPATCHING, vmid=2)
    failed = await journal.finish(bad.id, OpState.FAILED, now=T0 + 9, reason="403", error=DENIED)
    assert (failed.state, failed.error) == (OpState.FAILED, DENIED)
    assert failed.upid_text is None and not failed.dispatched


async def test_requeue_clears_the_upid_but_history_keeps_it(journal: Journal) -> None:
    """requeue: back to pending, due at next_attempt_at, error kept, UPID only in history."""
    op = await to_state(journal, OpState.RUNNING)
    upid = (await journal.get(op.id)).upid_text
    back = await journal.requeue(
        op.id, now=T0 + 5, next_attempt_at=T0 + 20, reason="task failed: 595", error=BOOM
    )
    assert (back.state, back.upid_text, back.next_attempt_at, back.error, back.attempts) == (
        OpState.PENDING,
        None,
        T0 + 20,
        BOOM,
        1,
    )
    assert back.dispatched  # a task was started once: one-shot ops must know
    assert upid in [h.upid for h in await journal.history(op.id)]
    assert (await journal.history(op.id))[-1].upid == upid


async def test_ambiguous_requeue_remembers_the_first_claim(journal: Journal) -> None:
    """ambiguous=True sets ambiguous_since to the claim time, once; a UPID clears it."""
    op = await to_state(journal, OpState.DISPATCHING)  # claimed at T0 + 1
    await journal.requeue(op.id, now=T0 + 3, next_attempt_at=T0 + 4, reason="596", ambiguous=True)
    assert (await journal.get(op.id)).ambiguous_since == T0 + 1
    again = await journal.claim_next(now=T0 + 10)
    assert again is not None and again.ambiguous_since == T0 + 1
    await journal.requeue(op.id, now=T0 + 11, next_attempt_at=T0 + 12, reason="596", ambiguous=True)
    assert (await journal.get(op.id)).ambiguous_since == T0 + 1
    await journal.claim_next(now=T0 + 20)
    adopted = await journal.record_upid(op.id, "UPID:found", now=T0 + 21, reason="adopted")
    assert adopted.ambiguous_since is None


async def test_dead_letter_keeps_the_last_error(journal: Journal) -> None:
    """dead_letter without an error keeps the error of the last requeue."""
    op = await to_state(journal, OpState.DISPATCHING)
    await journal.requeue(op.id, now=T0 + 2, next_attempt_at=T0 + 3, reason="595", error=BOOM)
    await journal.claim_next(now=T0 + 3)
    dead = await journal.dead_letter(op.id, now=T0 + 4, reason="max retries")
    assert (dead.state, dead.error, dead.finished_at) == (OpState.DEAD_LETTERED, BOOM, T0 + 4)


async def test_cancel_only_pending(journal: Journal) -> None:
    """cancel ends a pending op; an in-flight one is refused with a clear message."""
    pending = await to_state(journal, OpState.PENDING, vmid=1)
    cancelled = await journal.cancel(pending.id, now=T0 + 1, reason="operator")
    assert (cancelled.state, cancelled.finished_at) == (OpState.CANCELLED, T0 + 1)
    running = await to_state(journal, OpState.RUNNING, vmid=2)
    with pytest.raises(InvalidTransition) as info:
        await journal.cancel(running.id, now=T0 + 1, reason="operator")
    assert str(info.value) == f"op {running.id} is running: only a pending op can be cancelled"


@pytest.mark.parametrize("state", [OpState.FAILED, OpState.DEAD_LETTERED, OpState.CANCELLED])
async def test_retry_starts_a_fresh_series(journal: Journal, state: OpState) -> None:
    """retry: failed/dead-lettered/cancelled → pending, attempts 0, due now, undiscarded."""
    op = await to_state(journal, state)
    if state is OpState.DEAD_LETTERED:
        await journal.discard(op.id, now=T0 + 4, reason="operator")
    again = await journal.retry(op.id, now=T0 + 5, reason="operator retry")
    assert (again.state, again.attempts, again.next_attempt_at, again.error, again.upid) == (
        OpState.PENDING,
        0,
        None,
        None,
        None,
    )
    assert (await journal.get(op.id)).discarded_at is None
    assert (await journal.history(op.id))[-1].reason == "operator retry"
    claimed = await journal.claim_next(now=T0 + 5)
    assert claimed is not None and claimed.id == op.id


async def test_set_upid_in_flight_replaces_and_adopts(journal: Journal) -> None:
    """set_upid_in_flight replaces a running op's UPID and adopts one for a dispatching op."""
    running = await to_state(journal, OpState.RUNNING, vmid=1)
    swapped = await journal.set_upid_in_flight(running.id, "UPID:new", now=T0 + 5, reason="recover")
    assert (swapped.state, swapped.upid_text) == (OpState.RUNNING, "UPID:new")
    last = (await journal.history(running.id))[-1]
    assert (last.from_state, last.to_state, last.upid) == (
        OpState.RUNNING,
        OpState.RUNNING,
        "UPID:new",
    )
    dispatching = await to_state(journal, OpState.DISPATCHING, vmid=2)
    adopted = await journal.set_upid_in_flight(
        dispatching.id, "UPID:seen", now=T0 + 6, reason="adopted from task list"
    )
    assert (adopted.state, adopted.upid_text, adopted.dispatched) == (
        OpState.RUNNING,
        "UPID:seen",
        True,
    )


async def test_discard_hides_a_dead_letter_idempotently(journal: Journal) -> None:
    """discard leaves the state, sets discarded_at once, writes one history row."""
    op = await to_state(journal, OpState.DEAD_LETTERED)
    rows_before = len(await journal.history(op.id))
    first = await journal.discard(op.id, now=T0 + 10, reason="operator")
    second = await journal.discard(op.id, now=T0 + 11, reason="operator")
    assert first.state is second.state is OpState.DEAD_LETTERED
    assert (await journal.get(op.id)).discarded_at == T0 + 10
    assert len(await journal.history(op.id)) == rows_before + 1
    assert (await journal.list_dead_letters()).items == []
    failed = await to_state(journal, OpState.FAILED, vmid=5)
    with pytest.raises(InvalidTransition, match="only a dead-lettered op can be discarded"):
        await journal.discard(failed.id, now=T0, reason="x")


def _verbs(journal: Journal, op_id: int) -> dict[str, object]:
    now = T0 + 100
    return {
        "claim": None,  # claim picks its own op; covered in test_journal_claim
        "record_upid": lambda: journal.record_upid(op_id, "U", now=now),
        "finish_ok": lambda: journal.finish(op_id, OpState.SUCCEEDED, now=now, reason="r"),
        "finish_failed": lambda: journal.finish(op_id, OpState.FAILED, now=now, reason="r"),
        "finish_cancelled": lambda: journal.finish(op_id, OpState.CANCELLED, now=now, reason="r"),
        "requeue": lambda: journal.requeue(op_id, now=now, next_attempt_at=now, reason="r"),
        "dead_letter": lambda: journal.dead_letter(op_id, now=now, reason="r"),
        "cancel": lambda: journal.cancel(op_id, now=now, reason="r"),
        "retry": lambda: journal.retry(op_id, now=now, reason="r"),
        "set_upid": lambda: journal.set_upid_in_flight(op_id, "U", now=now, reason="r"),
        "discard": lambda: journal.discard(op_id, now=now, reason="r"),
    }


ALLOWED = {
    "record_upid": {OpState.DISPATCHING},
    "finish_ok": {OpState.DISPATCHING, OpState.RUNNING},
    "finish_failed": {OpState.DISPATCHING, OpState.RUNNING},
    "finish_cancelled": set(),
    "requeue": {OpState.DISPATCHING, OpState.RUNNING},
    "dead_letter": {OpState.DISPATCHING, OpState.RUNNING},
    "cancel": {OpState.PENDING},
    "retry": {OpState.FAILED, OpState.DEAD_LETTERED, OpState.CANCELLED},
    "set_upid": {OpState.DISPATCHING, OpState.RUNNING},
    "discard": {OpState.DEAD_LETTERED},
}


@pytest.mark.parametrize("verb", sorted(ALLOWED))
@pytest.mark.parametrize("state", ALL)
async def test_each_verb_accepts_exactly_its_source_states(
    journal: Journal, verb: str, state: OpState
) -> None:
    """Every verb works from its source states and is refused (nothing written) elsewhere."""
    op = await to_state(journal, state)
    history_before = await journal.history(op.id)
    call = _verbs(journal, op.id)[verb]
    assert callable(call)
    if state in ALLOWED[verb]:
        await call()
        assert len(await journal.history(op.id)) == len(history_before) + 1
    else:
        with pytest.raises(InvalidTransition, match=f"op {op.id} is {state}"):
            await call()
        assert await journal.get(op.id) == op
        assert await journal.history(op.id) == history_before


async def test_finish_refuses_a_non_terminal_target(journal: Journal) -> None:
    """finish to pending (or any state it cannot set) is refused and names the problem."""
    op = await to_state(journal, OpState.RUNNING)
    with pytest.raises(InvalidTransition, match="finish cannot take an op to pending"):
        await journal.finish(op.id, OpState.PENDING, now=T0 + 5, reason="x")
    assert (await journal.get(op.id)).state is OpState.RUNNING


async def test_unknown_op_is_not_found(journal: Journal) -> None:
    """Verbs and reads on a missing id raise NotFound('op N not found')."""
    with pytest.raises(NotFound, match=r"^op 42 not found$"):
        await journal.get(42)
    with pytest.raises(NotFound, match=r"^op 42 not found$"):
        await journal.history(42)
    with pytest.raises(NotFound, match=r"^op 42 not found$"):
        await journal.cancel(42, now=T0, reason="x")
    with pytest.raises(NotFound, match=r"^op 42 not found$"):
        await journal.finish(42, OpState.SUCCEEDED, now=T0, reason="x")


async def test_history_chains_every_transition(journal: Journal) -> None:
    """A full life (submit, claim, task, transient retry, success) is a chained history."""
    op = await submit(journal, "k1")
    await journal.claim_next(now=T0 + 1)
    await journal.record_upid(op.id, "UPID:1", now=T0 + 2)
    await journal.requeue(op.id, now=T0 + 3, next_attempt_at=T0 + 4, reason="595", error=BOOM)
    await journal.claim_next(now=T0 + 4)
    await journal.record_upid(op.id, "UPID:2", now=T0 + 5)
    await journal.finish(op.id, OpState.SUCCEEDED, now=T0 + 6, reason="OK", exitstatus="OK")
    history = await journal.history(op.id)
    states = [h.to_state for h in history]
    assert states == [
        OpState.PENDING,
        OpState.DISPATCHING,
        OpState.RUNNING,
        OpState.PENDING,
        OpState.DISPATCHING,
        OpState.RUNNING,
        OpState.SUCCEEDED,
    ]
    assert all(a.to_state == b.from_state for a, b in itertools.pairwise(history))
    assert [h.attempt for h in history] == [0, 1, 1, 1, 2, 2, 2]
    assert [h.at for h in history] == [T0, T0 + 1, T0 + 2, T0 + 3, T0 + 4, T0 + 5, T0 + 6]


async def test_durable_write_completes_when_the_caller_is_cancelled(journal: Journal) -> None:
    """A finish whose caller is cancelled mid-write is still on disk, and the cancel is raised."""
    op = await to_state(journal, OpState.RUNNING)
    task = asyncio.create_task(
        journal.finish(op.id, OpState.SUCCEEDED, now=T0 + 9, reason="OK", exitstatus="OK")
    )
    await asyncio.sleep(0)  # let it start its write
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await journal.get(op.id)).state is OpState.SUCCEEDED


@pytest.mark.parametrize("yields", range(8))
async def test_cancelled_plain_write_rolls_back_whole(journal: Journal, yields: int) -> None:
    """A write cancelled at any point is all-or-nothing, and the journal keeps working."""
    op = await to_state(journal, OpState.PENDING)
    task = asyncio.create_task(journal.cancel(op.id, now=T0 + 1, reason="x"))
    for _ in range(yields):
        await asyncio.sleep(0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    after = await journal.get(op.id)
    history = await journal.history(op.id)
    assert after.state in (OpState.PENDING, OpState.CANCELLED)
    assert history[-1].to_state is after.state
    assert len(history) == (1 if after.state is OpState.PENDING else 2)
    other = await submit(journal, "next", vmid=999)
    claimed = await journal.claim_next(now=T0 + 2)
    assert claimed is not None and claimed.id in (op.id, other.id)


async def test_error_class_round_trips(journal: Journal) -> None:
    """Every error class and its message survive the journal."""
    for i, cls in enumerate(ErrorClass):
        op = await to_state(journal, OpState.DISPATCHING, vmid=1000 + i)
        err = OpError(error_class=cls, message=f"text {cls}")
        done = await journal.finish(op.id, OpState.FAILED, now=T0, reason="x", error=err)
        assert (await journal.get(done.id)).error == err
    assert raw_rows(journal.path, "SELECT count(*) FROM ops WHERE error_class IS NULL") == [(0,)]
