"""Push to a control plane from the durable outbox (SPEC §5 "Push")."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
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

    def __init__(
        self, *, fail: int = 0, full_sync: bool = False, secret: bytes | None = None
    ) -> None:
        self.fail = fail
        self.full_sync = full_sync
        self.secret = secret
        self.unverified = 0
        self.ids: list[tuple[str, dict[str, Any]]] = []
        self.bodies: list[dict[str, Any]] = []
        self.failed = 0
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.changed = asyncio.Event()

    def verified(self, request: web.Request, raw: bytes) -> bool:
        """Standard Webhooks verification as a receiver does it (docs/PUSH.md)."""
        assert self.secret is not None
        msg_id = request.headers.get("webhook-id", "")
        stamp = request.headers.get("webhook-timestamp", "")
        if not stamp.isdigit() or abs(time.time() - int(stamp)) > 300:
            return False
        mac = hmac.new(self.secret, f"{msg_id}.{stamp}.".encode() + raw, hashlib.sha256)
        expected = "v1," + base64.b64encode(mac.digest()).decode()
        offered = request.headers.get("webhook-signature", "").split()
        self.ids.append((msg_id, json.loads(raw)))
        return any(hmac.compare_digest(expected, sig) for sig in offered)

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if self.secret is not None and not self.verified(request, raw):
            self.unverified += 1
            return web.json_response({"error": "bad signature"}, status=401)
        body = json.loads(raw)
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
        # Delivered events are deleted; the newest stays to keep the sequence position.
        assert await rt.journal.outbox_size() == 1
        assert (await rt.journal.outbox_position())[0] == max(e["seq"] for e in receiver.events())
    assert receiver.failed == 2
    events = receiver.events()
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs)
    assert {e["data"]["op_id"] for e in events if e["type"] == "op.succeeded"} == {
        op.id for op in ops
    }


async def test_without_push_the_outbox_stays_empty(sim: SimServer, tmp_path: Path) -> None:
    """No --notify-url: ops finish and guests change, and the outbox holds nothing."""
    guest = pick(sim, "qemu", False)
    async with running(sim, tmp_path) as rt:
        op = await submit(rt, "start", guest, key="quiet")
        await wait_terminal(rt, op.id)
        assert not await rt.journal.push_enabled()
        assert await rt.journal.outbox_size() == 0


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


async def test_pushes_carry_a_verifiable_standard_webhooks_signature(
    sim: SimServer, tmp_path: Path
) -> None:
    """With --push-secret-file every push (events, heartbeat, full sync) verifies with the
    Standard Webhooks HMAC over id.timestamp.body; a batch's webhook-id follows from its
    seqs (so a retry keeps it); a receiver holding another secret refuses them all."""
    key = bytes(range(32))
    secret_file = tmp_path / "push.secret"
    secret_file.write_text("whsec_" + base64.b64encode(key).decode() + "\n")
    secret_file.chmod(0o600)
    good = Receiver(fail=1, full_sync=True, secret=key)
    await good.start()
    try:
        guest = pick(sim, "qemu", False)
        async with running(
            sim,
            tmp_path,
            push_secret_file=secret_file,
            notify_url=good.url,
            notify_heartbeat=0.2,
        ) as rt:
            op = await submit(rt, "start", guest, key="signed-push")
            await wait_terminal(rt, op.id)
            await good.wait_for(
                lambda: (
                    {"events", "heartbeat", "full_sync"} <= {b["type"] for b in good.bodies}
                    and any(e["data"].get("op_id") == op.id for e in good.events())
                )
            )
    finally:
        await good.stop()
    assert good.unverified == 0 and good.failed == 1
    batches = [(i, b) for i, b in good.ids if b["type"] == "events"]
    assert batches
    for msg_id, body in batches:  # derived from the seqs: a resent batch keeps its id
        seqs = [e["seq"] for e in body["events"]]
        assert msg_id == f"evt_pve1_{seqs[0]}-{seqs[-1]}"

    stranger = Receiver(secret=bytes(32))
    await stranger.start()
    try:
        async with running(
            sim,
            tmp_path / "2",
            push_secret_file=secret_file,
            notify_url=stranger.url,
            notify_heartbeat=0.2,
        ):
            async with asyncio.timeout(15):
                while stranger.unverified < 2:
                    await asyncio.sleep(0.05)
    finally:
        await stranger.stop()
    assert stranger.bodies == []


async def test_outbox_is_written_with_the_change(tmp_path: Path) -> None:
    """With push on, the terminal transition and its outbox event commit together (a
    trigger), in order."""
    async with await Journal.open(tmp_path / "j.sqlite3") as journal:
        await journal.set_push(enabled=True)
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
