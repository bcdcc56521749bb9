"""Lifecycle actions: effects, sync-vs-async split and pre-fork checks (reference §1, §5, §12)."""

from __future__ import annotations

import asyncio

from lifecycled.domain.upid import Upid
from lifecycled.sim import SimServer
from lifecycled.sim.model import Guest
from lifecycled.sim.rawclient import RawAnswer, RawClient


def _path(guest: Guest, suffix: str = "") -> str:
    return f"/nodes/{guest.node}/{guest.kind}/{guest.vmid}{suffix}"


async def _run(api: RawClient, answer: RawAnswer) -> dict[str, object]:
    assert answer.status == 200, answer.reason
    assert isinstance(answer.data, str), answer.json
    return await api.wait_task(answer.data)


# --- QEMU / LXC run state ------------------------------------------------------------------------


async def test_qemu_start_and_stop(sim: SimServer, sim_api: RawClient) -> None:
    """§1.1: start → qmstart task → running; stop → qmstop task → stopped."""
    guest = sim.sim.pick_guest("qemu", running=False)
    started = await sim_api.post(_path(guest, "/status/start"))
    assert Upid.parse(started.data).type == "qmstart"
    assert (await _run(sim_api, started))["exitstatus"] == "OK"
    status = await sim_api.get(_path(guest, "/status/current"))
    assert (status.data["status"], status.data["qmpstatus"]) == ("running", "running")
    assert status.data["pid"] == guest.pid
    stopped = await sim_api.post(_path(guest, "/status/stop"))
    assert Upid.parse(stopped.data).type == "qmstop"
    assert (await _run(sim_api, stopped))["exitstatus"] == "OK"
    assert guest.status == "stopped"


async def test_qemu_start_running_task_fails(sim: SimServer, sim_api: RawClient) -> None:
    """§1.3: QEMU start on a running VM returns a UPID whose task fails 'VM 100 already running'."""
    guest = sim.sim.pick_guest("qemu", running=True)
    done = await _run(sim_api, await sim_api.post(_path(guest, "/status/start")))
    assert done["exitstatus"] == f"VM {guest.vmid} already running"


async def test_lxc_start_running_is_sync_500(sim: SimServer, sim_api: RawClient) -> None:
    """§1.3: LXC start on a running container is a sync 500 'CT 100 already running', no task."""
    guest = sim.sim.pick_guest("lxc", running=True)
    answer = await sim_api.post(_path(guest, "/status/start"))
    assert (answer.status, answer.reason) == (500, f"CT {guest.vmid} already running")
    assert sim.sim.requests[-1].upid is None


async def test_qemu_stop_stopped_task_ok(sim: SimServer, sim_api: RawClient) -> None:
    """§1.3: QEMU stop or shutdown on a stopped VM → UPID, task OK."""
    guest = sim.sim.pick_guest("qemu", running=False)
    for action in ("stop", "shutdown"):
        done = await _run(sim_api, await sim_api.post(_path(guest, f"/status/{action}")))
        assert done["exitstatus"] == "OK"


async def test_lxc_stop_stopped_is_sync_500(sim: SimServer, sim_api: RawClient) -> None:
    """§1.3: LXC stop/shutdown on a stopped container → sync 500 'CT 100 not running'."""
    sim.sim.set_guest_status(103, "stopped")
    guest = sim.sim.guests[103]
    for action in ("stop", "shutdown", "suspend"):
        answer = await sim_api.post(_path(guest, f"/status/{action}"))
        assert (answer.status, answer.reason) == (500, "CT 103 not running")
    reboot = await sim_api.post(_path(guest, "/status/reboot"))
    assert (reboot.status, reboot.reason) == (500, "VM 103 not running")


async def test_lxc_start_stop_effects(sim: SimServer, sim_api: RawClient) -> None:
    """§1.2: vzstart/vzstop/vzshutdown tasks change a container's run state."""
    sim.sim.set_guest_status(103, "stopped")
    guest = sim.sim.guests[103]
    started = await sim_api.post(_path(guest, "/status/start"))
    assert Upid.parse(started.data).type == "vzstart"
    await _run(sim_api, started)
    status = await sim_api.get(_path(guest, "/status/current"))
    assert status.data["status"] == "running" and "qmpstatus" not in status.data
    done = await _run(sim_api, await sim_api.post(_path(guest, "/status/shutdown")))
    assert done["type"] == "vzshutdown" and guest.status == "stopped"


async def test_qemu_run_state_checks_on_stopped_vm(sim: SimServer, sim_api: RawClient) -> None:
    """§1.3: reboot/reset/suspend/resume of a stopped VM → sync 500 'VM 100 not running'."""
    guest = sim.sim.pick_guest("qemu", running=False)
    for action in ("reboot", "reset", "suspend", "resume"):
        answer = await sim_api.post(_path(guest, f"/status/{action}"))
        assert (answer.status, answer.reason) == (500, f"VM {guest.vmid} not running")


async def test_suspend_resume_and_paused_shutdown(sim: SimServer, sim_api: RawClient) -> None:
    """§1.1, §5.1: suspend → qmpause, qmpstatus paused; shutdown refused; resume → running."""
    guest = sim.sim.pick_guest("qemu", running=True)
    done = await _run(sim_api, await sim_api.post(_path(guest, "/status/suspend")))
    assert done["type"] == "qmpause"
    status = (await sim_api.get(_path(guest, "/status/current"))).data
    assert (status["status"], status["qmpstatus"]) == ("running", "paused")
    for action in ("shutdown", "reboot"):
        refused = await sim_api.post(_path(guest, f"/status/{action}"))
        assert (refused.status, refused.reason) == (500, "VM is paused - cannot shutdown")
    resumed = await _run(sim_api, await sim_api.post(_path(guest, "/status/resume")))
    assert resumed["type"] == "qmresume" and guest.qmpstatus == "running"


async def test_forced_shutdown_of_paused_vm(sim: SimServer, sim_api: RawClient) -> None:
    """§1.1: shutdown with forceStop=1 on a paused VM falls back to a stop."""
    guest = sim.sim.pick_guest("qemu", running=True)
    sim.sim.set_guest_status(guest.vmid, "paused")
    answer = await sim_api.post(_path(guest, "/status/shutdown"), {"forceStop": 1})
    assert (await _run(sim_api, answer))["exitstatus"] == "OK"
    assert guest.status == "stopped"


async def test_hibernate_and_resume(sim: SimServer, sim_api: RawClient) -> None:
    """§5.1: suspend todisk=1 → qmsuspend, stopped with lock suspended; resume starts it."""
    guest = sim.sim.pick_guest("qemu", running=True)
    answer = await sim_api.post(_path(guest, "/status/suspend"), {"todisk": 1})
    assert (await _run(sim_api, answer))["type"] == "qmsuspend"
    status = (await sim_api.get(_path(guest, "/status/current"))).data
    assert (status["status"], status["lock"]) == ("stopped", "suspended")
    await _run(sim_api, await sim_api.post(_path(guest, "/status/resume")))
    status = (await sim_api.get(_path(guest, "/status/current"))).data
    assert status["status"] == "running" and "lock" not in status


async def test_acpi_shutdown_timeout(sim: SimServer, sim_api: RawClient) -> None:
    """§1.1: a guest ignoring ACPI → 'VM quit/powerdown failed - got timeout' unless forceStop."""
    guest = sim.sim.pick_guest("qemu", running=True)
    sim.sim.set_acpi(guest.vmid, False)
    done = await _run(sim_api, await sim_api.post(_path(guest, "/status/shutdown")))
    assert done["exitstatus"] == "VM quit/powerdown failed - got timeout"
    assert guest.running
    forced = await sim_api.post(_path(guest, "/status/shutdown"), {"forceStop": 1})
    assert (await _run(sim_api, forced))["exitstatus"] == "OK" and not guest.running


async def test_reboot_and_reset_keep_running(sim: SimServer, sim_api: RawClient) -> None:
    """§1.1: qmreboot restarts (new pid) and applies pending changes; qmreset keeps it running."""
    guest = sim.sim.pick_guest("qemu", running=True)
    old_pid = guest.pid
    upid = (await sim_api.post(_path(guest, "/config"), {"cores": 6})).data
    await sim_api.wait_task(upid)
    assert guest.pending == {"cores": 6}
    done = await _run(sim_api, await sim_api.post(_path(guest, "/status/reboot")))
    assert done["type"] == "qmreboot"
    assert guest.running and guest.pid != old_pid and guest.config["cores"] == 6
    assert not guest.pending
    reset = await _run(sim_api, await sim_api.post(_path(guest, "/status/reset")))
    assert reset["type"] == "qmreset" and guest.running


async def test_template_start_fails_in_task(sim: SimServer, sim_api: RawClient) -> None:
    """§2.3: starting a template fails in the task: "you can't start a vm if it's a template"."""
    template = sim.sim.guests[106]
    done = await _run(sim_api, await sim_api.post(_path(template, "/status/start")))
    assert done["exitstatus"] == "you can't start a vm if it's a template"


# --- missing guests ----------------------------------------------------------------------------


async def test_missing_qemu_guest(sim_api: RawClient) -> None:
    """§1.3, §12.7: missing VM: start/stop fail in-task; reboot… and destroy/status are sync."""
    base = "/nodes/pve1/qemu/999"
    start = await _run(sim_api, await sim_api.post(f"{base}/status/start"))
    assert (
        start["exitstatus"] == "Configuration file 'nodes/pve1/qemu-server/999.conf' does not exist"
    )
    stop = await _run(sim_api, await sim_api.post(f"{base}/status/stop"))
    assert stop["exitstatus"] == "unable to find configuration file for VM 999 on node 'pve1'"
    for action in ("reboot", "reset", "suspend", "resume"):
        answer = await sim_api.post(f"{base}/status/{action}")
        assert answer.reason == "unable to find configuration file for VM 999 on node 'pve1'"
    for answer in (await sim_api.delete(base), await sim_api.get(f"{base}/status/current")):
        assert (answer.status, answer.reason) == (
            500,
            "Configuration file 'nodes/pve1/qemu-server/999.conf' does not exist",
        )


async def test_missing_lxc_guest(sim_api: RawClient) -> None:
    """§1.3: missing CT: start fails in-task (lxc path); stop is a sync 'CT 999 not running'."""
    start = await _run(sim_api, await sim_api.post("/nodes/pve1/lxc/999/status/start"))
    assert start["exitstatus"] == "Configuration file 'nodes/pve1/lxc/999.conf' does not exist"
    stop = await sim_api.post("/nodes/pve1/lxc/999/status/stop")
    assert (stop.status, stop.reason) == (500, "CT 999 not running")


async def test_guest_read_through_wrong_node(sim: SimServer, sim_api: RawClient) -> None:
    """§1 intro: {node} must own the guest; another node has no config for it."""
    guest = sim.sim.guests[100]
    other = "pve2" if guest.node == "pve1" else "pve1"
    answer = await sim_api.get(f"/nodes/{other}/qemu/100/status/current")
    assert (
        answer.reason == f"Configuration file 'nodes/{other}/qemu-server/100.conf' does not exist"
    )


# --- reads -------------------------------------------------------------------------------------


async def test_status_current_optional_fields(sim: SimServer, sim_api: RawClient) -> None:
    """§5.1: lock only when set, template only when 1, ha object always."""
    plain = (await sim_api.get(_path(sim.sim.guests[100], "/status/current"))).data
    assert "lock" not in plain and "template" not in plain
    assert plain["ha"] == {"managed": 0}
    template = (await sim_api.get(_path(sim.sim.guests[106], "/status/current"))).data
    assert template["template"] == 1
    ha = (await sim_api.get(_path(sim.sim.guests[104], "/status/current"))).data
    assert ha["ha"] == {"managed": 1, "state": "started"}


async def test_config_digest_and_memory_string(sim: SimServer, sim_api: RawClient) -> None:
    """§5.3, §12.10: config has a sha1 digest that changes with every write; QEMU memory is text."""
    guest = sim.sim.pick_guest("qemu", running=False)
    first = (await sim_api.get(_path(guest, "/config"))).data
    assert len(first["digest"]) == 40 and isinstance(first["memory"], str)
    assert isinstance(first["cores"], int)
    assert first["smbios1"].startswith("uuid=") and "ctime=" in first["meta"]
    await sim_api.put(_path(guest, "/config"), {"description": "x"})
    second = (await sim_api.get(_path(guest, "/config"))).data
    assert second["digest"] != first["digest"]


async def test_pending_semantics_on_running_vm(sim: SimServer, sim_api: RawClient) -> None:
    """§1.4: cores on a running VM go to [PENDING]; config shows them, current=1 does not."""
    guest = sim.sim.pick_guest("qemu", running=True)
    old = guest.config["cores"]
    upid = (await sim_api.post(_path(guest, "/config"), {"cores": old + 1, "name": "hot"})).data
    assert (await sim_api.wait_task(upid))["exitstatus"] == "OK"
    merged = (await sim_api.get(_path(guest, "/config"))).data
    current = (await sim_api.get(_path(guest, "/config"), {"current": 1})).data
    assert (merged["cores"], current["cores"]) == (old + 1, old)
    assert merged["name"] == current["name"] == "hot"  # hot-pluggable: applied at once
    pending = (await sim_api.get(_path(guest, "/pending"))).data
    assert {"key": "cores", "value": old, "pending": old + 1} in pending


async def test_cluster_resources_fields(sim: SimServer, sim_api: RawClient) -> None:
    """§5.4: /cluster/resources?type=vm items carry id, vmid, type, node, status, template, hastate."""
    items = (await sim_api.get("/cluster/resources", {"type": "vm"})).data
    by_vmid = {item["vmid"]: item for item in items}
    assert len(items) == 20
    assert by_vmid[100]["id"] == "qemu/100" and by_vmid[103]["type"] == "lxc"
    assert by_vmid[106]["template"] == 1 and by_vmid[100]["template"] == 0
    assert by_vmid[104]["hastate"] == "started" and "hastate" not in by_vmid[100]
    sim.sim.set_guest_status(100, "paused")
    lagging = (await sim_api.get("/cluster/resources", {"type": "vm"})).data
    assert next(i for i in lagging if i["vmid"] == 100)["status"] == "running"  # §13.10
    sim.sim.sample_resources()  # pvestatd's next push
    paused = (await sim_api.get("/cluster/resources", {"type": "vm"})).data
    assert next(i for i in paused if i["vmid"] == 100)["status"] == "paused"


# --- config, resize ----------------------------------------------------------------------------


async def test_config_put_is_sync_post_is_async(sim: SimServer, sim_api: RawClient) -> None:
    """§1.1: QEMU PUT config answers null after the work; POST forks qmconfig."""
    guest = sim.sim.pick_guest("qemu", running=False)
    put = await sim_api.put(_path(guest, "/config"), {"cores": 3})
    assert (put.status, put.json) == (200, {"data": None}) and guest.config["cores"] == 3
    post = await sim_api.post(_path(guest, "/config"), {"cores": 5})
    done = await _run(sim_api, post)
    assert done["type"] == "qmconfig" and guest.config["cores"] == 5


async def test_config_post_background_delay(sim: SimServer, sim_api: RawClient) -> None:
    """§1.1: POST config with background_delay answers null when the task ends OK within it."""
    guest = sim.sim.pick_guest("qemu", running=False)
    answer = await sim_api.post(_path(guest, "/config"), {"cores": 2, "background_delay": 2})
    assert (answer.status, answer.json) == (200, {"data": None})
    assert guest.config["cores"] == 2


async def test_lxc_config_put(sim: SimServer, sim_api: RawClient) -> None:
    """§1.2: LXC config is sync PUT; no options → 'no options specified'."""
    guest = sim.sim.guests[103]
    answer = await sim_api.put(_path(guest, "/config"), {"memory": 2048})
    assert answer.json == {"data": None} and guest.config["memory"] == 2048
    empty = await sim_api.put(_path(guest, "/config"), {})
    assert (empty.status, empty.reason) == (500, "no options specified")


async def test_resize_grow_same_and_shrink(sim: SimServer, sim_api: RawClient) -> None:
    """§1.1: resize forks 'resize'; grow changes size; same size is OK; shrink fails in-task."""
    guest = sim.sim.pick_guest("qemu", running=False)
    grow = await _run(
        sim_api, await sim_api.put(_path(guest, "/resize"), {"disk": "scsi0", "size": "40G"})
    )
    assert grow["type"] == "resize" and guest.config["scsi0"].endswith("size=40G")
    plus = await _run(
        sim_api, await sim_api.put(_path(guest, "/resize"), {"disk": "scsi0", "size": "+2G"})
    )
    assert plus["exitstatus"] == "OK" and guest.config["scsi0"].endswith("size=42G")
    same = await _run(
        sim_api, await sim_api.put(_path(guest, "/resize"), {"disk": "scsi0", "size": "42G"})
    )
    assert same["exitstatus"] == "OK"
    shrink = await _run(
        sim_api, await sim_api.put(_path(guest, "/resize"), {"disk": "scsi0", "size": "8G"})
    )
    assert shrink["exitstatus"] == "shrinking disks is not supported"
    bad = await sim_api.put(_path(guest, "/resize"), {"disk": "scsi0", "size": "huge"})
    assert bad.errors == {"size": "value does not match the regex pattern"}


async def test_lxc_resize_rootfs(sim: SimServer, sim_api: RawClient) -> None:
    """§1.2: LXC resize forks a 'resize' task and grows rootfs."""
    guest = sim.sim.guests[103]
    answer = await sim_api.put(_path(guest, "/resize"), {"disk": "rootfs", "size": "16G"})
    assert (await _run(sim_api, answer))["exitstatus"] == "OK"
    assert guest.config["rootfs"].endswith("size=16G")


# --- destroy -----------------------------------------------------------------------------------


async def test_destroy_checks_and_effect(sim: SimServer, sim_api: RawClient) -> None:
    """§1.1: protection, running and HA refusals are sync; qmdestroy removes the guest."""
    protected = await sim_api.delete(_path(sim.sim.guests[102]))
    assert protected.reason == "can't remove VM 102 - protection mode enabled"
    running = sim.sim.pick_guest("qemu", running=True)
    refused = await sim_api.delete(_path(running))
    assert refused.reason == f"VM {running.vmid} is running - destroy failed"
    ha = await sim_api.delete(_path(sim.sim.guests[104]))
    assert (
        ha.reason == "unable to remove VM 104 - used in HA resources and purge parameter not set."
    )
    victim = sim.sim.pick_guest("qemu", running=False)
    done = await _run(sim_api, await sim_api.delete(_path(victim)))
    assert done["type"] == "qmdestroy" and victim.vmid not in sim.sim.guests


async def test_lxc_destroy_running(sim: SimServer, sim_api: RawClient) -> None:
    """§1.2, §12.10: LXC destroy of a running CT is refused; with force=1 it ends WARNINGS: 1."""
    guest = sim.sim.guests[103]
    refused = await sim_api.delete(_path(guest))
    assert refused.reason == "unable to destroy CT 103 - container is running"
    done = await _run(sim_api, await sim_api.delete(_path(guest), {"force": 1}))
    assert (done["type"], done["exitstatus"]) == ("vzdestroy", "WARNINGS: 1")
    assert 103 not in sim.sim.guests


# --- migrate -----------------------------------------------------------------------------------


async def test_migrate_offline_moves_guest(sim: SimServer, sim_api: RawClient) -> None:
    """§1.1: qmigrate holds lock 'migrate' while it runs, then the guest lives on the target."""
    guest = sim.sim.pick_guest("qemu", running=False)
    target = "pve2" if guest.node == "pve1" else "pve1"
    sim.sim.add_fault(method="POST", path="/migrate$", task_seconds=0.3)
    answer = await sim_api.post(_path(guest, "/migrate"), {"target": target})
    assert Upid.parse(answer.data).type == "qmigrate"
    async with asyncio.timeout(2):
        while guest.lock != "migrate":
            await asyncio.sleep(0.005)
    done = await sim_api.wait_task(answer.data)
    assert done["exitstatus"] == "OK"
    after = sim.sim.guests[guest.vmid]  # re-read: the loop above narrowed guest.lock
    assert (after.node, after.lock) == (target, None)
    moved = await sim_api.get(f"/nodes/{target}/qemu/{guest.vmid}/status/current")
    assert moved.status == 200


async def test_migrate_checks(sim: SimServer, sim_api: RawClient) -> None:
    """§1.1: running without online → 500; target is local node → 400; online local disks fail."""
    guest = sim.sim.pick_guest("qemu", running=True)
    target = "pve2" if guest.node == "pve1" else "pve1"
    offline = await sim_api.post(_path(guest, "/migrate"), {"target": target})
    assert offline.reason == "can't migrate running VM without --online"
    local = await sim_api.post(_path(guest, "/migrate"), {"target": guest.node})
    assert local.errors == {"target": "target is local node."}
    live = await _run(
        sim_api, await sim_api.post(_path(guest, "/migrate"), {"target": target, "online": 1})
    )
    assert (
        live["exitstatus"]
        == "can't live migrate attached local disks without with-local-disks option"
    )
    ok = await sim_api.post(
        _path(guest, "/migrate"), {"target": target, "online": 1, "with-local-disks": 1}
    )
    assert (await _run(sim_api, ok))["exitstatus"] == "OK"
    assert guest.node == target and guest.running


async def test_lxc_restart_migration(sim: SimServer, sim_api: RawClient) -> None:
    """§1.2: a running CT needs --online or --restart; restart mode moves it and keeps it running."""
    guest = sim.sim.guests[103]
    target = "pve1" if guest.node == "pve2" else "pve2"
    refused = await sim_api.post(_path(guest, "/migrate"), {"target": target})
    assert refused.reason == "can't migrate running container without --online or --restart"
    done = await _run(
        sim_api, await sim_api.post(_path(guest, "/migrate"), {"target": target, "restart": 1})
    )
    assert done["type"] == "vzmigrate" and guest.node == target and guest.running


# --- create, clone -----------------------------------------------------------------------------


async def test_create_qemu(sim: SimServer, sim_api: RawClient) -> None:
    """§1.1: create writes the config with lock 'create' before forking qmcreate; disks allocated."""
    sim.sim.add_fault(method="POST", path="/qemu$", task_seconds=0.3)
    params = {"vmid": 500, "name": "fresh", "cores": 2, "memory": 2048, "scsi0": "local-lvm:16"}
    answer = await sim_api.post("/nodes/pve1/qemu", params)
    assert Upid.parse(answer.data).type == "qmcreate"
    guest = sim.sim.guests[500]
    assert guest.lock == "create"
    await sim_api.wait_task(answer.data)
    config = (await sim_api.get("/nodes/pve1/qemu/500/config")).data
    assert config["scsi0"] == "local-lvm:vm-500-disk-0,size=16G"
    assert config["smbios1"].startswith("uuid=") and "lock" not in config
    assert guest.status == "stopped"


async def test_create_existing_vmid(sim: SimServer, sim_api: RawClient) -> None:
    """§2.3, §13.4: create on a taken VMID → 'unable to create VM 100 - VM 100 already exists …';
    LXC says only 'VM 100 already exists on node …'."""
    node = sim.sim.guests[100].node
    answer = await sim_api.post("/nodes/pve1/qemu", {"vmid": 100})
    assert answer.reason == f"unable to create VM 100 - VM 100 already exists on node '{node}'"
    ct = await sim_api.post("/nodes/pve1/lxc", {"vmid": 100, "ostemplate": "local:vztmpl/x.tar"})
    assert ct.reason == f"VM 100 already exists on node '{node}'"  # §13.4: no prefix for CT


async def test_create_lxc_and_start(sim: SimServer, sim_api: RawClient) -> None:
    """§1.1: create with start=1 forks a separate start task after vzcreate."""
    params = {
        "vmid": 501,
        "ostemplate": "local:vztmpl/debian.tar.zst",
        "rootfs": "local-lvm:8",
        "hostname": "ct501",
        "start": 1,
    }
    done = await _run(sim_api, await sim_api.post("/nodes/pve1/lxc", params))
    assert done["type"] == "vzcreate"
    await sim.sim.settle(2.0)
    guest = sim.sim.guests[501]
    assert guest.running and guest.config["rootfs"] == "local-lvm:vm-501-disk-0,size=8G"
    types = [
        r["type"]
        for r in (await sim_api.get("/nodes/pve1/tasks", {"source": "all", "vmid": 501})).data
    ]
    assert sorted(types) == ["vzcreate", "vzstart"]


async def test_clone_template(sim: SimServer, sim_api: RawClient) -> None:
    """§1.1: qmclone's UPID id is the SOURCE vmid; the clone gets lock 'clone', then a new uuid."""
    source = sim.sim.guests[106]
    sim.sim.add_fault(method="POST", path="/clone$", task_seconds=0.3)
    answer = await sim_api.post(_path(source, "/clone"), {"newid": 600, "name": "c600", "full": 1})
    upid = Upid.parse(answer.data)
    assert (upid.type, upid.id) == ("qmclone", "106")
    assert sim.sim.guests[600].lock == "clone"
    await sim_api.wait_task(answer.data)
    clone = sim.sim.guests[600]
    assert clone.lock is None and not clone.template and clone.node == source.node
    assert clone.config["name"] == "c600"
    assert clone.config["smbios1"] != source.config["smbios1"]
    assert clone.config["scsi0"].startswith("local-lvm:vm-600-disk-0")
    taken = await sim_api.post(_path(source, "/clone"), {"newid": 600})
    assert taken.reason == "unable to create VM 600: config file already exists"
