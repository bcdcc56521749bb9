"""Submission and idempotency (SPEC §1): new ops, deduplication, conflicts, re-arming."""

from __future__ import annotations

import asyncio

import pytest
from conftest_journal import T0, raw_rows, request, to_state

from lifecycled.domain.op import GuestKind, GuestRef
from lifecycled.domain.states import OpState
from lifecycled.errors import Conflict
from lifecycled.journal import Journal, SubmitRequest


async def test_new_op_is_pending_with_one_history_row(journal: Journal) -> None:
    """A submission journals a pending op, its canonical params and a 'submitted' row."""
    result = await journal.submit(
        request("k1", params={"b": 2, "a": [1, {"z": 0, "y": 1}]}, actor="api:ci"), now=T0
    )
    op = result.op
    assert (result.deduplicated, result.rearmed) == (False, False)
    assert (op.state, op.attempts, op.created_at, op.updated_at) == (OpState.PENDING, 0, T0, T0)
    assert op.params == {"a": [1, {"y": 1, "z": 0}], "b": 2}
    stored = raw_rows(journal.path, "SELECT params, actor FROM ops WHERE id = ?", (op.id,))
    assert stored == [('{"a":[1,{"y":1,"z":0}],"b":2}', "api:ci")]
    history = await journal.history(op.id)
    assert [(h.from_state, h.to_state, h.reason) for h in history] == [
        (None, OpState.PENDING, "submitted by api:ci")
    ]


async def test_without_a_key_one_is_generated_and_nothing_deduplicates(journal: Journal) -> None:
    """Two keyless submissions of the same thing are two ops with generated keys."""
    a = (await journal.submit(request(None), now=T0)).op
    b = (await journal.submit(request(None), now=T0)).op
    assert a.id != b.id
    assert len(a.idempotency_key) == 32 and a.idempotency_key != b.idempotency_key


@pytest.mark.parametrize(
    "state", [OpState.PENDING, OpState.DISPATCHING, OpState.RUNNING, OpState.SUCCEEDED]
)
async def test_same_key_returns_the_op_and_writes_nothing(journal: Journal, state: OpState) -> None:
    """Resubmitting a pending, in-flight or succeeded key returns that op, deduplicated."""
    op = await to_state(journal, state, key="k1")
    before = raw_rows(journal.path, "SELECT count(*) FROM op_history")
    # Params compare canonically: key order does not matter.
    result = await journal.submit(request("k1", params={}), now=T0 + 50)
    assert result.deduplicated and not result.rearmed
    assert result.op == await journal.get(op.id)
    assert result.op.state is state
    assert raw_rows(journal.path, "SELECT count(*) FROM op_history") == before


async def test_params_compare_canonically(journal: Journal) -> None:
    """The same params in another key order are the same request."""
    await journal.submit(request("k1", params={"a": 1, "b": {"c": 2, "d": 3}}), now=T0)
    again = await journal.submit(request("k1", params={"b": {"d": 3, "c": 2}, "a": 1}), now=T0)
    assert again.deduplicated


@pytest.mark.parametrize(
    "other",
    [
        request("k1", action="stop"),
        request("k1", vmid=102),
        request("k1", node="pve2"),
        request("k1", params={"force_stop": True}),
        SubmitRequest(
            idempotency_key="k1",
            action="start",
            guest=GuestRef(node="pve1", kind=GuestKind.LXC, vmid=101),
            params={},
            origin=request().origin,
        ),
    ],
    ids=["action", "vmid", "node", "params", "kind"],
)
@pytest.mark.parametrize("state", [OpState.PENDING, OpState.FAILED])
async def test_same_key_different_request_is_a_conflict(
    journal: Journal, other: SubmitRequest, state: OpState
) -> None:
    """A key reused for a different action/guest/params is a 409 conflict, and writes nothing."""
    op = await to_state(journal, state, key="k1")
    with pytest.raises(Conflict, match=f"already used by op {op.id}"):
        await journal.submit(other, now=T0 + 50)
    assert (await journal.get(op.id)).state is state
    assert raw_rows(journal.path, "SELECT count(*) FROM ops") == [(1,)]


@pytest.mark.parametrize("state", [OpState.FAILED, OpState.DEAD_LETTERED, OpState.CANCELLED])
async def test_resubmitting_a_failed_key_rearms_the_op(journal: Journal, state: OpState) -> None:
    """A key whose op failed, was dead-lettered or cancelled is re-armed as a new series."""
    old = await to_state(journal, state, key="k1")
    result = await journal.submit(request("k1"), now=T0 + 100)
    op = result.op
    assert (result.deduplicated, result.rearmed) == (False, True)
    assert op.id == old.id
    assert (op.state, op.attempts, op.upid, op.error, op.finished_at) == (
        OpState.PENDING,
        0,
        None,
        None,
        None,
    )
    assert not op.dispatched
    history = await journal.history(op.id)
    assert (history[-1].from_state, history[-1].to_state, history[-1].reason) == (
        state,
        OpState.PENDING,
        "re-armed by resubmission",
    )
    # The error the op ended with is kept in the history.
    if old.error is not None:
        errors = raw_rows(
            journal.path,
            "SELECT error_class, error_message FROM op_history WHERE op_id = ? ORDER BY id DESC"
            " LIMIT 1",
            (op.id,),
        )
        assert errors == [(str(old.error.error_class), old.error.message)]
    # The re-armed op is claimable again right away.
    claimed = await journal.claim_next(now=T0 + 100)
    assert claimed is not None and claimed.id == op.id and claimed.attempts == 1


async def test_concurrent_submissions_of_one_key_make_one_op(journal: Journal) -> None:
    """Many coroutines submitting one key at once get one op; all but one are deduplicated."""
    results = await asyncio.gather(*(journal.submit(request("same"), now=T0) for _ in range(20)))
    assert len({r.op.id for r in results}) == 1
    assert sum(not r.deduplicated for r in results) == 1
    assert raw_rows(journal.path, "SELECT count(*) FROM ops") == [(1,)]


async def test_the_op_record_carries_its_actor_action_and_discard_time(journal: Journal) -> None:
    """An op as read carries who submitted it, its action as an Action and, once an operator
    discarded it, when — no second query needed."""
    from lifecycled.domain.actions import Action

    dead = await to_state(journal, OpState.DEAD_LETTERED, vmid=777)
    op = (await journal.submit(request("k-actor", actor="api:alice"), now=T0)).op
    read = await journal.get(op.id)
    assert (op.actor, read.actor) == ("api:alice", "api:alice")
    assert read.action is Action.START and read.discarded_at is None
    discarded = await journal.discard(dead.id, now=T0 + 10, reason="operator")
    assert discarded.discarded_at == T0 + 10
    assert (await journal.get(dead.id)).discarded_at == T0 + 10
    assert (await journal.retry(dead.id, now=T0 + 11, reason="r")).discarded_at is None
