"""The engine end to end against the simulator over loopback HTTP (SPEC §2)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from engine_support import manage, pick, running, submit, wait_terminal, writes_to

from lifecycled.domain.guests import ObservedState
from lifecycled.domain.states import OpState
from lifecycled.sim import SimServer


@pytest.mark.parametrize(
    ("action", "kind", "start_running", "params", "suffix"),
    [
        ("start", "qemu", False, {}, "/status/start"),
        ("start", "lxc", False, {}, "/status/start"),
        ("stop", "qemu", True, {}, "/status/stop"),
        ("stop", "lxc", True, {}, "/status/stop"),
        ("shutdown", "qemu", True, {}, "/status/shutdown"),
        ("shutdown", "lxc", True, {}, "/status/shutdown"),
        ("reboot", "qemu", True, {}, "/status/reboot"),
        ("reboot", "lxc", True, {}, "/status/reboot"),
        ("reset", "qemu", True, {}, "/status/reset"),
        ("suspend", "qemu", True, {}, "/status/suspend"),
        ("configure", "qemu", False, {"cores": 3}, "/config"),
        ("configure", "lxc", False, {"cores": 3}, "/config"),
        ("migrate", "qemu", False, {"target": "OTHER"}, "/migrate"),
        ("terminate", "qemu", False, {}, ""),
        ("terminate", "lxc", False, {}, ""),
    ],
)
async def test_each_action_reaches_its_target_with_one_post(
    sim: SimServer,
    tmp_path: Path,
    action: str,
    kind: str,
    start_running: bool,
    params: dict[str, Any],
    suffix: str,
) -> None:
    """Every action kind succeeds with exactly one mutating request to Proxmox."""
    guest = pick(sim, kind, start_running)
    if params.get("target") == "OTHER":
        params = {"target": next(n for n in sim.sim.cfg.nodes if n != guest.node)}
    async with running(sim, tmp_path) as rt:
        op = await submit(rt, action, guest, key=f"k-{action}", **params)
        done = await wait_terminal(rt, op.id)
    assert done.state is OpState.SUCCEEDED, done.error
    assert len(writes_to(sim, guest.vmid, suffix)) == 1
    g = sim.sim.guests.get(guest.vmid)
    if action == "start":
        assert g is not None and g.running
    elif action in ("stop", "shutdown"):
        assert g is not None and not g.running
    elif action == "terminate":
        assert g is None
    elif action == "migrate":
        assert g is not None and g.node == params["target"]
    elif action == "configure":
        assert g is not None and str(g.config.get("cores")) == "3"


async def test_resize_grows_the_disk_once(sim: SimServer, tmp_path: Path) -> None:
    """resize to an absolute size grows the disk with one PUT, and is a no-op once held."""
    guest = pick(sim, "qemu", False)
    async with running(sim, tmp_path) as rt:
        op = await submit(rt, "resize", guest, key="grow", disk="scsi0", size="64G")
        done = await wait_terminal(rt, op.id)
        again = await submit(rt, "resize", guest, key="grow-again", disk="scsi0", size="64G")
        done_again = await wait_terminal(rt, again.id)
    assert done.state is OpState.SUCCEEDED, done.error
    assert done_again.state is OpState.SUCCEEDED
    assert "size=64G" in str(sim.sim.guests[guest.vmid].config["scsi0"])
    assert len(writes_to(sim, guest.vmid, "/resize")) == 1


async def test_target_already_held_sends_nothing(sim: SimServer, tmp_path: Path) -> None:
    """A convergent op whose target already holds succeeds with zero POSTs."""
    guest = pick(sim, "qemu", True)
    async with running(sim, tmp_path) as rt:
        op = await submit(rt, "start", guest, key="noop")
        done = await wait_terminal(rt, op.id)
    assert done.state is OpState.SUCCEEDED
    assert writes_to(sim, guest.vmid) == []


async def test_dropped_connection_after_post_is_adopted_not_reposted(
    sim: SimServer, tmp_path: Path
) -> None:
    """A POST whose answer is lost (the task started) is resolved by adopting the task: one POST."""
    guest = pick(sim, "qemu", False)
    sim.sim.add_fault(method="POST", path=f"/qemu/{guest.vmid}/status/start$", drop=True, count=1)
    async with running(sim, tmp_path) as rt:
        op = await submit(rt, "start", guest, key="drop")
        done = await wait_terminal(rt, op.id)
        history = await rt.journal.history(op.id)
    assert done.state is OpState.SUCCEEDED, done.error
    assert len(writes_to(sim, guest.vmid, "/status/start")) == 1
    assert sim.sim.guests[guest.vmid].running
    assert any("adopt" in h.reason for h in history)


async def test_sync_lock_timeout_is_retried(sim: SimServer, tmp_path: Path) -> None:
    """A transient sync error (`can't lock file … got timeout`) is retried and then succeeds."""
    guest = pick(sim, "qemu", False)
    sim.sim.add_fault(
        method="POST",
        path=f"/qemu/{guest.vmid}/status/start$",
        count=1,
        status=500,
        reason=f"can't lock file '/var/lock/qemu-server/lock-{guest.vmid}.conf' - got timeout",
    )
    async with running(sim, tmp_path) as rt:
        op = await submit(rt, "start", guest, key="flock")
        done = await wait_terminal(rt, op.id)
    assert done.state is OpState.SUCCEEDED
    assert done.attempts == 2
    assert len(writes_to(sim, guest.vmid, "/status/start")) == 2


async def test_persistent_5xx_dead_letters(sim: SimServer, tmp_path: Path) -> None:
    """A 5xx on every attempt ends dead-lettered after max_retries, with the error kept."""
    guest = pick(sim, "qemu", False)
    sim.sim.add_fault(
        method="POST",
        path=f"/qemu/{guest.vmid}/status/start$",
        count=None,
        status=500,
        reason="internal error",
    )
    async with running(sim, tmp_path, max_retries=3) as rt:
        op = await submit(rt, "start", guest, key="5xx")
        done = await wait_terminal(rt, op.id)
    assert done.state is OpState.DEAD_LETTERED
    assert done.attempts == 3
    assert done.error is not None and done.error.message == "internal error"


async def test_held_config_lock_waits_then_succeeds(sim: SimServer, tmp_path: Path) -> None:
    """A guest with a backup lock is waited on (no POST while locked), then started."""
    guest = pick(sim, "qemu", False)
    guest.config["lock"] = "backup"
    async with running(sim, tmp_path) as rt:
        op = await submit(rt, "start", guest, key="locked")
        while (await rt.journal.get(op.id)).attempts < 2:
            await asyncio.sleep(0.05)
        assert writes_to(sim, guest.vmid) == []
        del guest.config["lock"]
        done = await wait_terminal(rt, op.id)
    assert done.state is OpState.SUCCEEDED
    assert len(writes_to(sim, guest.vmid, "/status/start")) == 1


async def test_template_start_fails_permanently(sim: SimServer, tmp_path: Path) -> None:
    """A permanent task error fails the op at once, without retry."""
    template = next(g for g in sim.sim.guests.values() if g.template)
    async with running(sim, tmp_path) as rt:
        op = await submit(rt, "start", template, key="tmpl")
        done = await wait_terminal(rt, op.id)
    assert done.state is OpState.FAILED
    assert done.attempts == 1
    assert done.error is not None and "template" in done.error.message


async def test_one_shot_task_failure_is_not_redispatched(sim: SimServer, tmp_path: Path) -> None:
    """A reboot whose task fails transiently is failed, never dispatched a second time."""
    guest = pick(sim, "qemu", True)
    sim.sim.add_fault(
        method="POST",
        path=f"/qemu/{guest.vmid}/status/reboot$",
        count=1,
        exitstatus=f"can't lock file '/var/lock/qemu-server/lock-{guest.vmid}.conf' - got timeout",
    )
    async with running(sim, tmp_path) as rt:
        op = await submit(rt, "reboot", guest, key="rb")
        done = await wait_terminal(rt, op.id)
    assert done.state is OpState.FAILED
    assert len(writes_to(sim, guest.vmid, "/status/reboot")) == 1


async def test_warnings_exit_status_is_success(sim: SimServer, tmp_path: Path) -> None:
    """A task ending `WARNINGS: 2` is success, with the warnings kept (SPEC §2 step 5)."""
    guest = pick(sim, "qemu", False)
    sim.sim.add_fault(
        method="POST",
        path=f"/qemu/{guest.vmid}/status/start$",
        count=1,
        exitstatus="WARNINGS: 2",
        effect=True,
    )
    async with running(sim, tmp_path) as rt:
        op = await submit(rt, "start", guest, key="warn")
        done = await wait_terminal(rt, op.id)
    assert done.state is OpState.SUCCEEDED
    assert done.exitstatus == "WARNINGS: 2"


async def test_ha_managed_guest_is_confirmed_by_state(sim: SimServer, tmp_path: Path) -> None:
    """An HA guest's stop goes through an `hastop` task and succeeds only once it is stopped."""
    guest = next(g for g in sim.sim.guests.values() if g.ha is not None and g.running)
    async with running(sim, tmp_path) as rt:
        op = await submit(rt, "stop", guest, key="ha")
        done = await wait_terminal(rt, op.id)
        history = await rt.journal.history(op.id)
    assert done.state is OpState.SUCCEEDED, done.error
    assert not sim.sim.guests[guest.vmid].running
    assert any(h.upid and ":hastop:" in h.upid for h in history)


async def test_node_offline_is_retried_until_back(sim: SimServer, tmp_path: Path) -> None:
    """595 from an offline node is transient: the op waits and succeeds once the node returns."""
    guest = pick(sim, "qemu", False)
    sim.sim.set_node_offline(guest.node, True)
    async with running(sim, tmp_path, max_retries=50) as rt:
        op = await submit(rt, "start", guest, key="offline")
        while (await rt.journal.get(op.id)).attempts < 2:
            await asyncio.sleep(0.05)
        sim.sim.set_node_offline(guest.node, False)
        done = await wait_terminal(rt, op.id)
    assert done.state is OpState.SUCCEEDED
    assert sim.sim.guests[guest.vmid].running


async def test_a_succeeded_op_updates_its_guests_observed_state_at_once(
    sim: SimServer, tmp_path: Path
) -> None:
    """start → observed running and stop → observed stopped as the op succeeds, no reconcile pass."""
    guest = pick(sim, "qemu", False, where=lambda g: g.node == "pve1")
    async with running(sim, tmp_path, manage_guests=False, reconcile_on_start=False) as rt:
        await manage(rt, guest)
        before = await rt.journal.get_guest(guest.vmid)
        assert before.observed_state is ObservedState.STOPPED
        started = await wait_terminal(rt, (await submit(rt, "start", guest)).id)
        assert started.state is OpState.SUCCEEDED
        after = await rt.journal.get_guest(guest.vmid)
        assert after.observed_state is ObservedState.RUNNING
        assert started.finished_at is not None and after.observed_at is not None
        assert after.observed_at >= started.finished_at - 1
        stopped = await wait_terminal(rt, (await submit(rt, "stop", guest, key="s")).id)
        assert stopped.state is OpState.SUCCEEDED
        assert (await rt.journal.get_guest(guest.vmid)).observed_state is ObservedState.STOPPED
