"""Safety doctrine against the simulator (SPEC §4): soft delete, stop-first destroy,
fingerprints, protection, ownership, adoption capture, and a janitor that only reads."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from engine_support import (
    client_for,
    fast_settings,
    guest_writes,
    manage,
    pick,
    running,
    submit,
    wait_terminal,
)

from lifecycled.domain.actions import fingerprint_of
from lifecycled.domain.guests import DesiredState, GuestOrigin, ObservedState
from lifecycled.domain.op import GuestKind, GuestRef, Origin
from lifecycled.domain.states import OpState
from lifecycled.domain.upid import Upid
from lifecycled.engine.runtime import Runtime
from lifecycled.errors import PolicyRefused
from lifecycled.journal import SubmitRequest
from lifecycled.sim import SimServer
from lifecycled.sim.model import Guest


def writes(sim: SimServer, vmid: int) -> list[str]:
    return [
        f"{r.method} {r.path.removeprefix('/api2/json')}"
        for r in sim.sim.requests
        if guest_writes(r.method, r.path, r.params) and f"/{vmid}" in r.path
    ]


def plain(sim: SimServer, kind: str, running_now: bool) -> Guest:
    return pick(sim, kind, running_now, where=lambda g: g.node == "pve1")


async def test_terminate_of_an_adopted_guest_is_a_soft_delete(
    sim: SimServer, tmp_path: Path
) -> None:
    """The op succeeds, no DELETE (no write at all) reaches Proxmox, the guest stays and its
    row becomes released, audited soft_deleted with the actor and a snapshot."""
    guest = plain(sim, "qemu", True)
    async with running(sim, tmp_path, manage_guests=False) as rt:
        await manage(rt, guest, "adopted")
        op = await submit(rt, "terminate", guest, key="bye")
        done = await wait_terminal(rt, op.id)
        row = await rt.journal.get_guest(guest.vmid)
        audit = (await rt.journal.list_audit(vmid=guest.vmid, decision="soft_deleted")).items
    assert done.state is OpState.SUCCEEDED and done.upid is None
    assert writes(sim, guest.vmid) == []
    assert guest.vmid in sim.sim.guests and sim.sim.guests[guest.vmid].running
    assert row.origin is GuestOrigin.RELEASED and row.released_at is not None
    assert len(audit) == 1 and audit[0].actor == "api" and audit[0].action == "terminate"
    assert audit[0].snapshot is not None and audit[0].snapshot["proxmox"]["exists"] is True


async def test_terminate_of_a_running_native_guest_stops_it_first(
    sim: SimServer, tmp_path: Path
) -> None:
    """A journaled stop op runs first, then the destroy: stop POST before DELETE, both audited."""
    guest = plain(sim, "qemu", True)
    async with running(sim, tmp_path, manage_guests=False) as rt:
        await manage(rt, guest)
        op = await submit(rt, "terminate", guest, key="gone")
        done = await wait_terminal(rt, op.id)
        stop = await rt.journal.by_key(f"terminate:{op.id}:0:stop")
        allowed = (await rt.journal.list_audit(vmid=guest.vmid, decision="allowed")).items
        history = await rt.journal.history(op.id)
    assert done.state is OpState.SUCCEEDED, done.error
    assert done.attempts == 1  # waiting for the stop is not an attempt
    assert stop is not None and stop.state is OpState.SUCCEEDED and stop.action == "stop"
    assert writes(sim, guest.vmid) == [
        f"POST /nodes/pve1/qemu/{guest.vmid}/status/stop",
        f"DELETE /nodes/pve1/qemu/{guest.vmid}",
    ]
    assert guest.vmid not in sim.sim.guests
    assert sorted(a.action for a in allowed) == ["stop", "terminate"]
    assert any("stop op journaled first" in h.reason for h in history)


async def test_terminate_fails_and_keeps_the_guest_when_it_cannot_be_stopped(
    sim: SimServer, tmp_path: Path
) -> None:
    """When the stop op fails, the terminate fails with the reason and nothing is destroyed."""
    guest = plain(sim, "qemu", True)
    sim.sim.add_fault(
        method="POST",
        path=f"/qemu/{guest.vmid}/status/stop$",
        count=None,
        status=403,
        reason="Permission check failed (/vms/1, VM.PowerMgmt)",
    )
    async with running(sim, tmp_path, manage_guests=False) as rt:
        await manage(rt, guest)
        op = await submit(rt, "terminate", guest, key="stuck")
        done = await wait_terminal(rt, op.id)
    assert done.state is OpState.FAILED
    assert done.error is not None and "not destroyed" in done.error.message
    assert "stop op" in done.error.message
    assert not [w for w in writes(sim, guest.vmid) if w.startswith("DELETE")]
    assert sim.sim.guests[guest.vmid].running


async def test_terminate_wait_for_the_stop_is_bounded(sim: SimServer, tmp_path: Path) -> None:
    """A stop that keeps retrying does not hold the terminate forever: past the timeout it
    fails, and the guest is not destroyed."""
    guest = plain(sim, "qemu", True)
    sim.sim.add_fault(
        method="POST",
        path=f"/qemu/{guest.vmid}/status/stop$",
        count=None,
        status=500,
        reason="got no worker upid - start worker failed",
    )
    overrides = {"terminate_stop_timeout": 0.5, "max_retries": 50, "max_backoff": 0.2}
    async with running(sim, tmp_path, manage_guests=False, **overrides) as rt:
        await manage(rt, guest)
        op = await submit(rt, "terminate", guest, key="slow")
        done = await wait_terminal(rt, op.id)
    assert done.state is OpState.FAILED
    assert done.error is not None and "still running" in done.error.message
    assert not [w for w in writes(sim, guest.vmid) if w.startswith("DELETE")]


async def test_reused_vmid_is_refused_for_terminate(sim: SimServer, tmp_path: Path) -> None:
    """Same VMID, different identity (smbios uuid, name): terminate is refused and audited."""
    guest = plain(sim, "qemu", False)
    async with running(sim, tmp_path, manage_guests=False) as rt:
        await manage(rt, guest)
        sim.sim.delete_guest(guest.vmid)
        sim.sim.create_guest(guest.vmid, "qemu", "pve1", "stopped", {"name": "someone-else"})
        op = await submit(rt, "terminate", guest, key="reused")
        done = await wait_terminal(rt, op.id)
        refused = (await rt.journal.list_audit(vmid=guest.vmid, decision="refused")).items
    assert done.state is OpState.FAILED
    assert done.error is not None and "no longer matches its recorded identity" in (
        done.error.message
    )
    assert writes(sim, guest.vmid) == []
    assert sim.sim.guests[guest.vmid].config["name"] == "someone-else"
    assert len(refused) == 1 and refused[0].reason.startswith("fingerprint_mismatch")
    assert refused[0].snapshot is not None
    assert (
        refused[0].snapshot["journal"]["fingerprint"]
        != refused[0].snapshot["proxmox"]["fingerprint"]
    )


@pytest.mark.parametrize("how", ["proxmox_flag", "configured"])
async def test_protected_guests_are_never_destroyed(
    sim: SimServer, tmp_path: Path, how: str
) -> None:
    """The Proxmox protection flag, or the --protected list: terminate refused, audited."""
    guest = plain(sim, "lxc", False)
    overrides: dict[str, object] = {}
    if how == "proxmox_flag":
        guest.config["protection"] = 1
    else:
        overrides["protected_vmids"] = frozenset({guest.vmid})
    async with running(sim, tmp_path, manage_guests=False, **overrides) as rt:
        await manage(rt, guest)
        op = await submit(rt, "terminate", guest, key="protected")
        done = await wait_terminal(rt, op.id)
        refused = (await rt.journal.list_audit(vmid=guest.vmid, decision="refused")).items
    assert done.state is OpState.FAILED and done.error is not None
    assert "protect" in done.error.message
    assert writes(sim, guest.vmid) == []
    assert guest.vmid in sim.sim.guests
    assert [r.reason.split(":")[0] for r in refused] == ["protected"]


async def test_protection_covers_every_destructive_variant_and_can_be_lifted(
    sim: SimServer, tmp_path: Path
) -> None:
    """On a guest with the Proxmox protection flag, a disk delete and a forced shutdown are
    refused (audited, nothing written, the disk stays); turning protection off is allowed
    (audited as an allowed destructive op) and the disk delete then goes through."""
    guest = plain(sim, "qemu", True)
    guest.config["unused0"] = f"local-lvm:vm-{guest.vmid}-disk-9"
    async with running(sim, tmp_path, manage_guests=False) as rt:
        await manage(rt, guest)
        guest.config["protection"] = 1  # set in Proxmox after lifecycled took the guest on
        delete = await submit(rt, "configure", guest, key="del-1", delete="unused0")
        forced = await submit(rt, "shutdown", guest, key="forced", force_stop=True)
        refused_ops = [await wait_terminal(rt, op.id) for op in (delete, forced)]
        assert writes(sim, guest.vmid) == []
        lift = await submit(rt, "configure", guest, key="lift", protection=0)
        lifted = await wait_terminal(rt, lift.id)
        again = await submit(rt, "configure", guest, key="del-2", delete="unused0")
        deleted = await wait_terminal(rt, again.id)
        refused = (await rt.journal.list_audit(vmid=guest.vmid, decision="refused")).items
        allowed = (await rt.journal.list_audit(vmid=guest.vmid, decision="allowed")).items
    for op in refused_ops:
        assert op.state is OpState.FAILED and op.error is not None
        assert "protection" in op.error.message
    assert [r.reason.split(":")[0] for r in refused] == ["protected", "protected"]
    assert lifted.state is OpState.SUCCEEDED and deleted.state is OpState.SUCCEEDED
    assert "unused0" not in sim.sim.guests[guest.vmid].config
    assert str(sim.sim.guests[guest.vmid].config.get("protection", 0)) == "0"
    assert sorted(r.reason.rsplit("(", 1)[1] for r in allowed) == [
        "disk_removal)",
        "protection_off)",
    ]


async def test_ops_need_a_managed_guest_and_nothing_is_written_otherwise(
    sim: SimServer, tmp_path: Path
) -> None:
    """An op for a guest lifecycled does not manage is refused at submission: no op, no row."""
    guest = plain(sim, "qemu", False)
    async with running(sim, tmp_path, manage_guests=False) as rt:
        with pytest.raises(PolicyRefused) as refused:
            await submit(rt, "start", guest, key="unmanaged")
        assert refused.value.code == "guest_not_managed"
        assert await rt.journal.find_guest(guest.vmid) is None
        assert await rt.journal.by_key("unmanaged") is None
    assert writes(sim, guest.vmid) == []


async def test_create_records_the_guest_as_native(sim: SimServer, tmp_path: Path) -> None:
    """create needs no managed row: the guest is recorded native with its fingerprint."""
    async with running(sim, tmp_path, manage_guests=False) as rt:
        target = Guest(vmid=4242, kind="lxc", node="pve1", config={})
        op = await submit(
            rt,
            "create",
            target,
            key="new-ct",
            hostname="ct-4242",
            memory=512,
            ostemplate="local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst",
        )
        done = await wait_terminal(rt, op.id)
        row = await rt.journal.get_guest(4242)
    assert done.state is OpState.SUCCEEDED, done.error
    assert row.origin is GuestOrigin.NATIVE and row.fingerprint == {"name": "ct-4242"}


async def test_accepting_a_power_op_sets_the_desired_state(sim: SimServer, tmp_path: Path) -> None:
    """stop → desired stopped, terminate → absent; each change bumps the generation."""
    guest = plain(sim, "qemu", True)
    async with running(sim, tmp_path, manage_guests=False) as rt:
        first = await manage(rt, guest)
        await submit(rt, "stop", guest, key="s1")
        after_stop = await rt.journal.get_guest(guest.vmid)
        await submit(rt, "stop", guest, key="s1")  # a deduplicated resubmission changes nothing
        same = await rt.journal.get_guest(guest.vmid)
    assert first.desired_state is DesiredState.RUNNING
    assert after_stop.desired_state is DesiredState.STOPPED
    assert after_stop.desired_generation == first.desired_generation + 1
    assert same.desired_generation == after_stop.desired_generation


async def test_pending_op_of_a_released_guest_is_refused_when_claimed(
    sim: SimServer, tmp_path: Path
) -> None:
    """Release between submission and dispatch: the op is refused by policy, nothing sent."""
    guest = plain(sim, "qemu", False)
    settings = fast_settings(tmp_path, sim)
    runtime = await Runtime.build(settings, pve=client_for(sim))
    try:
        await manage(runtime, guest)
        op = await submit(runtime, "start", guest, key="late")
        await runtime.guests.release(guest.vmid, actor="test")
        claimed = await runtime.journal.claim_next(now=time.time())
        assert claimed is not None and claimed.id == op.id
        await runtime.dispatcher.process(claimed)
        done = await runtime.journal.get(op.id)
    finally:
        await runtime.close()
    assert done.state is OpState.FAILED
    assert done.error is not None and "not managed" in done.error.message
    assert writes(sim, guest.vmid) == []


async def test_adoption_records_the_full_config_and_the_real_status(
    sim: SimServer, tmp_path: Path
) -> None:
    """adopt captures every config key, the digest, resources, identity and real status."""
    guest = plain(sim, "qemu", True)
    async with running(sim, tmp_path, manage_guests=False) as rt:
        result = await rt.guests.adopt(guest.vmid, actor="cli")
        again = await rt.guests.adopt(guest.vmid, actor="cli")
        audits = (await rt.journal.list_audit(vmid=guest.vmid, decision="adopted")).items
    row = result.guest
    assert result.changed and not again.changed
    assert row.origin is GuestOrigin.ADOPTED and row.adopted_at is not None
    assert row.config_snapshot == {k: v for k, v in guest.config.items() if k != "digest"}
    assert row.config_digest == guest.digest()
    assert row.observed_state is ObservedState.RUNNING
    assert row.desired_state is DesiredState.RUNNING
    assert row.fingerprint == fingerprint_of(GuestKind.QEMU, guest.config)
    assert {"uuid", "ctime", "name"} <= set(row.fingerprint)
    assert row.resources is not None and row.resources["cpus"]
    assert row.resources["memory"] and row.resources["disks"]
    assert len(audits) == 1 and audits[0].actor == "cli"


async def test_janitor_marks_a_stuck_op_and_never_calls_a_mutating_endpoint(
    sim: SimServer, tmp_path: Path
) -> None:
    """An op stuck in running whose node does not answer: the janitor writes why into its
    history and leaves it in flight; the simulator's request log shows reads only."""
    guest = plain(sim, "qemu", False)
    settings = fast_settings(tmp_path, sim)
    runtime = await Runtime.build(settings, pve=client_for(sim))
    try:
        await manage(runtime, guest)
        journal = runtime.journal
        now = time.time()
        req = SubmitRequest(
            idempotency_key="stuck",
            action="start",
            guest=GuestRef(node="pve1", kind=GuestKind.QEMU, vmid=guest.vmid),
            params={},
            origin=Origin.API,
        )
        op = (await journal.submit_guest_op(req, now=now - 100)).op
        claimed = await journal.claim_next(now=now - 99)
        assert claimed is not None and claimed.id == op.id
        upid = Upid(
            node="pve1",
            pid=4242,
            pstart=1000,
            starttime=int(now) - 99,
            type="qmstart",
            id=str(guest.vmid),
            user="root@pam!lifecycled",
        )
        await journal.record_upid(op.id, str(upid), now=now - 98)
        sim.sim.set_node_offline("pve1", True)
        before = sim.sim.requests[-1].seq if sim.sim.requests else 0
        await runtime.recoverer.janitor_pass(stale_after=60.0)
        after = await journal.get(op.id)
        history = await journal.history(op.id)
        seen = sim.sim.requests_since(before)
    finally:
        sim.sim.set_node_offline("pve1", False)
        await runtime.close()
    assert after.state is OpState.RUNNING
    assert history[-1].from_state is history[-1].to_state is OpState.RUNNING
    assert history[-1].reason.startswith("janitor: stuck in running for ")
    assert "Proxmox unreadable" in history[-1].reason
    assert seen and all(r.method == "GET" for r in seen)
