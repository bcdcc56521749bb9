"""Helpers for engine tests: a running Runtime against an in-process simulator."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

from lifecycled.config import Settings
from lifecycled.domain.actions import fingerprint_of
from lifecycled.domain.guests import (
    DesiredState,
    GuestOrigin,
    GuestRecord,
    guest_name,
    observed_from,
)
from lifecycled.domain.op import GuestKind, Op
from lifecycled.engine.runtime import Runtime
from lifecycled.engine.submit import Submission
from lifecycled.journal import Journal
from lifecycled.journal.guests import insert_guest
from lifecycled.pve.auth import TokenAuth
from lifecycled.pve.http import HttpPveClient
from lifecycled.sim import SimServer
from lifecycled.sim.model import Guest

WRITES = ("POST", "PUT", "DELETE")


def is_record_write(method: str, path: str, params: dict[str, Any]) -> bool:
    """A write of the cluster's shared record alone (SPEC §7: a guest's ``PUT …/config`` with
    ``tags`` and ``digest``, or a node's published lifecycle state, ``PUT /nodes/{node}/config``
    with ``description``) — it changes no guest, so write-counting tests leave it out."""
    if method != "PUT" or not path.endswith("/config"):
        return False
    return set(params) <= {"tags", "digest"} or set(params) <= {"description", "digest"}


def guest_writes(method: str, path: str, params: dict[str, Any]) -> bool:
    """A mutating request that changes a guest (not its ownership record)."""
    return method in WRITES and not is_record_write(method, path, params)


def client_for(server: SimServer) -> HttpPveClient:
    user, _, secret = server.sim.cfg.token.partition("=")
    return HttpPveClient(server.url, auth=TokenAuth(user=user, secret=secret))


def fast_settings(tmp_path: Path, server: SimServer, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "db": tmp_path / "journal.sqlite3",
        "node": ",".join(server.sim.cfg.nodes),  # one daemon serving every node
        "pve_url": server.url,
        "workers": 2,
        "node_cap": 4,
        "max_retries": 3,
        "retry_backoff": 0.05,
        "max_backoff": 0.2,
        "lock_wait_max": 20.0,
        "poll_interval": 0.2,
        "stale_after": 120.0,
        "reconcile_on_start": False,
    }
    values.update(overrides)
    return Settings(**values)


def record_of(guest: Guest, origin: str = "native", *, now: float = 0.0) -> GuestRecord:
    """The guests row ``manage``/``adopt`` would record, built from the simulator's state
    (no Proxmox read, so it works with a node offline)."""
    kind = GuestKind(guest.kind)
    observed = observed_from(guest.qmpstatus if guest.running else "stopped", guest.lock)
    return GuestRecord(
        vmid=guest.vmid,
        node=guest.node,
        kind=kind,
        origin=GuestOrigin(origin),
        name=guest_name(kind, guest.config),
        desired_state={"running": DesiredState.RUNNING, "stopped": DesiredState.STOPPED}.get(
            str(observed)
        ),
        observed_state=observed,
        observed_at=now,
        lock=guest.lock,
        fingerprint=fingerprint_of(kind, guest.config),
        config_snapshot=dict(guest.config),
        config_digest=guest.digest(),
        snapshot_at=now,
        created_at=now,
        updated_at=now,
    )


async def seed_guests(db: Path, guests: Iterable[Guest], origin: str = "native") -> None:
    """Write managed rows for ``guests`` straight into the journal at ``db`` (test set-up: no
    audit records, no Proxmox reads). lifecycled only acts on managed guests."""
    now = time.time()
    async with await Journal.open(db) as journal:
        for guest in guests:
            if await journal.find_guest(guest.vmid) is None:
                await journal._store.write(
                    partial(insert_guest, rec=record_of(guest, origin, now=now))
                )


async def manage(runtime: Runtime, guest: Guest, origin: str = "native") -> GuestRecord:
    """Take one simulator guest under management the way ``lifecycled guests manage|adopt``
    does (a Proxmox read, an audit record)."""
    result = await runtime.guests.take(guest.vmid, GuestOrigin(origin), actor="test")
    return result.guest


@contextlib.asynccontextmanager
async def running(
    server: SimServer, tmp_path: Path, *, manage_guests: bool = True, **overrides: Any
) -> AsyncIterator[Runtime]:
    """A Runtime (Recover done, dispatchers and tracker running) on a fresh journal.

    ``manage_guests``: every simulator guest is recorded as ``native`` first (see
    :func:`seed_guests`).
    """
    settings = fast_settings(tmp_path, server, **overrides)
    if manage_guests:
        await seed_guests(settings.db, server.sim.guests.values())
    runtime = await Runtime.build(settings, pve=client_for(server))
    task = asyncio.create_task(runtime.run(), name="runtime")
    try:
        await asyncio.wait_for(runtime.ready.wait(), 10)
        yield runtime
    finally:
        runtime.request_stop()
        try:
            await asyncio.wait_for(task, 15)
        finally:
            await runtime.close()


async def submit(
    runtime: Runtime, action: str, guest: Guest, key: str | None = None, **params: Any
) -> Op:
    result = await runtime.submit(
        Submission(
            action=action,
            vmid=guest.vmid,
            kind=guest.kind,
            node=guest.node,
            params=params,
            idempotency_key=key,
        )
    )
    return result.op


async def wait_terminal(runtime: Runtime, op_id: int, within: float = 20.0) -> Op:
    async with asyncio.timeout(within):
        while True:
            op = await runtime.journal.get(op_id)
            if op.state.is_terminal:
                return op
            await asyncio.sleep(0.05)


def pick(
    server: SimServer,
    kind: str,
    running: bool,
    *,
    avoid: set[int] | None = None,
    where: Callable[[Guest], bool] | None = None,
) -> Guest:
    """A plain guest (no HA, no protection, not a template) of that kind and power state."""
    for guest in sorted(server.sim.guests.values(), key=lambda g: g.vmid):
        if guest.kind != kind or guest.running != running or guest.ha is not None:
            continue
        if guest.template or str(guest.config.get("protection", 0)) == "1" or guest.lock:
            continue
        if avoid and guest.vmid in avoid:
            continue
        if where is not None and not where(guest):
            continue
        if avoid is not None:
            avoid.add(guest.vmid)
        return guest
    raise LookupError(
        f"no spare {'running' if running else 'stopped'} {kind} guest in the simulator"
    )


def writes_to(server: SimServer, vmid: int, suffix: str = "") -> list[str]:
    """Mutating requests the simulator received for one guest (method + path)."""
    return [
        f"{r.method} {r.path}"
        for r in server.sim.requests
        if guest_writes(r.method, r.path, r.params)
        and f"/{vmid}" in r.path
        and r.path.endswith(suffix)
    ]
