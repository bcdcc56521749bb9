"""Push to a control plane (SPEC §5 "Push"): a sender draining the journal's durable outbox.

At least once and in order: a batch is marked sent only after the receiver answered 2xx;
on failure the same batch (same sequence numbers) is sent again after a backoff, so the
receiver drops duplicates by ``seq``. A periodic heartbeat carries the observed-state hash;
an answer ``{"full_sync": true}`` makes the sender push the whole guest table.

With a push secret (``--push-secret-file``) every request carries the Standard Webhooks
headers (:mod:`lifecycled.domain.webhooks`): an HMAC-SHA256 over the id, the timestamp and
the exact body bytes, so the receiver can tell lifecycled's requests from anyone else's. A
batch of events keeps its ``webhook-id`` across retries (``evt_<node>_<first>-<last>``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from lifecycled.domain.backoff import backoff_delay
from lifecycled.domain.events import events_body, full_sync_body, heartbeat_body, wants_full_sync
from lifecycled.domain.guests import guest_to_dict
from lifecycled.domain.webhooks import headers as webhook_headers
from lifecycled.engine.clock import Clock
from lifecycled.journal import Journal

log = logging.getLogger("lifecycled.push")

StateHash = Callable[[], Awaitable[str]]


class PushError(Exception):
    """The receiver did not acknowledge a request."""


class Pusher:
    """Drains the outbox to ``url``; one request at a time, so order is kept."""

    def __init__(
        self,
        *,
        journal: Journal,
        url: str,
        node: str,
        clock: Clock,
        state_hash: StateHash,
        token: str | None = None,
        secret: bytes | None = None,
        heartbeat: float = 30.0,
        idle_poll: float = 1.0,
        batch: int = 100,
        timeout: float = 10.0,
        max_backoff: float = 60.0,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.journal = journal
        self.url = url
        self.node = node
        self.clock = clock
        self.state_hash = state_hash
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._secret = secret
        self.heartbeat_every = heartbeat
        self.idle_poll = idle_poll
        self.batch = batch
        self.timeout = timeout
        self.max_backoff = max_backoff
        self.rand = rand
        self.failures = 0
        self.delivered = 0
        self.last_error: str | None = None

    async def run(self, stopping: asyncio.Event) -> None:
        """Until ``stopping`` is set: deliver events, send heartbeats, back off on failure."""
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(timeout=timeout, headers=self._headers) as session:
            next_heartbeat = self.clock.monotonic()
            while not stopping.is_set():
                try:
                    sent = await self.deliver_once(session)
                    if self.clock.monotonic() >= next_heartbeat:
                        await self.heartbeat(session)
                        next_heartbeat = self.clock.monotonic() + self.heartbeat_every
                    self.failures = 0
                    self.last_error = None
                    delay = 0.0 if sent else self.idle_poll
                except PushError as exc:
                    self.failures += 1
                    self.last_error = str(exc)
                    delay = backoff_delay(
                        self.failures, base=1.0, maximum=self.max_backoff, rand=self.rand
                    )
                    log.warning(
                        "push.failed", extra={"error": str(exc), "retry_in": round(delay, 2)}
                    )
                if delay and await self.clock.wait_or_stop(stopping, delay):
                    return

    async def deliver_once(self, session: aiohttp.ClientSession) -> int:
        """Send the oldest unsent batch; how many events were acknowledged."""
        events = await self.journal.unsent_events(limit=self.batch)
        if not events:
            return 0
        seqs = [e.seq for e in events]
        try:
            msg_id = f"evt_{self.node}_{seqs[0]}-{seqs[-1]}"
            await self._post(session, events_body(self.node, events), msg_id=msg_id)
        except PushError:
            await self.journal.note_attempt(seqs)
            raise
        await self.journal.mark_sent(seqs, now=self.clock.now())
        self.delivered += len(seqs)
        log.info("push.delivered", extra={"events": len(seqs), "last_seq": seqs[-1]})
        return len(seqs)

    async def heartbeat(self, session: aiohttp.ClientSession) -> None:
        """Send a heartbeat; push the whole guest table when the answer asks for it."""
        last_seq, unsent = await self.journal.outbox_position()
        state_hash = await self.state_hash()
        answer = await self._post(
            session, heartbeat_body(self.node, state_hash, last_seq, unsent, self.clock.now())
        )
        if wants_full_sync(answer):
            guests = [guest_to_dict(g) for g in await self.journal.all_guests()]
            await self._post(
                session, full_sync_body(self.node, guests, state_hash, last_seq, self.clock.now())
            )
            log.info("push.full_sync", extra={"guests": len(guests)})

    async def _post(
        self, session: aiohttp.ClientSession, body: dict[str, Any], *, msg_id: str | None = None
    ) -> Any:
        data = json.dumps(body, separators=(",", ":")).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self._secret is not None:
            msg_id = msg_id or f"msg_{secrets.token_hex(12)}"
            headers |= webhook_headers(self._secret, msg_id, int(self.clock.now()), data)
        try:
            async with session.post(self.url, data=data, headers=headers) as resp:
                if not 200 <= resp.status < 300:
                    raise PushError(f"{body['type']}: HTTP {resp.status}")
                if resp.content_type == "application/json":
                    return await resp.json()
                return None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise PushError(f"{body['type']}: {type(exc).__name__}: {exc}") from None
