"""Reads: listings with filters and cursors, dead letters, counts, in-flight views."""

from __future__ import annotations

import pytest
from conftest_journal import T0, submit, to_state

from lifecycled.domain.states import OpState
from lifecycled.errors import NotFound, ValidationError
from lifecycled.journal import Journal


async def test_cursor_pagination_walks_every_op_once_newest_first(journal: Journal) -> None:
    """Following next_cursor visits every op exactly once, newest first, then stops."""
    ids = [(await submit(journal, f"k{i}", vmid=i)).id for i in range(23)]
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        page = await journal.list_ops(limit=5, cursor=cursor)
        seen.extend(op.id for op in page.items)
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == sorted(ids, reverse=True)
    assert pages == 5


async def test_exact_page_has_no_next_cursor(journal: Journal) -> None:
    """When the last page is exactly full, next_cursor is None (no empty extra page)."""
    for i in range(4):
        await submit(journal, f"k{i}", vmid=i)
    first = await journal.list_ops(limit=2)
    second = await journal.list_ops(limit=2, cursor=first.next_cursor)
    assert len(second.items) == 2 and second.next_cursor is None


async def test_filters_combine(journal: Journal) -> None:
    """state, vmid and action filters narrow the listing and combine with AND."""
    a = await submit(journal, "a", vmid=101, action="start")
    await submit(journal, "b", vmid=101, action="stop")
    c = await submit(journal, "c", vmid=102, action="start")
    await journal.cancel(c.id, now=T0 + 1, reason="x")
    assert [o.id for o in (await journal.list_ops(action="start")).items] == [c.id, a.id]
    assert {o.action for o in (await journal.list_ops(vmid=101)).items} == {"start", "stop"}
    assert [o.id for o in (await journal.list_ops(state=OpState.CANCELLED)).items] == [c.id]
    only = await journal.list_ops(vmid=101, action="start", state=OpState.PENDING)
    assert [o.id for o in only.items] == [a.id]
    assert (await journal.list_ops(vmid=999)).items == []


@pytest.mark.parametrize("limit", [0, -1, 1001])
async def test_limit_is_validated(journal: Journal, limit: int) -> None:
    """A limit outside 1..1000 is a validation error."""
    with pytest.raises(ValidationError, match="limit"):
        await journal.list_ops(limit=limit)


async def test_dead_letter_listing(journal: Journal) -> None:
    """The DLQ lists undiscarded dead letters only, filterable by action, with a cursor."""
    dead = [await to_state(journal, OpState.DEAD_LETTERED, vmid=i) for i in range(3)]
    await to_state(journal, OpState.FAILED, vmid=10)
    await journal.discard(dead[0].id, now=T0 + 9, reason="operator")
    page = await journal.list_dead_letters(limit=1)
    assert [o.id for o in page.items] == [dead[2].id]
    rest = await journal.list_dead_letters(limit=1, cursor=page.next_cursor)
    assert [o.id for o in rest.items] == [dead[1].id] and rest.next_cursor is None
    assert (await journal.list_dead_letters(action="stop")).items == []
    assert len((await journal.list_dead_letters(action="start")).items) == 2


async def test_get_dead_letter(journal: Journal) -> None:
    """get_dead_letter returns a DLQ entry and says why anything else is not one."""
    dead = await to_state(journal, OpState.DEAD_LETTERED, vmid=1)
    assert (await journal.get_dead_letter(dead.id)).id == dead.id
    running = await to_state(journal, OpState.RUNNING, vmid=2)
    with pytest.raises(NotFound, match="is not a dead letter"):
        await journal.get_dead_letter(running.id)
    await journal.discard(dead.id, now=T0 + 5, reason="x")
    with pytest.raises(NotFound, match="discarded"):
        await journal.get_dead_letter(dead.id)
    with pytest.raises(NotFound, match=r"^op 77 not found$"):
        await journal.get_dead_letter(77)


async def test_counts_by_state_include_zeros(journal: Journal) -> None:
    """counts_by_state has every state, with the right numbers."""
    await to_state(journal, OpState.SUCCEEDED, vmid=3)
    await to_state(journal, OpState.PENDING, vmid=1)
    await to_state(journal, OpState.PENDING, vmid=2)
    counts = await journal.counts_by_state()
    assert set(counts) == set(OpState)
    assert counts[OpState.PENDING] == 2 and counts[OpState.SUCCEEDED] == 1
    assert counts[OpState.RUNNING] == 0


async def test_in_flight_and_stale(journal: Journal) -> None:
    """in_flight lists dispatching+running (per node); stale_in_flight those not updated since."""
    d = await to_state(journal, OpState.DISPATCHING, vmid=1)  # updated at T0 + 1
    r = await to_state(journal, OpState.RUNNING, vmid=2)  # updated at T0 + 2
    await to_state(journal, OpState.SUCCEEDED, vmid=4)
    await to_state(journal, OpState.PENDING, vmid=3)
    other = await submit(journal, "elsewhere", vmid=5, node="pve2")
    await journal.claim_next(now=T0 + 50, nodes={"pve2"})
    assert [o.id for o in await journal.in_flight()] == [d.id, r.id, other.id]
    assert [o.id for o in await journal.in_flight(node="pve2")] == [other.id]
    assert [o.id for o in await journal.stale_in_flight(older_than=T0 + 1.5)] == [d.id]
    assert [o.id for o in await journal.stale_in_flight(older_than=T0 + 10)] == [d.id, r.id]


async def test_by_key(journal: Journal) -> None:
    """by_key finds the op holding a key, or None."""
    op = await submit(journal, "the-key")
    found = await journal.by_key("the-key")
    assert found is not None and found.id == op.id
    assert await journal.by_key("other") is None
