"""Helpers for engine tests: a running Runtime against an in-process simulator.

The set-up every engine test shares lives here, once: the settings (:func:`fast_settings`,
:func:`seeded`), the Proxmox client (:func:`client_for`), the runtime harness (:func:`running`
for the usual case, :func:`started` to bring your own settings and client), ops written
straight into the journal past every check of the HTTP door (:func:`journal_op`) or as a
SIGKILL leaves them (:func:`crash_journal`), and the simulator reads tests assert on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import attrs

from lifecycled.config import Settings
from lifecycled.domain.actions import fingerprint_of
from lifecycled.domain.guests import (
    DesiredState,
    GuestOrigin,
    GuestRecord,
    guest_name,
    observed_from,
)
from lifecycled.domain.op import GuestKind, GuestRef, Op, Origin
from lifecycled.engine.clock import Clock
from lifecycled.engine.runtime import Runtime
from lifecycled.engine.submit import Submission
from lifecycled.journal import Journal, SubmitRequest
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


def token_auth(server: SimServer) -> TokenAuth:
    """The simulator's API token as lifecycled presents it."""
    user, _, secret = server.sim.cfg.token.partition("=")
    return TokenAuth(user=user, secret=secret)


def client_for(server: SimServer) -> HttpPveClient:
    """lifecycled's Proxmox client, logged in with the simulator's API token."""
    return HttpPveClient(server.url, auth=token_auth(server))


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


async def seeded(
    server: SimServer, tmp_path: Path, *, guests: Iterable[Guest] | None = None, **overrides: Any
) -> Settings:
    """:func:`fast_settings` on a journal where ``guests`` (default: every simulator guest)
    are already managed: the set-up of a test that writes the journal before the daemon starts."""
    settings = fast_settings(tmp_path, server, **overrides)
    await seed_guests(settings.db, server.sim.guests.values() if guests is None else guests)
    return settings


@contextlib.asynccontextmanager
async def started(
    settings: Settings, pve: HttpPveClient, *, clock: Clock | None = None
) -> AsyncIterator[tuple[Runtime, asyncio.Task[None]]]:
    """A Runtime built from ``settings`` and running (Recover done, dispatchers and tracker
    running) until the block ends; with the task that runs it, so a test can check that the
    daemon is still up. The runtime closes ``pve``."""
    runtime = await Runtime.build(settings, pve=pve, clock=clock)
    task = asyncio.create_task(runtime.run(), name="runtime")
    try:
        await asyncio.wait_for(runtime.ready.wait(), 10)
        yield runtime, task
    finally:
        runtime.request_stop()
        try:
            await asyncio.wait_for(task, 15)
        finally:
            await runtime.close()


@contextlib.asynccontextmanager
async def running(
    server: SimServer, tmp_path: Path, *, manage_guests: bool = True, **overrides: Any
) -> AsyncIterator[Runtime]:
    """A Runtime (Recover done, dispatchers and tracker running) on a fresh journal.

    ``manage_guests``: every simulator guest is recorded as ``native`` first (see
    :func:`seed_guests`). ``clock=``: the runtime's :class:`Clock` (default: the real one);
    every other keyword is a setting.
    """
    clock: Clock | None = overrides.pop("clock", None)
    settings = fast_settings(tmp_path, server, **overrides)
    if manage_guests:
        await seed_guests(settings.db, server.sim.guests.values())
    async with started(settings, client_for(server), clock=clock) as (runtime, _task):
        yield runtime


async def journal_op(
    journal: Journal,
    guest: Guest,
    action: str,
    key: str,
    params: Mapping[str, Any] | None = None,
    *,
    now: float | None = None,
    node: str | None = None,
    vmid: int | None = None,
) -> Op:
    """An op for ``action`` on ``guest`` written with the journal's own verb, bypassing every
    check of the HTTP door (as a less careful door, or an older version, could have journaled
    it). ``node``, ``vmid``: another target of that kind, e.g. a clone's new vmid or a node no
    request can carry."""
    request = SubmitRequest(
        idempotency_key=key,
        action=action,
        guest=GuestRef(
            node=guest.node if node is None else node,
            kind=GuestKind(guest.kind),
            vmid=guest.vmid if vmid is None else vmid,
        ),
        params=dict(params or {}),
        origin=Origin.API,
        actor="test",
    )
    result = await journal.submit(request, now=time.time() if now is None else now)
    return result.op


@attrs.frozen(kw_only=True)
class Crashed:
    """One op as a SIGKILL left it: claimed (``dispatching``), maybe with a UPID."""

    guest: Guest
    action: str
    upid: str | None = None


async def crash_journal(db: Path, ops: Iterable[Crashed], *, claimed_at: float) -> dict[int, int]:
    """Journal ``ops`` claimed at ``claimed_at`` (and ``running`` when a UPID is given),
    as a daemon killed at that point leaves them; returns op id by vmid."""
    ids: dict[int, int] = {}
    async with await Journal.open(db) as journal:
        for n, item in enumerate(ops):
            op = await journal_op(
                journal, item.guest, item.action, f"crashed-{n}", now=claimed_at - 1
            )
            claimed = await journal.claim_next(now=claimed_at)
            assert claimed is not None and claimed.id == op.id
            if item.upid is not None:
                await journal.record_upid(op.id, item.upid, now=claimed_at + 0.5)
            ids[item.guest.vmid] = op.id
    return ids


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
