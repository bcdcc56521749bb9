"""Push to a control plane from the durable outbox (SPEC §5 "Push")."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from engine_support import pick, running, submit, wait_terminal

from lifecycled.domain.op import GuestKind, GuestRef, Origin
from lifecycled.journal import Journal, SubmitRequest
from lifecycled.sim import SimServer


class Receiver:
    """A control plane that fails the first ``fail`` requests, then records everything."""

    def __init__(self, *, fail: int = 0, full_sync: bool = False) -> None:
        self.fail = fail
        self.full_sync = full_sync
        self.bodies: list[dict[str, Any]] = []
        self.failed = 0
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.changed = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.failed < self.fail:
            self.failed += 1
            return web.json_response({"error": "not yet"}, status=503)
        self.bodies.append(body)
        self.changed.set()
        if body["type"] == "heartbeat" and self.full_sync:
            self.full_sync = False
            return web.json_response({"full_sync": True})
        return web.json_response({"ok": True})

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/events", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/events"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def events(self) -> list[dict[str, Any]]:
        return [e for b in self.bodies if b["type"] == "events" for e in b["events"]]

    async def wait_for(self, predicate: Any, within: float = 15.0) -> None:
        async with asyncio.timeout(within):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver(fail=2)
    await r.start()
    yield r
    await r.stop()


async def test_events_arrive_in_order_after_failures(
    sim: SimServer, tmp_path: Path, receiver: Receiver
) -> None:
    """Op terminal events reach the receiver at least once, in seq order, despite early 503s."""
    avoid: set[int] = set()
    guests = [pick(sim, "qemu", False, avoid=avoid) for _ in range(3)]
    async with running(sim, tmp_path, notify_url=receiver.url, notify_heartbeat=60.0) as rt:
        ops = [await submit(rt, "start", g, key=f"p-{g.vmid}") for g in guests]
        for op in ops:
            await wait_terminal(rt, op.id)
        await receiver.wait_for(
            lambda: (
                len({e["data"]["op_id"] for e in receiver.events() if e["type"].startswith("op.")})
                == 3
            )
        )
        async with asyncio.timeout(10):
            while (await rt.journal.outbox_position())[1]:
                await asyncio.sleep(0.05)  # acknowledged once the receiver's answer arrived
    assert receiver.failed == 2
    events = receiver.events()
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs)
    assert {e["data"]["op_id"] for e in events if e["type"] == "op.succeeded"} == {
        op.id for op in ops
    }


async def test_undelivered_events_survive_a_restart(sim: SimServer, tmp_path: Path) -> None:
    """Events written while the receiver is down are delivered by the next run, same seqs."""
    down = Receiver()
    await down.start()
    url = down.url
    await down.stop()  # nothing listens there now
    guest = pick(sim, "qemu", False)
    async with running(sim, tmp_path, notify_url=url, notify_heartbeat=60.0) as rt:
        op = await submit(rt, "start", guest, key="survive")
        await wait_terminal(rt, op.id)
        pending = await rt.journal.unsent_events()
    assert [e.type for e in pending if e.type.startswith("op.")] == ["op.succeeded"]
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    up = Receiver()
    await up.start(port)
    try:
        async with running(sim, tmp_path, notify_url=url, notify_heartbeat=60.0):
            await up.wait_for(lambda: any(e["type"] == "op.succeeded" for e in up.events()))
    finally:
        await up.stop()
    assert [e["seq"] for e in up.events()[: len(pending)]] == [e.seq for e in pending]
    assert [e["data"].get("op_id") for e in up.events() if e["type"] == "op.succeeded"] == [op.id]


async def test_heartbeat_and_full_sync(sim: SimServer, tmp_path: Path) -> None:
    """A heartbeat carries the state hash; answering full_sync gets the whole guest table."""
    r = Receiver(full_sync=True)
    await r.start()
    try:
        async with running(sim, tmp_path, notify_url=r.url, notify_heartbeat=0.2) as rt:
            await r.wait_for(lambda: any(b["type"] == "full_sync" for b in r.bodies))
            observed, _ = await rt.journal.guest_hashes()
            managed = {g.vmid for g in await rt.journal.all_guests()}
    finally:
        await r.stop()
    beat = next(b for b in r.bodies if b["type"] == "heartbeat")
    sync = next(b for b in r.bodies if b["type"] == "full_sync")
    assert beat["state_hash"] == observed
    assert sync["state_hash"] == beat["state_hash"]
    assert {g["vmid"] for g in sync["guests"]} == managed == set(sim.sim.guests)
    assert all(g["origin"] == "native" for g in sync["guests"])


async def test_outbox_is_written_with_the_change(tmp_path: Path) -> None:
    """The terminal transition and its outbox event commit together (a trigger), in order."""
    async with await Journal.open(tmp_path / "j.sqlite3") as journal:
        guest = GuestRef(node="pve1", kind=GuestKind.QEMU, vmid=100)
        res = await journal.submit(
            SubmitRequest(
                idempotency_key="a", action="start", guest=guest, params={}, origin=Origin.CLI
            ),
            now=time.time(),
        )
        assert await journal.unsent_events() == []
        await journal.cancel(res.op.id, now=time.time(), reason="test")
        events = await journal.unsent_events()
        assert [(e.type, e.payload["op_id"]) for e in events] == [("op.cancelled", res.op.id)]
        await journal.mark_sent([events[0].seq], now=time.time())
        assert await journal.unsent_events() == []
        assert await journal.outbox_position() == (events[0].seq, 0)
