"""Claiming (SPEC §2 step 1): due time, order, one op per guest, node caps, node filter."""

from __future__ import annotations

from conftest_journal import T0, submit

from lifecycled.domain.states import OpState
from lifecycled.journal import Journal


async def test_claim_marks_dispatching_and_counts_the_attempt(journal: Journal) -> None:
    """A claim moves the op to dispatching, attempts + 1, claimed_at = now, with history."""
    op = await submit(journal, "k1")
    claimed = await journal.claim_next(now=T0 + 5)
    assert claimed is not None
    assert (claimed.id, claimed.state, claimed.attempts, claimed.claimed_at) == (
        op.id,
        OpState.DISPATCHING,
        1,
        T0 + 5,
    )
    last = (await journal.history(op.id))[-1]
    assert (last.from_state, last.to_state, last.attempt) == (
        OpState.PENDING,
        OpState.DISPATCHING,
        1,
    )
    assert await journal.claim_next(now=T0 + 5) is None


async def test_empty_journal_claims_nothing(journal: Journal) -> None:
    """No pending op: claim_next returns None."""
    assert await journal.claim_next(now=T0) is None


async def test_claims_oldest_first(journal: Journal) -> None:
    """Ops are claimed in submission order."""
    ids = [(await submit(journal, f"k{i}", vmid=100 + i)).id for i in range(5)]
    claimed = []
    while (op := await journal.claim_next(now=T0 + 1)) is not None:
        claimed.append(op.id)
    assert claimed == ids


async def test_retry_is_not_claimed_before_it_is_due(journal: Journal) -> None:
    """A requeued op waits for next_attempt_at; a retry due earlier than a newer op goes first."""
    first = await submit(journal, "k1", vmid=101)
    claimed = await journal.claim_next(now=T0 + 1)
    assert claimed is not None
    await journal.requeue(first.id, now=T0 + 2, next_attempt_at=T0 + 30, reason="transient")
    assert await journal.claim_next(now=T0 + 29) is None
    later = await submit(journal, "k2", vmid=102, now=T0 + 40)
    again = await journal.claim_next(now=T0 + 41)
    assert again is not None and again.id == first.id and again.attempts == 2
    nxt = await journal.claim_next(now=T0 + 41)
    assert nxt is not None and nxt.id == later.id


async def test_one_in_flight_op_per_guest(journal: Journal) -> None:
    """A guest with an op dispatching or running gets no second claim until it ends."""
    a = await submit(journal, "a", vmid=101)
    b = await submit(journal, "b", vmid=101)
    c = await submit(journal, "c", vmid=102)
    first = await journal.claim_next(now=T0 + 1)
    assert first is not None and first.id == a.id
    second = await journal.claim_next(now=T0 + 1)
    assert second is not None and second.id == c.id  # b is skipped: guest 101 is busy
    await journal.record_upid(a.id, "UPID:a", now=T0 + 2)
    assert await journal.claim_next(now=T0 + 3) is None  # running still blocks the guest
    await journal.finish(a.id, OpState.SUCCEEDED, now=T0 + 4, reason="OK")
    third = await journal.claim_next(now=T0 + 5)
    assert third is not None and third.id == b.id


async def test_node_cap_limits_in_flight_ops_per_node(journal: Journal) -> None:
    """With node_cap=2, a node with two ops in flight gets no third; other nodes still do."""
    for i in range(3):
        await submit(journal, f"p1-{i}", vmid=100 + i, node="pve1")
    other = await submit(journal, "p2", vmid=200, node="pve2")
    got = [await journal.claim_next(now=T0 + 1, node_cap=2) for _ in range(4)]
    ids = [op.id for op in got if op is not None]
    assert len(ids) == 3 and other.id in ids
    assert [op.guest.node for op in await journal.in_flight(node="pve1")] == ["pve1", "pve1"]
    done = (await journal.in_flight(node="pve1"))[0]
    await journal.finish(done.id, OpState.FAILED, now=T0 + 2, reason="x")
    freed = await journal.claim_next(now=T0 + 3, node_cap=2)
    assert freed is not None and freed.guest.node == "pve1"


async def test_zero_node_cap_claims_nothing(journal: Journal) -> None:
    """node_cap=0 means no capacity."""
    await submit(journal, "k1")
    assert await journal.claim_next(now=T0 + 1, node_cap=0) is None


async def test_nodes_filter(journal: Journal) -> None:
    """With nodes, only ops on those nodes are claimed; an empty set claims nothing."""
    await submit(journal, "a", vmid=101, node="pve1")
    b = await submit(journal, "b", vmid=102, node="pve2")
    assert await journal.claim_next(now=T0 + 1, nodes=[]) is None
    got = await journal.claim_next(now=T0 + 1, nodes={"pve2", "pve3"})
    assert got is not None and got.id == b.id
    assert await journal.claim_next(now=T0 + 1, nodes={"pve2"}) is None


async def test_claim_clears_the_retry_time(journal: Journal) -> None:
    """A claimed op shows no next_attempt_at (it is no longer waiting)."""
    op = await submit(journal, "k1")
    await journal.claim_next(now=T0 + 1)
    await journal.requeue(op.id, now=T0 + 2, next_attempt_at=T0 + 10, reason="transient")
    assert (await journal.get(op.id)).next_attempt_at == T0 + 10
    claimed = await journal.claim_next(now=T0 + 10)
    assert claimed is not None and claimed.next_attempt_at is None
