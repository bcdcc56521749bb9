"""Helpers for the HTTP API tests: a Runtime with its web server on port 0, a real client."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import attrs
from engine_support import seed_guests

from lifecycled.config import Settings
from lifecycled.domain.states import OpState
from lifecycled.engine.runtime import Runtime
from lifecycled.pve.auth import TokenAuth
from lifecycled.pve.http import HttpPveClient
from lifecycled.sim import Guest, SimServer
from lifecycled.web import start_web

#: A token file: alice (admin), bob and an unnamed token in the older role-less forms (admin),
#: a read and an operate token, a comment and a blank line.
TOKEN_FILE_TEXT = (
    "# API tokens\nalice:admin:alice-secret-0001\n\nbob:bob-secret-00002\n"
    "plain-secret-000003\nreader:read:reader-secret-0004\noperator:operate:operator-secret-05\n"
)
ALICE = {"Authorization": "Bearer alice-secret-0001"}
BOB = {"Authorization": "Bearer bob-secret-00002"}
UNNAMED = {"Authorization": "Bearer plain-secret-000003"}
READER = {"Authorization": "Bearer reader-secret-0004"}
OPERATOR = {"Authorization": "Bearer operator-secret-05"}


def pve_client(server: SimServer) -> HttpPveClient:
    user, _, secret = server.sim.cfg.token.partition("=")
    return HttpPveClient(server.url, auth=TokenAuth(user=user, secret=secret))


def web_settings(
    tmp_path: Path, server: SimServer, *, tokens: str | None = TOKEN_FILE_TEXT, **overrides: Any
) -> Settings:
    """Fast engine timings, a fresh journal, the API on 127.0.0.1 port 0."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    token_file: Path | None = None
    if tokens is not None:
        token_file = tmp_path / "api-tokens"
        token_file.write_text(tokens, encoding="utf-8")
        token_file.chmod(0o600)
    values: dict[str, Any] = {
        "db": tmp_path / "journal.sqlite3",
        "listen": "127.0.0.1:0",
        "node": ",".join(server.sim.cfg.nodes),  # one daemon serving every node
        "pve_url": server.url,
        "api_token_file": token_file,
        "workers": 2,
        "node_cap": 4,
        "max_retries": 2,
        "retry_backoff": 0.05,
        "max_backoff": 0.1,
        "lock_wait_max": 20.0,
        "poll_interval": 0.1,
        "stale_after": 120.0,
        "reconcile_on_start": False,
        # Tests of other rules send many writes quickly; the write-rate tests set their own.
        "write_rate": 10_000.0,
        "write_burst": 100_000,
    }
    values.update(overrides)
    return Settings(**values)


@attrs.define(kw_only=True)
class WebEnv:
    """A served runtime and an HTTP client (authenticated as alice unless told otherwise)."""

    runtime: Runtime
    server: SimServer
    http: aiohttp.ClientSession
    url: str

    async def op_count(self) -> int:
        counts = await self.runtime.journal.counts_by_state()
        return sum(counts.values())

    async def submit(
        self, body: Mapping[str, Any], *, headers: Mapping[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        async with self.http.post("/v1/ops", json=dict(body), headers=headers) as resp:
            return resp.status, await resp.json()

    async def get_json(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with self.http.get(path, **kwargs) as resp:
            return resp.status, await resp.json()

    async def wait_state(
        self, op_id: int, done: Callable[[str], bool] | None = None, within: float = 20.0
    ) -> dict[str, Any]:
        """Poll ``GET /v1/ops/{id}`` until ``done(state)`` (default: a terminal state)."""
        terminal = {str(s) for s in OpState if s.is_terminal}
        check = done if done is not None else terminal.__contains__
        async with asyncio.timeout(within):
            while True:
                status, body = await self.get_json(f"/v1/ops/{op_id}")
                assert status == 200, body
                if check(body["state"]):
                    return dict(body)
                await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def serving(
    server: SimServer,
    tmp_path: Path,
    *,
    run: bool = True,
    tokens: str | None = TOKEN_FILE_TEXT,
    headers: Mapping[str, str] | None = None,
    manage_guests: bool = True,
    **overrides: Any,
) -> AsyncIterator[WebEnv]:
    """A Runtime serving its API on port 0.

    ``run``: the whole runtime runs (Recover, dispatchers, tracker; the API comes up first,
    ``ready`` once Recover finished). Otherwise only the web server runs: ops stay pending.
    ``manage_guests``: every simulator guest is recorded as ``native`` first (lifecycled
    only acts on managed guests).
    """
    settings = web_settings(tmp_path, server, tokens=tokens, **overrides)
    if manage_guests:
        await seed_guests(settings.db, server.sim.guests.values())
    runtime = await Runtime.build(settings, pve=pve_client(server))
    task: asyncio.Task[None] | None = None
    stop_web: Callable[[], Awaitable[None]] | None = None
    try:
        if run:
            task = asyncio.create_task(runtime.run(web=start_web), name="runtime")
            async with asyncio.timeout(10):
                await runtime.ready.wait()
        else:
            stop_web = await start_web(runtime)
        assert runtime.web_url is not None
        default_headers = dict(ALICE if headers is None and tokens is not None else headers or {})
        async with aiohttp.ClientSession(base_url=runtime.web_url, headers=default_headers) as http:
            yield WebEnv(runtime=runtime, server=server, http=http, url=runtime.web_url)
    finally:
        runtime.request_stop()
        try:
            if task is not None:
                await asyncio.wait_for(task, 15)
            if stop_web is not None:
                await stop_web()
        finally:
            await runtime.close()


def pick(server: SimServer, kind: str, running: bool, *, avoid: set[int] | None = None) -> Guest:
    """A plain guest (no HA, unprotected, no template, no lock) of that kind and power state."""
    for guest in sorted(server.sim.guests.values(), key=lambda g: g.vmid):
        if guest.kind != kind or guest.running != running or guest.ha is not None:
            continue
        if guest.template or str(guest.config.get("protection", 0)) == "1" or guest.lock:
            continue
        if avoid is not None:
            if guest.vmid in avoid:
                continue
            avoid.add(guest.vmid)
        return guest
    raise LookupError(f"no spare {'running' if running else 'stopped'} {kind} guest")


def posts_to(server: SimServer, vmid: int, suffix: str) -> list[str]:
    """The POSTs the simulator received for one guest's path ending in ``suffix``."""
    return [
        f"{r.method} {r.path}"
        for r in server.sim.requests
        if r.method == "POST" and f"/{vmid}/" in r.path and r.path.endswith(suffix)
    ]
