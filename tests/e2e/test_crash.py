"""SIGKILL the real daemon at random moments of a mixed workload; nothing is lost or doubled."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from crash_support import TOKEN_USER, Daemon, Sim, wait_for

from lifecycled.audit import AuditRecord, Decision
from lifecycled.domain.actions import Action, fingerprint_of, spec_for
from lifecycled.domain.guests import GuestOrigin, GuestRecord
from lifecycled.domain.op import GuestKind, GuestRef, Op, Origin
from lifecycled.journal import Journal, SubmitRequest

pytestmark = pytest.mark.timeout(240)

ONE_SHOT = {"reboot", "reset"}


def plan_workload(sim: Sim, rng: random.Random) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """One op per plain guest: (action, guest resource, params)."""
    plan = []
    for res in sorted(sim.api("/cluster/resources?type=vm"), key=lambda r: r["vmid"]):
        if res.get("template") or res.get("hastate"):
            continue
        config = sim.api(f"/nodes/{res['node']}/{res['type']}/{res['vmid']}/config")
        if str(config.get("protection", 0)) == "1":
            continue
        res["config"] = config
        qemu = res["type"] == "qemu"
        if res["status"] == "running":
            choices = ["shutdown", "stop", "reboot", "configure"] + (["reset"] if qemu else [])
        else:
            choices = ["start", "start", "resize", "terminate", "configure"]
        action = rng.choice(choices)
        params: dict[str, Any] = {}
        if action == "configure":
            params = {"cores": rng.randint(2, 8)}
        elif action == "resize":
            disk = "scsi0" if qemu else "rootfs"
            params = {"disk": disk, "size": "100G"}
        plan.append((action, res, params))
    return plan


async def manage(journal: Journal, guest: GuestRef, config: dict[str, Any]) -> None:
    """Take the guest under management (lifecycled only acts on managed guests)."""
    now = time.time()
    rec = GuestRecord(
        vmid=guest.vmid,
        node=guest.node,
        kind=guest.kind,
        origin=GuestOrigin.NATIVE,
        fingerprint=fingerprint_of(guest.kind, config),
        created_at=now,
        updated_at=now,
    )
    audit = AuditRecord(
        at=now, actor="cli", action="manage", decision=Decision.MANAGED, reason="crash test"
    )
    await journal.take_guest(rec, audit=audit, now=now)


async def submit_all(db: Path, plan: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> None:
    async with await Journal.open(db) as journal:
        for i, (action, res, params) in enumerate(plan):
            guest = GuestRef(node=res["node"], kind=GuestKind(res["type"]), vmid=int(res["vmid"]))
            await manage(journal, guest, res["config"])
            await journal.submit(
                SubmitRequest(
                    idempotency_key=f"crash-{i}",
                    action=action,
                    guest=guest,
                    params=params,
                    origin=Origin.CLI,
                    actor="cli",
                ),
                now=time.time(),
            )


async def read_ops(db: Path) -> tuple[list[Op], dict[int, set[str]], list[str]]:
    async with await Journal.open(db, create=False) as journal:
        ops = (await journal.list_ops(limit=500)).items
        upids = {op.id: {h.upid for h in await journal.history(op.id) if h.upid} for op in ops}
        check = await journal.integrity_check()
    return ops, upids, check


def proxmox_state(sim: Sim) -> dict[int, dict[str, Any]]:
    """Every guest as Proxmox shows it, with its config (read before the simulator stops)."""
    state = {}
    for g in sim.api("/cluster/resources?type=vm"):
        g["config"] = sim.api(f"/nodes/{g['node']}/{g['type']}/{g['vmid']}/config")
        state[int(g["vmid"])] = g
    return state


def target_holds(state: dict[int, dict[str, Any]], op: Op) -> bool:
    guest = state.get(op.guest.vmid)
    if op.action == "terminate":
        return guest is None
    if guest is None:
        return False
    if op.action == "start":
        return bool(guest["status"] == "running")
    if op.action in ("stop", "shutdown"):
        return bool(guest["status"] == "stopped")
    if op.action == "configure":
        return str(guest["config"].get("cores")) == str(op.params["cores"])
    return True


def test_sigkill_at_random_moments_loses_and_doubles_nothing(tmp_path: Path) -> None:
    """Kill -9 the daemon repeatedly mid-workload: every op ends terminal, none is lost,
    none is dispatched twice, the journal is intact, and Proxmox holds what the journal says."""
    rng = random.Random(1234)
    sim = Sim(tmp_path, guests=40, task_seconds=0.6)
    db = tmp_path / "journal.sqlite3"
    daemon = Daemon(tmp_path, sim, db)
    try:
        plan = plan_workload(sim, rng)
        assert len(plan) >= 25
        asyncio.run(submit_all(db, plan))
        kills = 0
        for _ in range(8):
            daemon.start(wait_ready=False)
            time.sleep(rng.uniform(0.3, 2.0))
            daemon.kill()
            kills += 1
        daemon.start()
        wait_for(
            lambda: all(op.state.is_terminal for op in asyncio.run(read_ops(db))[0]),
            90,
            "all ops terminal",
            daemon.proc,
            daemon.log,
        )
        assert daemon.stop() == 0
        ops, upids, check = asyncio.run(read_ops(db))
        requests = sim.control("/requests")
        state = proxmox_state(sim)
    finally:
        daemon.stop() if daemon.proc is not None and daemon.proc.poll() is None else None
        sim.stop()

    assert check == ["ok"]
    assert len(ops) == len(plan), "an op was lost"
    assert all(op.state.is_terminal for op in ops)
    items = requests["items"] if isinstance(requests, dict) else requests
    created = [r["upid"] for r in items if r.get("upid") and f":{TOKEN_USER}:" in r["upid"]]
    journaled = set().union(*upids.values())
    assert set(created) <= journaled, (
        f"tasks Proxmox ran that the journal never recorded: {set(created) - journaled}"
    )
    per_op: Counter[int] = Counter()
    for op in ops:
        spec = spec_for(op.guest.kind, Action(op.action))
        tasks = {u for u in created if u in upids[op.id]}
        per_op[op.id] = len(tasks)
        if op.action in ONE_SHOT:
            assert len(tasks) <= 1, f"one-shot op {op.id} dispatched {len(tasks)} times"
        if op.state.value == "succeeded" and spec.convergent:
            assert target_holds(state, op), (
                f"op {op.id} {op.action} succeeded but Proxmox disagrees"
            )
    # No faults were injected: no op needed a second task.
    assert max(per_op.values()) <= 1, per_op.most_common(3)
    print(
        f"crash campaign: {len(ops)} ops, {kills} kills, {len(created)} tasks, 0 lost, 0 duplicated; "
        f"{Counter(op.state.value for op in ops)}"
    )
