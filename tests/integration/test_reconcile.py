"""Reconcile against the simulator (SPEC §3): out-of-band changes, LOST, discovery, drift."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from engine_support import guest_writes, manage, pick, running, submit, wait_terminal

from lifecycled.domain.guests import DesiredState, GuestOrigin, ObservedState
from lifecycled.domain.op import Origin
from lifecycled.domain.states import OpState
from lifecycled.engine.runtime import Runtime
from lifecycled.engine.status import status
from lifecycled.errors import PolicyRefused
from lifecycled.sim import SimServer
from lifecycled.sim.model import Guest


def on_pve1(sim: SimServer, kind: str, running_now: bool, avoid: set[int] | None = None) -> Guest:
    return pick(sim, kind, running_now, avoid=avoid, where=lambda g: g.node == "pve1")


def writes_since(sim: SimServer, seq: int) -> list[str]:
    return [
        f"{r.method} {r.path}"
        for r in sim.sim.requests_since(seq)
        if guest_writes(r.method, r.path, r.params)
    ]


def last_seq(sim: SimServer) -> int:
    return sim.sim.requests[-1].seq if sim.sim.requests else 0


def metric(rt: Runtime, name: str, **labels: str) -> float:
    value = rt.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_guest_stopped_out_of_band_is_started_again_when_desired_running(
    sim: SimServer, tmp_path: Path
) -> None:
    """Desired running, stopped behind lifecycled's back → one reconcile start, then converged."""
    guest = on_pve1(sim, "qemu", True)
    async with running(sim, tmp_path, manage_guests=False) as rt:
        rec = await manage(rt, guest)
        assert rec.desired_state is DesiredState.RUNNING
        sim.sim.set_guest_status(guest.vmid, "stopped")
        report = await rt.reconciler.pass_once()
        assert [(c["vmid"], c["action"]) for c in report.enqueued] == [(guest.vmid, "start")]
        op = await wait_terminal(rt, report.enqueued[0]["op_id"])
        assert op.state is OpState.SUCCEEDED and op.origin is Origin.RECONCILE
        assert op.idempotency_key == f"reconcile:{guest.vmid}:{rec.desired_generation}:start:1"
        again = await rt.reconciler.pass_once()
        assert again.enqueued == []
        assert (
            metric(rt, "lifecycled_reconcile_commands_total", action="start", outcome="enqueued")
            == 1
        )
        assert metric(rt, "lifecycled_reconcile_runs_total", outcome="ok") == 2
    assert sim.sim.guests[guest.vmid].running


async def test_guest_stopped_out_of_band_is_left_alone_when_desired_stopped(
    sim: SimServer, tmp_path: Path
) -> None:
    """Desired stopped and stopped out of band: reconcile sends nothing at all."""
    guest = on_pve1(sim, "qemu", True)
    async with running(sim, tmp_path, manage_guests=False) as rt:
        await manage(rt, guest)
        await rt.guests.set_desired(guest.vmid, DesiredState.STOPPED, actor="test")
        # the desired change alone is not acted on until a pass: stop it out of band first
        sim.sim.set_guest_status(guest.vmid, "stopped")
        seq = last_seq(sim)
        report = await rt.reconciler.pass_once()
        assert report.enqueued == []
        assert writes_since(sim, seq) == []
        assert (await rt.journal.get_guest(guest.vmid)).observed_state is ObservedState.STOPPED
    assert not sim.sim.guests[guest.vmid].running


async def test_desired_stopped_running_guest_gets_a_shutdown(
    sim: SimServer, tmp_path: Path
) -> None:
    """PUT-desired stopped on a running managed guest: the next pass shuts it down."""
    guest = on_pve1(sim, "qemu", True)
    async with running(sim, tmp_path, manage_guests=False) as rt:
        await manage(rt, guest)
        await rt.guests.set_desired(guest.vmid, DesiredState.STOPPED, actor="test")
        report = await rt.reconciler.pass_once()
        assert [c["action"] for c in report.enqueued] == ["shutdown"]
        op = await wait_terminal(rt, report.enqueued[0]["op_id"])
    assert op.state is OpState.SUCCEEDED
    assert not sim.sim.guests[guest.vmid].running


async def test_reconciles_forced_shutdown_of_a_protected_guest_is_exempt_but_audited(
    sim: SimServer, tmp_path: Path
) -> None:
    """Reconcile's own forced shutdown (a destructive variant) of a guest with the Proxmox
    protection flag is not refused, and it is audited as allowed with actor reconcile."""
    guest = on_pve1(sim, "qemu", True)
    async with running(sim, tmp_path, manage_guests=False) as rt:
        await manage(rt, guest)
        guest.config["protection"] = 1
        await rt.guests.set_desired(guest.vmid, DesiredState.STOPPED, actor="test")
        report = await rt.reconciler.pass_once()
        op = await wait_terminal(rt, report.enqueued[0]["op_id"])
        allowed = (await rt.journal.list_audit(vmid=guest.vmid, decision="allowed")).items
    assert op.params == {"force_stop": True}
    assert op.state is OpState.SUCCEEDED
    assert not sim.sim.guests[guest.vmid].running
    assert [(r.actor, r.action, r.reason) for r in allowed] == [
        ("reconcile", "shutdown", "destructive op allowed by policy (power_kill)")
    ]


async def test_guest_deleted_out_of_band_is_lost_never_recreated_and_found_again(
    sim: SimServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Gone with no terminate in flight → LOST (critical log, metric, audit), kept and never
    recreated; it leaves LOST only when it reappears with the same fingerprint."""
    guest = on_pve1(sim, "qemu", False)
    config = dict(guest.config)
    async with running(sim, tmp_path, manage_guests=False) as rt:
        await manage(rt, guest)
        sim.sim.delete_guest(guest.vmid)
        seq = last_seq(sim)
        with caplog.at_level(logging.INFO, logger="lifecycled.reconcile"):
            report = await rt.reconciler.pass_once()
            await rt.reconciler.pass_once()  # a second pass reports nothing new
        assert report.lost == [guest.vmid]
        critical = [r for r in caplog.records if r.getMessage() == "guest.lost"]
        assert len(critical) == 1 and critical[0].levelno == logging.CRITICAL
        assert metric(rt, "lifecycled_orphans_total", kind="anomalous") == 1
        row = await rt.journal.get_guest(guest.vmid)
        assert row.observed_state is ObservedState.LOST and row.lost_at is not None
        assert row.origin is GuestOrigin.NATIVE  # the record is kept
        audit = (await rt.journal.list_audit(vmid=guest.vmid, decision="lost")).items
        assert len(audit) == 1 and audit[0].actor == "reconcile"
        assert writes_since(sim, seq) == []  # never recreated
        assert metric(rt, "lifecycled_guests", origin="native", observed="LOST") == 1

        # another guest at that vmid is not ours: it stays LOST
        sim.sim.create_guest(guest.vmid, "qemu", "pve1", "stopped", {"name": "impostor"})
        with caplog.at_level(logging.INFO, logger="lifecycled.reconcile"):
            await rt.reconciler.pass_once()
        assert (await rt.journal.get_guest(guest.vmid)).observed_state is ObservedState.LOST
        assert any(r.getMessage() == "guest.vmid_reused" for r in caplog.records)

        # the same guest back (same uuid, ctime, name): it leaves LOST
        sim.sim.delete_guest(guest.vmid)
        sim.sim.create_guest(guest.vmid, "qemu", "pve1", "stopped", config)
        report = await rt.reconciler.pass_once()
        assert report.found == [guest.vmid]
        row = await rt.journal.get_guest(guest.vmid)
        assert row.observed_state is ObservedState.STOPPED and row.lost_at is None
        assert len((await rt.journal.list_audit(vmid=guest.vmid, decision="found")).items) == 1


async def test_terminated_guest_is_an_expected_orphan_not_lost(
    sim: SimServer, tmp_path: Path
) -> None:
    """A guest lifecycled destroyed is missing as expected (desired absent), never LOST."""
    guest = on_pve1(sim, "lxc", False)
    async with running(sim, tmp_path, manage_guests=False) as rt:
        await manage(rt, guest)
        op = await submit(rt, "terminate", guest, key="t")
        assert (await wait_terminal(rt, op.id)).state is OpState.SUCCEEDED
        report = await rt.reconciler.pass_once()
        assert report.lost == [] and guest.vmid in report.missing
        assert metric(rt, "lifecycled_orphans_total", kind="expected") == 1
        row = await rt.journal.get_guest(guest.vmid)
    assert row.observed_state is ObservedState.MISSING
    assert row.desired_state is DesiredState.ABSENT


async def test_unmanaged_guests_become_discovered_and_ops_for_them_are_refused(
    sim: SimServer, tmp_path: Path
) -> None:
    """The node's guests are listed as discovered; an op for one is refused (nothing written)."""
    guest = on_pve1(sim, "qemu", False)
    async with running(sim, tmp_path, manage_guests=False, node="pve1") as rt:
        report = await rt.reconciler.pass_once()
        on_node = sorted(g.vmid for g in sim.sim.guests.values() if g.node == "pve1")
        assert report.discovered == on_node
        rows = (await rt.journal.list_guests(origin=GuestOrigin.DISCOVERED, limit=100)).items
        assert [g.vmid for g in rows] == on_node
        with pytest.raises(PolicyRefused) as refused:
            await submit(rt, "start", guest, key="nope")
        assert refused.value.code == "guest_not_managed"
        assert sum((await rt.journal.counts_by_state()).values()) == 0
    assert not sim.sim.guests[guest.vmid].running


async def test_manage_discovered_adopts_every_new_guest_of_the_node(
    sim: SimServer, tmp_path: Path
) -> None:
    """--manage-discovered adopted: the first pass adopts the node's guests (snapshot taken)."""
    async with running(
        sim, tmp_path, manage_guests=False, manage_discovered="adopted", node="pve1"
    ) as rt:
        report = await rt.reconciler.pass_once()
        on_node = sorted(g.vmid for g in sim.sim.guests.values() if g.node == "pve1")
        assert report.managed == on_node and report.discovered == []
        rows = (await rt.journal.list_guests(origin=GuestOrigin.ADOPTED, limit=100)).items
        assert [g.vmid for g in rows] == on_node
        assert all(g.config_snapshot and g.config_digest for g in rows)
        audits = (await rt.journal.list_audit(decision="adopted", limit=100)).items
        assert {a.actor for a in audits} == {"reconcile"} and len(audits) == len(on_node)


async def test_ha_managed_guest_is_never_fought(sim: SimServer, tmp_path: Path) -> None:
    """An HA-managed guest that differs from its desired state is skipped, nothing sent."""
    guest = next(g for g in sim.sim.guests.values() if g.ha is not None and g.node == "pve1")
    async with running(sim, tmp_path, manage_guests=False) as rt:
        await manage(rt, guest)
        wanted = DesiredState.STOPPED if guest.running else DesiredState.RUNNING
        await rt.guests.set_desired(guest.vmid, wanted, actor="test")
        seq = last_seq(sim)
        report = await rt.reconciler.pass_once()
        assert report.enqueued == []
        assert any(s["vmid"] == guest.vmid and "HA" in s["reason"] for s in report.skipped)
        assert writes_since(sim, seq) == []


async def test_config_drift_is_reported_never_corrected(sim: SimServer, tmp_path: Path) -> None:
    """An out-of-band config change on an adopted guest is drift: metric, listing, no write."""
    guest = on_pve1(sim, "qemu", False)
    async with running(sim, tmp_path, manage_guests=False) as rt:
        await manage(rt, guest, "adopted")
        assert (await rt.reconciler.pass_once()).drifted == []
        sim.sim.update_config(guest.vmid, {"cores": 7})
        seq = last_seq(sim)
        report = await rt.reconciler.pass_once()
        assert report.drifted == [guest.vmid]
        assert writes_since(sim, seq) == []
        drifted = (await rt.journal.list_guests(drifted=True)).items
        assert [g.vmid for g in drifted] == [guest.vmid]
        assert metric(rt, "lifecycled_config_drift") == 1
        assert status(rt)["reconcile"]["drifted"] == [guest.vmid]
    assert str(sim.sim.guests[guest.vmid].config["cores"]) == "7"


async def test_lifecycleds_own_config_change_is_not_drift(sim: SimServer, tmp_path: Path) -> None:
    """After a configure op lifecycled ran, the snapshot is re-taken: no drift."""
    guest = on_pve1(sim, "qemu", False)
    async with running(sim, tmp_path, manage_guests=False) as rt:
        await manage(rt, guest)
        op = await submit(rt, "configure", guest, key="cfg", cores=5)
        assert (await wait_terminal(rt, op.id)).state is OpState.SUCCEEDED
        await rt.reconciler.pass_once()  # re-baselines
        report = await rt.reconciler.pass_once()
        assert report.drifted == []
        row = await rt.journal.get_guest(guest.vmid)
    assert row.config_snapshot is not None and str(row.config_snapshot["cores"]) == "5"


async def test_one_cluster_read_per_pass_and_the_command_cap(
    sim: SimServer, tmp_path: Path
) -> None:
    """A pass reads /cluster/resources once and enqueues at most reconcile_max_commands."""
    avoid: set[int] = set()
    guests = [on_pve1(sim, "qemu", True, avoid) for _ in range(3)]
    async with running(sim, tmp_path, manage_guests=False, reconcile_max_commands=2) as rt:
        for g in guests:
            await manage(rt, g)
            sim.sim.set_guest_status(g.vmid, "stopped")
        seq = last_seq(sim)
        report = await rt.reconciler.pass_once()
        reads = [r for r in sim.sim.requests_since(seq) if r.path.endswith("/cluster/resources")]
        assert len(reads) == 1
        assert len(report.enqueued) == 2
        assert any("reconcile_max_commands" in s["reason"] for s in report.skipped)


async def test_dry_run_changes_nothing(sim: SimServer, tmp_path: Path) -> None:
    """A dry run reads Proxmox and the journal and writes neither."""
    guest = on_pve1(sim, "qemu", True)
    async with running(sim, tmp_path, manage_guests=False) as rt:
        await manage(rt, guest)
        sim.sim.set_guest_status(guest.vmid, "stopped")
        before = await rt.journal.all_guests()
        audits = len((await rt.journal.list_audit()).items)
        seq = last_seq(sim)
        report = await rt.reconciler.pass_once(dry_run=True)
        assert report.dry_run and [c["action"] for c in report.enqueued] == ["start"]
        assert report.discovered  # the node's other guests would be discovered
        assert await rt.journal.all_guests() == before
        assert len((await rt.journal.list_audit()).items) == audits
        assert sum((await rt.journal.counts_by_state()).values()) == 0
        assert writes_since(sim, seq) == []


async def test_pending_reconcile_op_is_superseded_by_a_new_desired_state(
    sim: SimServer, tmp_path: Path
) -> None:
    """A reconcile start still pending when desired becomes stopped is cancelled."""
    guest = on_pve1(sim, "qemu", True)
    busy = on_pve1(sim, "qemu", False, avoid={guest.vmid})
    async with running(sim, tmp_path, manage_guests=False, workers=1) as rt:
        await manage(rt, guest)
        await manage(rt, busy)
        # The only worker hangs in another op's POST: nobody claims, the op stays pending.
        sim.sim.add_fault(method="POST", path=f"/qemu/{busy.vmid}/status/start$", delay=3.0)
        blocker = await submit(rt, "start", busy)
        async with asyncio.timeout(5):
            while (await rt.journal.get(blocker.id)).state is OpState.PENDING:
                await asyncio.sleep(0.02)
        sim.sim.set_guest_status(guest.vmid, "stopped")
        report = await rt.reconciler.pass_once()
        op_id = report.enqueued[0]["op_id"]
        await rt.guests.set_desired(guest.vmid, DesiredState.STOPPED, actor="test")
        op = await rt.journal.get(op_id)
        history = await rt.journal.history(op_id)
    assert op.state is OpState.CANCELLED
    assert "superseded" in history[-1].reason


async def test_dry_run_and_real_pass_agree_on_a_draining_node(
    sim: SimServer, tmp_path: Path
) -> None:
    """On a draining node `reconcile --dry-run` lists no start; the real pass then does
    exactly what it listed (same enqueued and skipped, the skip naming node_draining)."""
    from lifecycled.engine.node import drain

    avoid: set[int] = set()
    held = on_pve1(sim, "qemu", True, avoid)
    avoid.add(held.vmid)
    stopping = on_pve1(sim, "qemu", False, avoid)
    async with running(sim, tmp_path, manage_guests=False) as rt:
        await manage(rt, held)
        await manage(rt, stopping)
        sim.sim.set_guest_status(held.vmid, "stopped")  # desired running: would be started
        sim.sim.set_guest_status(stopping.vmid, "running")  # desired stopped: shut down
        await drain(rt.journal, "pve1", actor="test", reason="maintenance", now=rt.clock.now())
        dry = await rt.reconciler.pass_once(dry_run=True)
        real = await rt.reconciler.pass_once()
        planned = [(c["vmid"], c["action"]) for c in dry.enqueued]
        assert planned == [(c["vmid"], c["action"]) for c in real.enqueued]
        assert planned == [(stopping.vmid, "shutdown")]
        assert dry.skipped == real.skipped
        (why,) = [s["reason"] for s in dry.skipped if s["vmid"] == held.vmid]
        assert why.startswith("node_draining:")
        await wait_terminal(rt, real.enqueued[0]["op_id"])
    assert not sim.sim.guests[held.vmid].running


async def test_draining_node_is_not_refilled_by_reconcile(sim: SimServer, tmp_path: Path) -> None:
    """On a draining node reconcile never starts a guest (SPEC §4), and does again once undrained."""
    from lifecycled.engine.node import drain, undrain

    guest = on_pve1(sim, "qemu", True)
    async with running(sim, tmp_path, manage_guests=False) as rt:
        await manage(rt, guest)
        sim.sim.set_guest_status(guest.vmid, "stopped")
        await drain(rt.journal, "pve1", actor="test", reason="maintenance", now=rt.clock.now())
        seq = last_seq(sim)
        report = await rt.reconciler.pass_once()
        assert report.enqueued == []
        assert (
            metric(rt, "lifecycled_reconcile_commands_total", action="start", outcome="skipped")
            == 1
        )
        assert writes_since(sim, seq) == []
        await undrain(rt.journal, "pve1", actor="test", reason="done", now=rt.clock.now())
        report = await rt.reconciler.pass_once()
        assert [(c["vmid"], c["action"]) for c in report.enqueued] == [(guest.vmid, "start")]
        await wait_terminal(rt, report.enqueued[0]["op_id"])
    assert sim.sim.guests[guest.vmid].running
