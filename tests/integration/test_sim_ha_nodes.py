"""HA-managed guests and node availability (reference §1.3, §2.2, §5.4, §8, §10)."""

from __future__ import annotations

import asyncio

from lifecycled.domain.upid import Upid
from lifecycled.sim import SimServer
from lifecycled.sim.model import Guest
from lifecycled.sim.rawclient import RawClient


def _path(guest: Guest, suffix: str = "") -> str:
    return f"/nodes/{guest.node}/{guest.kind}/{guest.vmid}{suffix}"


async def _until(predicate: object, within: float = 2.0) -> None:
    assert callable(predicate)
    async with asyncio.timeout(within):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_ha_stop_task_ok_before_state_change(sim: SimServer, sim_api: RawClient) -> None:
    """§1.3: an HA guest's stop is an 'hastop' task that ends OK while the guest still runs."""
    guest = sim.sim.guests[104]
    answer = await sim_api.post(_path(guest, "/status/stop"))
    upid = Upid.parse(answer.data)
    assert upid.type == "hastop"
    done = await sim_api.wait_task(answer.data)
    assert done["exitstatus"] == "OK"
    assert guest.running  # task OK does not mean the guest changed state
    assert guest.ha is not None and guest.ha.state == "stopped"
    await _until(lambda: not guest.running)
    listing = await sim_api.get(f"/nodes/{guest.node}/tasks", {"source": "all", "vmid": 104})
    tasks = listing.data
    lrm = [t for t in tasks if t["type"] == "qmshutdown"]
    assert lrm and lrm[0]["user"] == "root@pam"


async def test_ha_start_and_shutdown_types(sim: SimServer, sim_api: RawClient) -> None:
    """§1.3: start → hastart, shutdown → hastop (QEMU and LXC), effects after ha_delay."""
    ct = sim.sim.guests[107]
    shutdown = await sim_api.post(_path(ct, "/status/shutdown"))
    assert Upid.parse(shutdown.data).type == "hastop"
    await _until(lambda: not ct.running)
    start = await sim_api.post(_path(ct, "/status/start"))
    assert Upid.parse(start.data).type == "hastart"
    assert (await sim_api.wait_task(start.data))["exitstatus"] == "OK"
    await _until(lambda: ct.running)


async def test_ha_lxc_start_running_is_still_sync(sim: SimServer, sim_api: RawClient) -> None:
    """§1.2: the LXC running check comes before HA routing: sync 'CT 107 already running'."""
    answer = await sim_api.post(_path(sim.sim.guests[107], "/status/start"))
    assert (answer.status, answer.reason) == (500, "CT 107 already running")


async def test_ha_migrate(sim: SimServer, sim_api: RawClient) -> None:
    """§1.3: migrate of an HA guest → hamigrate; the guest moves ha_delay later."""
    guest = sim.sim.guests[104]
    source = guest.node
    target = "pve1" if source == "pve2" else "pve2"
    answer = await sim_api.post(_path(guest, "/migrate"), {"target": target, "online": 1})
    assert Upid.parse(answer.data).type == "hamigrate"
    await sim_api.wait_task(answer.data)
    assert guest.node == source
    await _until(lambda: guest.node == target)
    assert guest.running


async def test_ha_resource_put_drives_state(sim: SimServer, sim_api: RawClient) -> None:
    """§8: PUT /cluster/ha/resources/{sid} state=stopped|started is the way to drive HA guests."""
    guest = sim.sim.guests[104]
    resource = await sim_api.get("/cluster/ha/resources/vm:104")
    assert resource.data["sid"] == "vm:104" and resource.data["state"] == "started"
    answer = await sim_api.put("/cluster/ha/resources/vm:104", {"state": "stopped"})
    assert answer.json == {"data": None}
    await _until(lambda: not guest.running)
    await sim_api.put("/cluster/ha/resources/vm:104", {"state": "started"})
    await _until(lambda: guest.running)
    items = (await sim_api.get("/cluster/resources", {"type": "vm"})).data
    assert next(i for i in items if i["vmid"] == 104)["hastate"] == "started"


async def test_ha_resource_errors(sim_api: RawClient) -> None:
    """§8: an unmanaged sid → 500 "no such resource"; a bad state → 400 enumeration error."""
    missing = await sim_api.get("/cluster/ha/resources/vm:100")
    assert (missing.status, missing.reason) == (500, "no such resource 'vm:100'")
    bad = await sim_api.put("/cluster/ha/resources/vm:104", {"state": "sideways"})
    assert bad.status == 400 and "enumeration" in (bad.errors or {})["state"]


async def test_node_offline_is_595(sim: SimServer, sim_api: RawClient) -> None:
    """§2.2, §10: any /nodes/<offline node>/… call → 595 'No route to host', empty body."""
    sim.sim.set_node_offline("pve2", True)
    answer = await sim_api.get("/nodes/pve2/status")
    assert (answer.status, answer.reason, answer.text) == (595, "No route to host", "")
    tasks = await sim_api.get("/nodes/pve2/tasks")
    assert tasks.status == 595
    nodes = {n["node"]: n["status"] for n in (await sim_api.get("/nodes")).data}
    assert nodes == {"pve1": "online", "pve2": "offline"}
    sim.sim.set_node_offline("pve2", False)
    assert (await sim_api.get("/nodes/pve2/status")).status == 200


async def test_offline_node_guests_are_unknown(sim: SimServer, sim_api: RawClient) -> None:
    """§12.10: guests on an offline node read status 'unknown' in /cluster/resources."""
    sim.sim.set_node_offline("pve2", True)
    items = (await sim_api.get("/cluster/resources", {"type": "vm"})).data
    statuses: dict[str, set[str]] = {i["node"]: set() for i in items}
    for item in items:
        statuses[item["node"]].add(item["status"])
    assert statuses["pve2"] == {"unknown"}
    assert "unknown" not in statuses["pve1"]


async def test_node_crash_kills_tasks(sim: SimServer, sim_api: RawClient) -> None:
    """§4.7: a node crash kills its workers (unexpected status) and stops its guests."""
    guest = sim.sim.pick_guest("qemu", running=False, node="pve1")
    sim.sim.add_fault(method="POST", path="/status/start$", task_seconds=5.0)
    upid = (await sim_api.post(_path(guest, "/status/start"))).data
    await asyncio.sleep(0.02)
    sim.sim.set_node_offline("pve1", True, crash=True)
    await sim.sim.settle(1.0)
    sim.sim.set_node_offline("pve1", False)
    done = await sim_api.wait_task(upid)
    assert done["exitstatus"] == "unexpected status"
    assert not any(g.running for g in sim.sim.guests.values() if g.node == "pve1")


async def test_unknown_node(sim_api: RawClient) -> None:
    """§1 intro: a {node} that is not a cluster member fails the proxy hostname lookup."""
    answer = await sim_api.get("/nodes/pve9/status")
    assert answer.status == 500
    assert answer.reason.startswith("hostname lookup 'pve9' failed")
