"""Task lists are paged (reference §13.9): Recover and the ambiguity search read a busy
node's whole listing, with both backends (the aiohttp client sees ``total``; proxmoxer's
https backend sees ``data`` only and pages on a full page)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest_pve import Harness, harness_for, wait_task
from engine_support import fast_settings, seed_guests

from lifecycled.domain.actions import Action, spec_for
from lifecycled.domain.classify import ErrorClass
from lifecycled.domain.op import GuestKind, GuestRef, Op, Origin
from lifecycled.domain.outcome import after_call_error
from lifecycled.domain.states import OpState
from lifecycled.engine.runtime import Runtime
from lifecycled.journal import Journal, SubmitRequest
from lifecycled.pve.port import all_tasks
from lifecycled.sim import SimServer
from lifecycled.sim.model import Guest
from lifecycled.sim.rawclient import RawClient

#: More same-user tasks than several pages of the engine's page size (500).
BUSY = 2100


@pytest.fixture(params=("aiohttp", "proxmoxer-https"))
async def pve(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Harness]:
    async with harness_for(request.param, tmp_path, monkeypatch, archive_max=10_000) as h:
        yield h


def stopped_guests(h: Harness, n: int) -> list[Guest]:
    found = [
        g
        for g in sorted(h.sim.guests.values(), key=lambda g: g.vmid)
        if g.kind == "qemu" and not g.running and not g.template and g.ha is None and not g.lock
    ]
    assert len(found) >= n
    return found[:n]


async def claimed_start(journal: Journal, guest: Guest, key: str, *, at: float) -> Op:
    """A ``start`` op claimed (dispatching) at ``at`` with no UPID journaled: a crash
    between the POST and the UPID's write, or an unreadable answer to the POST."""
    op = (
        await journal.submit(
            SubmitRequest(
                idempotency_key=key,
                action="start",
                guest=GuestRef(node=guest.node, kind=GuestKind.QEMU, vmid=guest.vmid),
                params={},
                origin=Origin.API,
            ),
            now=at,
        )
    ).op
    claimed = await journal.claim_next(now=at)
    assert claimed is not None and claimed.id == op.id
    return claimed


async def post_start_then_bury(h: Harness, guest: Guest) -> str:
    """Start ``guest`` behind lifecycled's back, then bury that task under ``BUSY`` newer
    tasks of the same user and vmid on its node: it is far past the first page."""
    direct = h.direct_client()
    try:
        upid = await direct.dispatch(guest.node, GuestKind.QEMU, Action.START, guest.vmid, {})
        assert upid is not None
        await wait_task(direct, upid)
    finally:
        await direct.close()
    h.sim.archive_now()
    h.sim.add_history(guest.node, BUSY, task_id=guest.vmid)
    return str(upid)


async def test_all_tasks_pages_to_the_oldest(pve: Harness) -> None:
    """Reading a busy node's list page by page reaches a task ``BUSY`` entries down."""
    (guest,) = stopped_guests(pve, 1)
    upid = await post_start_then_bury(pve, guest)
    first = await pve.client.tasks(guest.node, vmid=guest.vmid, limit=500)
    everything = await all_tasks(pve.client, guest.node, vmid=guest.vmid)
    assert upid not in {str(t.upid) for t in first.items}
    assert upid in {str(t.upid) for t in everything}
    assert len(everything) == BUSY + 1


@pytest.mark.parametrize("ops", [1, 5], ids=["one-op", "prefetched"])
async def test_recover_adopts_a_task_past_the_first_page(
    pve: Harness, tmp_path: Path, ops: int
) -> None:
    """An op with no UPID whose task lies past the first page of a busy node's list is
    adopted by Recover (alone: its own search; with more ops: the prefetched lists)."""
    guests = stopped_guests(pve, ops)
    settings = fast_settings(tmp_path, pve.server)
    await seed_guests(settings.db, guests)
    claimed_at = time.time() - 2
    async with await Journal.open(settings.db) as journal:
        op_ids = [
            (await claimed_start(journal, g, f"k{i}", at=claimed_at)).id
            for i, g in enumerate(guests)
        ]
    upid = await post_start_then_bury(pve, guests[0])
    runtime = await Runtime.build(settings, pve=pve.client)
    try:
        report = await runtime.recoverer.recover()
        ours = await runtime.journal.get(op_ids[0])
    finally:
        await runtime.close()
    assert report.counts.get("adopted") == 1, report.counts
    assert (ours.state, ours.upid_text) == (OpState.RUNNING, upid)


async def test_ambiguity_search_adopts_a_task_past_the_first_page(
    pve: Harness, tmp_path: Path
) -> None:
    """After an unreadable answer to a POST, the search finds the op's task on a busy node
    although it lies past the first page, and adopts it instead of re-sending."""
    (guest,) = stopped_guests(pve, 1)
    settings = fast_settings(tmp_path, pve.server)
    await seed_guests(settings.db, [guest])
    async with await Journal.open(settings.db) as journal:
        op = await claimed_start(journal, guest, "k", at=time.time() - 2)
    upid = await post_start_then_bury(pve, guest)
    runtime = await Runtime.build(settings, pve=pve.client)
    try:
        spec = spec_for(GuestKind.QEMU, Action.START)
        decision = after_call_error(op, spec, ErrorClass.AMBIGUOUS, "connection reset")
        assert await runtime.executor.apply(op, decision)
        after = await runtime.journal.get(op.id)
    finally:
        await runtime.close()
    assert (after.state, after.upid_text) == (OpState.RUNNING, upid)
    starts = [r for r in pve.sim.requests if r.method == "POST" and r.path.endswith("/start")]
    assert len(starts) == 1  # only the one sent behind lifecycled's back


async def test_sim_pages_newest_first_with_total(sim_api: RawClient, sim: SimServer) -> None:
    """The simulator's task list pages like Proxmox: at most ``limit`` entries from
    ``start``, newest first, the full count in the envelope's ``total`` (absent when 0)."""
    upids = sim.sim.add_history("pve1", 120, task_id=4242)
    pages = [
        await sim_api.get(
            "/nodes/pve1/tasks", {"source": "all", "vmid": 4242, "start": start, "limit": 50}
        )
        for start in (0, 50, 100)
    ]
    assert [len(p.data) for p in pages] == [50, 50, 20]
    assert {p.json["total"] for p in pages} == {120}
    assert [t["upid"] for p in pages for t in p.data] == list(reversed(upids))
    empty = await sim_api.get("/nodes/pve1/tasks", {"vmid": 4243})
    assert empty.data == [] and "total" not in empty.json
