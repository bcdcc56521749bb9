"""Config locks per action, clone locks, LXC resize checks and vmid collisions (reference §13.3–13.6)."""

from __future__ import annotations

import asyncio

import pytest

from lifecycled.domain.upid import Upid
from lifecycled.sim import SimServer
from lifecycled.sim.model import Guest
from lifecycled.sim.rawclient import RawAnswer, RawClient


def _path(guest: Guest, suffix: str = "") -> str:
    return f"/nodes/{guest.node}/{guest.kind}/{guest.vmid}{suffix}"


async def _exit(api: RawClient, answer: RawAnswer) -> str:
    """The exit status of the task a 200 answer started."""
    assert answer.status == 200, answer.reason
    assert isinstance(answer.data, str), answer.json
    done = await api.wait_task(answer.data)
    return str(done["exitstatus"])


@pytest.mark.parametrize(
    ("kind", "action", "lock", "running", "params", "exitstatus"),
    [
        pytest.param("lxc", "start", "mounted", False, {}, "OK", id="lxc-start-mounted"),
        pytest.param("lxc", "stop", "mounted", True, {}, "OK", id="lxc-stop-mounted"),
        pytest.param(
            "lxc", "shutdown", "mounted", True, {}, "CT is locked (mounted)", id="lxc-shutdown"
        ),
        pytest.param(
            "lxc", "suspend", "mounted", True, {}, "CT is locked (mounted)", id="lxc-suspend"
        ),
        pytest.param("lxc", "reboot", "backup", True, {}, "OK", id="lxc-reboot-no-check"),
        pytest.param("lxc", "resume", "backup", False, {}, "OK", id="lxc-resume-no-check"),
        pytest.param(
            "lxc", "start", "backup", False, {}, "CT is locked (backup)", id="lxc-start-backup"
        ),
        pytest.param("qemu", "suspend", "backup", True, {}, "OK", id="qemu-suspend-backup"),
        pytest.param(
            "qemu",
            "suspend",
            "backup",
            True,
            {"todisk": 1},
            "cannot suspend to disk during backup",
            id="qemu-suspend-todisk-backup",
        ),
        pytest.param(
            "qemu", "shutdown", "backup", True, {}, "VM is locked (backup)", id="qemu-shutdown"
        ),
    ],
)
async def test_lock_check_per_action(
    sim: SimServer,
    sim_api: RawClient,
    kind: str,
    action: str,
    lock: str,
    running: bool,
    params: dict[str, object],
    exitstatus: str,
) -> None:
    """§13.6: which config lock blocks which action, per guest kind, inside the task."""
    guest = sim.sim.create_guest(
        900, kind=kind, node="pve1", status="running" if running else "stopped"
    )
    guest.config["lock"] = lock
    assert await _exit(sim_api, await sim_api.post(_path(guest, f"/status/{action}"), params)) == (
        exitstatus
    )


async def test_prelaunch_counts_as_paused(sim: SimServer, sim_api: RawClient) -> None:
    """§13.6: vm_is_paused counts prelaunch: shutdown and reboot refuse it without forceStop."""
    guest = sim.sim.create_guest(900, kind="qemu", node="pve1", status="running")
    sim.sim.set_guest_status(900, "prelaunch")
    for action in ("shutdown", "reboot"):
        answer = await sim_api.post(_path(guest, f"/status/{action}"))
        assert (answer.status, answer.reason) == (500, "VM is paused - cannot shutdown")
    forced = await sim_api.post(_path(guest, "/status/shutdown"), {"forceStop": 1})
    assert await _exit(sim_api, forced) == "OK"
    assert not guest.running


async def test_lxc_migrate_checks_the_lock_in_the_task(sim: SimServer, sim_api: RawClient) -> None:
    """§13.6: LXC migrate forks despite a lock; the task fails; QEMU refuses before the fork."""
    ct = sim.sim.create_guest(900, kind="lxc", node="pve1", status="stopped")
    vm = sim.sim.create_guest(901, kind="qemu", node="pve1", status="stopped")
    ct.config["lock"] = vm.config["lock"] = "backup"
    answer = await sim_api.post(_path(ct, "/migrate"), {"target": "pve2"})
    assert await _exit(sim_api, answer) == "CT is locked (backup)"
    assert ct.node == "pve1"
    refused = await sim_api.post(_path(vm, "/migrate"), {"target": "pve2"})
    assert (refused.status, refused.reason) == (500, "VM is locked (backup)")


# --- clone locks (§13.5) ---------------------------------------------------------------------


async def test_clone_locks(sim: SimServer, sim_api: RawClient) -> None:
    """§13.5: LXC clone locks the source (disk) and creates the target locked (create) before
    the fork; QEMU locks only the target (clone), inside the task; all cleared at the end."""
    ct = sim.sim.create_guest(900, kind="lxc", node="pve1", status="stopped")
    vm = sim.sim.create_guest(901, kind="qemu", node="pve1", status="stopped")
    sim.sim.add_fault(method="POST", path="/clone$", task_seconds=0.5, count=2)
    lxc = await sim_api.post(_path(ct, "/clone"), {"newid": 950, "hostname": "copy"})
    assert lxc.status == 200, lxc.reason
    assert Upid.parse(lxc.data).type == "vzclone"
    assert (ct.lock, sim.sim.guests[950].lock) == ("disk", "create")
    status = await sim_api.get("/nodes/pve1/lxc/900/status/current")
    assert status.data["lock"] == "disk"
    qemu = await sim_api.post(_path(vm, "/clone"), {"newid": 951})
    assert qemu.status == 200, qemu.reason
    await asyncio.sleep(0.1)
    assert (vm.lock, sim.sim.guests[951].lock) == (None, "clone")
    assert await _exit(sim_api, lxc) == "OK"
    assert await _exit(sim_api, qemu) == "OK"
    assert [ct.lock, vm.lock, sim.sim.guests[950].lock, sim.sim.guests[951].lock] == [None] * 4
    assert sim.sim.guests[950].config["hostname"] == "copy"


async def test_failed_lxc_clone_releases_the_source(sim: SimServer, sim_api: RawClient) -> None:
    """§13.5: when an LXC clone task fails, the target is removed and the source unlocked."""
    source = sim.sim.create_guest(900, kind="lxc", node="pve1", status="stopped")
    sim.sim.add_fault(
        method="POST", path="/lxc/900/clone$", exitstatus="clone failed", task_seconds=0.5
    )
    answer = await sim_api.post(_path(source, "/clone"), {"newid": 950})
    assert 950 in sim.sim.guests and source.lock == "disk"
    assert await _exit(sim_api, answer) == "clone failed"
    assert 950 not in sim.sim.guests
    assert source.lock is None


async def test_clone_to_a_vmid_on_another_node(sim: SimServer, sim_api: RawClient) -> None:
    """§13.4: QEMU clone to a vmid taken on another node fails in the task; LXC before it."""
    sim.sim.create_guest(960, kind="qemu", node="pve2", status="stopped")
    vm = sim.sim.create_guest(900, kind="qemu", node="pve1", status="stopped")
    ct = sim.sim.create_guest(901, kind="lxc", node="pve1", status="stopped")
    answer = await sim_api.post(_path(vm, "/clone"), {"newid": 960})
    assert await _exit(sim_api, answer) == "VM 960 already exists on node 'pve2'"
    refused = await sim_api.post(_path(ct, "/clone"), {"newid": 960})
    assert (refused.status, refused.reason) == (500, "VM 960 already exists on node 'pve2'")
    assert ct.lock is None


# --- LXC resize (§13.3) ----------------------------------------------------------------------


async def test_lxc_resize_checks_before_the_fork(sim: SimServer, sim_api: RawClient) -> None:
    """§13.3: LXC resize answers lock, digest, shrink and same-size errors as sync 500s."""
    ct = sim.sim.create_guest(900, kind="lxc", node="pve1", status="stopped")
    path = _path(ct, "/resize")
    assert ct.config["rootfs"].endswith("size=8G")
    cases = [
        ({"disk": "rootfs", "size": "4G"}, "unable to shrink disk size"),
        ({"disk": "rootfs", "size": "8G"}, "disk is already at specified size"),
        (
            {"disk": "rootfs", "size": "9G", "digest": "0" * 40},
            "detected modified configuration - file changed by other user? Try again.",
        ),
    ]
    for params, reason in cases:
        answer = await sim_api.put(path, params)
        assert (answer.status, answer.reason, answer.data) == (500, reason, None)
    ct.config["lock"] = "backup"
    locked = await sim_api.put(path, {"disk": "rootfs", "size": "9G"})
    assert (locked.status, locked.reason) == (500, "CT is locked (backup)")
    assert not [t for t in sim.sim.books[ct.node].running() if t.upid.type == "resize"]
    del ct.config["lock"]
    grown = await sim_api.put(path, {"disk": "rootfs", "size": "+1G"})
    assert await _exit(sim_api, grown) == "OK"
    assert ct.config["rootfs"].endswith("size=9G")


async def test_lxc_resize_takes_no_skiplock(sim: SimServer, sim_api: RawClient) -> None:
    """§13.3: LXC resize has no skiplock (not defined); QEMU resize still has it."""
    ct = sim.sim.create_guest(900, kind="lxc", node="pve1", status="stopped")
    answer = await sim_api.put(
        _path(ct, "/resize"), {"disk": "rootfs", "size": "9G", "skiplock": 0}
    )
    assert answer.status == 400
    assert set(answer.errors or {}) == {"skiplock"}
    vm = sim.sim.create_guest(901, kind="qemu", node="pve1", status="stopped")
    ok = await sim_api.put(_path(vm, "/resize"), {"disk": "scsi0", "size": "40G", "skiplock": 0})
    assert await _exit(sim_api, ok) == "OK"
