"""Lock files (flock), config locks and digests (reference §2.3, §5.3, §5.5, §12.4–12.6)."""

from __future__ import annotations

import asyncio
import time

from lifecycled.sim import SimServer
from lifecycled.sim.model import Guest
from lifecycled.sim.rawclient import RawClient


def _path(guest: Guest, suffix: str = "") -> str:
    return f"/nodes/{guest.node}/{guest.kind}/{guest.vmid}{suffix}"


async def _long_task(sim: SimServer, api: RawClient, guest: Guest, action: str) -> str:
    """Start a task that holds the guest's lock file for 2 s."""
    sim.sim.add_fault(method="POST", path=f"/{guest.vmid}/status/{action}$", task_seconds=2.0)
    answer = await api.post(_path(guest, f"/status/{action}"))
    assert answer.status == 200, answer.reason
    await asyncio.sleep(0.02)  # let the worker take the lock file
    upid: str = answer.data
    return upid


async def test_in_task_lock_file_timeout(sim: SimServer, sim_api: RawClient) -> None:
    """§2.3, §12.6: a second task waits lock_timeout for the lock file, then TASK ERROR got timeout."""
    guest = sim.sim.pick_guest("qemu", running=False)
    first = await _long_task(sim, sim_api, guest, "start")
    started = time.monotonic()
    second = await sim_api.post(_path(guest, "/status/stop"))
    assert second.status == 200  # the task is created; the lock wait is inside it
    done = await sim_api.wait_task(second.data)
    assert time.monotonic() - started >= 0.29
    assert done["exitstatus"] == (
        f"can't lock file '/var/lock/qemu-server/lock-{guest.vmid}.conf' - got timeout"
    )
    await sim_api.delete(f"/nodes/{guest.node}/tasks/{first}")


async def test_sync_lock_file_timeout_put_config(sim: SimServer, sim_api: RawClient) -> None:
    """§2.3: PUT config waits for the lock file in the request and fails with a sync 500."""
    guest = sim.sim.pick_guest("qemu", running=False)
    first = await _long_task(sim, sim_api, guest, "start")
    started = time.monotonic()
    answer = await sim_api.put(_path(guest, "/config"), {"cores": 2})
    assert time.monotonic() - started >= 0.29
    assert (answer.status, answer.reason) == (
        500,
        f"can't lock file '/var/lock/qemu-server/lock-{guest.vmid}.conf' - got timeout",
    )
    await sim_api.delete(f"/nodes/{guest.node}/tasks/{first}")


async def test_lxc_lock_file_path(sim: SimServer, sim_api: RawClient) -> None:
    """§2.3: the container lock file is /run/lock/lxc/pve-config-<vmid>.lock."""
    guest = sim.sim.guests[103]
    first = await _long_task(sim, sim_api, guest, "reboot")
    answer = await sim_api.put(_path(guest, "/config"), {"cores": 2})
    assert answer.reason == "can't lock file '/run/lock/lxc/pve-config-103.lock' - got timeout"
    await sim_api.delete(f"/nodes/{guest.node}/tasks/{first}")


async def test_lock_file_wait_succeeds_when_released(sim: SimServer, sim_api: RawClient) -> None:
    """§12.6: the second operation does not fail at once; it proceeds once the lock file is free."""
    guest = sim.sim.pick_guest("qemu", running=False)
    sim.sim.add_fault(method="POST", path=f"/{guest.vmid}/status/start$", task_seconds=0.1)
    first = (await sim_api.post(_path(guest, "/status/start"))).data
    await asyncio.sleep(0.02)
    answer = await sim_api.put(_path(guest, "/config"), {"cores": 2})
    assert answer.status == 200, answer.reason
    assert (await sim_api.wait_task(first))["exitstatus"] == "OK"


async def test_create_lock_file_timeout_is_sync(sim: SimServer, sim_api: RawClient) -> None:
    """§2.3: create waits for the lock file in the request; a timeout is a sync 500."""
    await sim.sim.hold_lock_file(700, 1.0)
    answer = await sim_api.post("/nodes/pve1/qemu", {"vmid": 700})
    assert (answer.status, answer.reason) == (
        500,
        "can't lock file '/var/lock/qemu-server/lock-700.conf' - got timeout",
    )
    assert 700 not in sim.sim.guests


async def test_backup_lock_refusals(sim: SimServer, sim_api: RawClient) -> None:
    """§2.3: 'VM is locked (backup)' is in-task for start, sync for migrate and POST config."""
    guest = sim.sim.pick_guest("qemu", running=False)
    upid = sim.sim.hold_lock(guest.vmid, "backup", 5.0)
    assert upid is not None and upid.type == "vzdump"
    start = await sim_api.post(_path(guest, "/status/start"))
    assert (await sim_api.wait_task(start.data))["exitstatus"] == "VM is locked (backup)"
    target = "pve2" if guest.node == "pve1" else "pve1"
    migrate = await sim_api.post(_path(guest, "/migrate"), {"target": target})
    assert (migrate.status, migrate.reason) == (500, "VM is locked (backup)")
    config = await sim_api.post(_path(guest, "/config"), {"cores": 2})
    assert (config.status, config.reason) == (500, "VM is locked (backup)")
    status = (await sim_api.get(_path(guest, "/status/current"))).data
    assert status["lock"] == "backup"


async def test_backup_lock_clears_after_its_time(sim: SimServer, sim_api: RawClient) -> None:
    """§5.5: a held backup lock (vzdump task) goes away when the backup ends."""
    guest = sim.sim.pick_guest("qemu", running=False)
    upid = sim.sim.hold_lock(guest.vmid, "backup", 0.1)
    assert upid is not None
    done = await sim_api.wait_task(str(upid))
    assert done["exitstatus"] == "OK" and guest.lock is None


async def test_destroy_lock_check_qemu_in_task_lxc_sync(sim: SimServer, sim_api: RawClient) -> None:
    """§12.4: LXC destroy checks the lock before forking; QEMU inside the qmdestroy task."""
    vm = sim.sim.pick_guest("qemu", running=False)
    vm.config["lock"] = "backup"
    done = await sim_api.wait_task((await sim_api.delete(_path(vm))).data)
    assert done["exitstatus"] == "VM is locked (backup)" and vm.vmid in sim.sim.guests
    sim.sim.set_guest_status(103, "stopped")
    ct = sim.sim.guests[103]
    ct.config["lock"] = "backup"
    answer = await sim_api.delete(_path(ct))
    assert (answer.status, answer.reason) == (500, "CT is locked (backup)")


async def test_qemu_stop_on_stopped_locked_vm_is_ok(sim: SimServer, sim_api: RawClient) -> None:
    """§12.4: QEMU stop on a stopped VM ends OK before any lock check."""
    guest = sim.sim.pick_guest("qemu", running=False)
    guest.config["lock"] = "backup"
    done = await sim_api.wait_task((await sim_api.post(_path(guest, "/status/stop"))).data)
    assert done["exitstatus"] == "OK"


async def test_start_running_vm_with_backup_lock_resumes(
    sim: SimServer, sim_api: RawClient
) -> None:
    """§12.10: QEMU start on a running VM holding a backup lock resumes it (task OK)."""
    guest = sim.sim.pick_guest("qemu", running=True)
    sim.sim.set_guest_status(guest.vmid, "paused")
    guest.config["lock"] = "backup"
    done = await sim_api.wait_task((await sim_api.post(_path(guest, "/status/start"))).data)
    assert done["exitstatus"] == "OK" and guest.qmpstatus == "running"


async def test_lxc_mounted_lock_does_not_block_start(sim: SimServer, sim_api: RawClient) -> None:
    """§1.2: a config lock of 'mounted' does not block LXC start or stop."""
    sim.sim.set_guest_status(103, "stopped")
    guest = sim.sim.guests[103]
    guest.config["lock"] = "mounted"
    done = await sim_api.wait_task((await sim_api.post(_path(guest, "/status/start"))).data)
    assert done["exitstatus"] == "OK" and guest.running


async def test_digest_mismatch_texts(sim: SimServer, sim_api: RawClient) -> None:
    """§5.3: a stale digest → QEMU 'checksum mismatch …', LXC 'detected modified configuration …'."""
    vm = sim.sim.pick_guest("qemu", running=False)
    stale = "0" * 40
    put = await sim_api.put(_path(vm, "/config"), {"cores": 2, "digest": stale})
    assert (put.status, put.reason) == (500, "checksum mismatch (file change by other user?)")
    post = await sim_api.post(_path(vm, "/config"), {"cores": 2, "digest": stale})
    assert post.reason == "checksum mismatch (file change by other user?)"
    resize = await sim_api.put(
        _path(vm, "/resize"), {"disk": "scsi0", "size": "64G", "digest": stale}
    )
    done = await sim_api.wait_task(resize.data)
    assert done["exitstatus"] == "checksum mismatch (file change by other user?)"
    ct = sim.sim.guests[103]
    lxc = await sim_api.put(_path(ct, "/config"), {"cores": 2, "digest": stale})
    assert lxc.reason == "detected modified configuration - file changed by other user? Try again."


async def test_matching_digest_is_accepted(sim: SimServer, sim_api: RawClient) -> None:
    """§5.3: the digest from GET config is accepted once, and stale after the write."""
    guest = sim.sim.pick_guest("qemu", running=False)
    config = (await sim_api.get(_path(guest, "/config"))).data
    digest, cores = config["digest"], config["cores"]
    first = await sim_api.put(_path(guest, "/config"), {"cores": cores + 1, "digest": digest})
    assert first.status == 200
    second = await sim_api.put(_path(guest, "/config"), {"cores": cores + 2, "digest": digest})
    assert second.status == 500


async def test_config_lock_set_by_running_task_changes_digest(
    sim: SimServer, sim_api: RawClient
) -> None:
    """§5.3, §5.5: a concurrent task that sets 'lock' changes the digest (spurious mismatch)."""
    guest = sim.sim.pick_guest("qemu", running=False)
    before = (await sim_api.get(_path(guest, "/config"))).data["digest"]
    target = "pve2" if guest.node == "pve1" else "pve1"
    sim.sim.add_fault(method="POST", path="/migrate$", task_seconds=0.3)
    upid = (await sim_api.post(_path(guest, "/migrate"), {"target": target})).data
    await asyncio.sleep(0.05)
    during = (await sim_api.get(_path(guest, "/config"))).data
    assert during["lock"] == "migrate" and during["digest"] != before
    await sim_api.wait_task(upid)
