"""Scripted faults, out-of-band changes and the /_sim/ control API (SPEC §6; reference §10, §11)."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest

from lifecycled.sim import SimServer
from lifecycled.sim.model import Guest
from lifecycled.sim.rawclient import RawClient


def _path(guest: Guest, suffix: str = "") -> str:
    return f"/nodes/{guest.node}/{guest.kind}/{guest.vmid}{suffix}"


async def _control(api: RawClient, method: str, path: str, body: Any = None) -> Any:
    answer = await api.call(method, f"/_sim{path}", json_body=body)
    assert answer.status == 200, answer.text
    return answer.json


async def test_status_fault_answers_without_executing(sim: SimServer, sim_api: RawClient) -> None:
    """A status fault answers status + reason instead of handling the request, K times."""
    guest = sim.sim.pick_guest("qemu", running=False)
    reason = f"can't lock file '/var/lock/qemu-server/lock-{guest.vmid}.conf' - got timeout"
    sim.sim.add_fault(method="POST", path=r"/status/start$", status=500, reason=reason, count=1)
    refused = await sim_api.post(_path(guest, "/status/start"))
    assert (refused.status, refused.reason) == (500, reason)
    assert refused.json == {"data": None, "message": reason + "\n"}
    assert not guest.running and sim.sim.requests[-1].upid is None
    again = await sim_api.post(_path(guest, "/status/start"))
    assert again.status == 200  # the fault was used up


async def test_status_fault_with_errors(sim: SimServer, sim_api: RawClient) -> None:
    """A 400 fault carries its errors object, like a parameter exception."""
    sim.sim.add_fault(
        method="GET",
        path="/version$",
        status=400,
        reason="Parameter verification failed.",
        errors={"vmid": "VM 218 already exists"},
    )
    answer = await sim_api.get("/version")
    assert answer.errors == {"vmid": "VM 218 already exists"}


async def test_596_after_execution(sim: SimServer, sim_api: RawClient) -> None:
    """§10: a 596 can come after the work started: execute=True runs the task, then answers 596."""
    guest = sim.sim.pick_guest("qemu", running=False)
    sim.sim.add_fault(
        method="POST",
        path="/status/start$",
        status=596,
        reason="Connection timed out",
        execute=True,
    )
    answer = await sim_api.post(_path(guest, "/status/start"))
    assert (answer.status, answer.reason, answer.text) == (596, "Connection timed out", "")
    record = sim.sim.requests[-1]
    assert record.status == 596 and record.upid is not None
    await sim_api.wait_task(record.upid)
    assert guest.running


async def test_delay_fault(sim: SimServer, sim_api: RawClient) -> None:
    """A delay fault slows the answer down by its delay."""
    sim.sim.add_fault(method="GET", path="/version$", delay=0.3)
    started = time.monotonic()
    answer = await sim_api.get("/version")
    assert answer.status == 200 and time.monotonic() - started >= 0.29


async def test_drop_after_task_started(sim: SimServer, sim_api: RawClient) -> None:
    """A drop fault starts the task, then closes the connection without an answer."""
    guest = sim.sim.pick_guest("qemu", running=False)
    sim.sim.add_fault(method="POST", path=f"/{guest.vmid}/status/start$", drop=True)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await sim_api.post(_path(guest, "/status/start"))
    record = sim.sim.requests[-1]
    assert (record.status, record.reason) == (None, "dropped")
    assert record.upid is not None
    assert (await sim_api.wait_task(record.upid))["exitstatus"] == "OK"
    assert guest.running


@pytest.mark.parametrize(
    ("exitstatus", "effect", "applied"),
    [
        ("WARNINGS: 2", None, True),
        ("storage 'local-lvm' is not online", None, False),
        ("unexpected status", None, False),
        ("some error after the fact", True, True),
        ("OK", False, False),
    ],
)
async def test_exitstatus_fault(
    sim: SimServer, sim_api: RawClient, exitstatus: str, effect: bool | None, applied: bool
) -> None:
    """§4.1: a created task can be made to end OK / WARNINGS: n / error / unexpected status."""
    guest = sim.sim.pick_guest("qemu", running=False)
    sim.sim.add_fault(method="POST", path="/status/start$", exitstatus=exitstatus, effect=effect)
    upid = (await sim_api.post(_path(guest, "/status/start"))).data
    done = await sim_api.wait_task(upid)
    assert done["exitstatus"] == exitstatus
    assert guest.running is applied
    log = (await sim_api.get(f"/nodes/{guest.node}/tasks/{upid}/log")).data
    if exitstatus == "unexpected status":  # the worker died: no final TASK line
        assert not any(line["t"].startswith("TASK ") for line in log)


async def test_multiline_task_error_is_one_line(sim: SimServer, sim_api: RawClient) -> None:
    """§4.1: the worker turns newlines in an error message into spaces."""
    guest = sim.sim.pick_guest("qemu", running=False)
    sim.sim.add_fault(method="POST", path="/status/start$", exitstatus="first\nsecond")
    upid = (await sim_api.post(_path(guest, "/status/start"))).data
    assert (await sim_api.wait_task(upid))["exitstatus"] == "first second"


async def test_unlimited_fault_and_removal(sim: SimServer, sim_api: RawClient) -> None:
    """count=None keeps a fault armed until it is removed."""
    fault = sim.sim.add_fault(method="GET", path="/version$", status=503, reason="busy", count=None)
    for _ in range(3):
        assert (await sim_api.get("/version")).status == 503
    assert fault.hits == 3 and sim.sim.remove_fault(fault.id)
    assert (await sim_api.get("/version")).status == 200


async def test_control_faults_over_http(sim: SimServer, sim_api: RawClient) -> None:
    """POST/GET/DELETE /_sim/faults arm, list and disarm faults over HTTP."""
    body = {"method": "GET", "path": "/nodes$", "status": 500, "reason": "boom", "count": 2}
    fault = (await _control(sim_api, "POST", "/faults", body))["fault"]
    listed = (await _control(sim_api, "GET", "/faults"))["faults"]
    assert [f["id"] for f in listed] == [fault["id"]]
    assert (await sim_api.get("/nodes")).reason == "boom"
    await _control(sim_api, "DELETE", f"/faults/{fault['id']}")
    assert (await sim_api.get("/nodes")).status == 200
    bad = await sim_api.call("POST", "/_sim/faults", json_body={"nope": 1})
    assert bad.status == 400 and "unknown fault fields" in bad.json["error"]


async def test_request_log(sim: SimServer, sim_api: RawClient) -> None:
    """GET /_sim/requests?since=SEQ lists API requests (never control ones) with status and upid."""
    guest = sim.sim.pick_guest("qemu", running=False)
    await sim_api.get("/version")
    first = await _control(sim_api, "GET", "/requests")
    seq = first["last_seq"]
    upid = (await sim_api.post(_path(guest, "/status/start"), {"timeout": 30})).data
    later = await _control(sim_api, "GET", f"/requests?since={seq}")
    (item,) = later["items"]
    assert item["method"] == "POST" and item["path"] == "/api2/json" + _path(guest, "/status/start")
    assert (item["status"], item["upid"], item["params"]) == (200, upid, {"timeout": "30"})
    assert item["user"] == "root@pam!lifecycled" and item["seq"] == seq + 1
    await _control(sim_api, "DELETE", "/requests")
    assert (await _control(sim_api, "GET", "/requests"))["items"] == []


async def test_state_dump(sim: SimServer, sim_api: RawClient) -> None:
    """GET /_sim/state shows nodes, guests (status, config, lock, node) and tasks."""
    guest = sim.sim.pick_guest("qemu", running=False)
    upid = (await sim_api.post(_path(guest, "/status/start"))).data
    await sim_api.wait_task(upid)
    state = await _control(sim_api, "GET", "/state")
    dumped = next(g for g in state["guests"] if g["vmid"] == guest.vmid)
    assert (dumped["status"], dumped["node"], dumped["lock"]) == ("running", guest.node, None)
    assert dumped["config"]["smbios1"] == guest.config["smbios1"]
    task = next(t for t in state["tasks"] if t["upid"] == upid)
    assert task["exitstatus"] == "OK" and task["log"][-1] == "TASK OK"


async def test_state_dump_task_end_to_the_microsecond(sim: SimServer, sim_api: RawClient) -> None:
    """GET /_sim/state gives a stopped task's end as a float (the bench's latency origin)."""
    guest = sim.sim.pick_guest("qemu", running=False)
    before = time.time()
    upid = (await sim_api.post(_path(guest, "/status/start"))).data
    await sim_api.wait_task(upid)
    after = time.time()
    task = next(t for t in (await _control(sim_api, "GET", "/state"))["tasks"] if t["upid"] == upid)
    assert before <= task["ended_at"] <= after
    assert task["endtime"] == int(task["ended_at"])


async def test_out_of_band_changes_over_http(sim: SimServer, sim_api: RawClient) -> None:
    """The control API simulates someone else acting: create, config, status, move, delete."""
    created = await _control(
        sim_api,
        "POST",
        "/guests",
        {"vmid": 900, "kind": "lxc", "node": "pve2", "status": "running", "config": {"cores": 3}},
    )
    assert (created["status"], created["config"]["cores"]) == ("running", 3)
    status = await sim_api.get("/nodes/pve2/lxc/900/status/current")
    assert status.data["status"] == "running"
    await _control(
        sim_api, "POST", "/guests/900/config", {"set": {"memory": 768}, "delete": ["swap"]}
    )
    config = (await sim_api.get("/nodes/pve2/lxc/900/config")).data
    assert config["memory"] == 768 and "swap" not in config
    await _control(sim_api, "POST", "/guests/900/status", {"status": "stopped"})
    assert not sim.sim.guests[900].running
    await _control(sim_api, "POST", "/guests/900/move", {"node": "pve1"})
    assert (await sim_api.get("/nodes/pve1/lxc/900/status/current")).status == 200
    await _control(sim_api, "DELETE", "/guests/900")
    assert 900 not in sim.sim.guests
    missing = await sim_api.call("DELETE", "/_sim/guests/900")
    assert missing.status == 404


async def test_lock_controls_over_http(sim: SimServer, sim_api: RawClient) -> None:
    """/_sim/guests/{vmid}/lock holds a config lock (backup → vzdump task); lockfile holds the flock."""
    guest = sim.sim.pick_guest("qemu", running=False)
    held = await _control(
        sim_api, "POST", f"/guests/{guest.vmid}/lock", {"lock": "backup", "seconds": 5}
    )
    assert held["upid"].split(":")[5] == "vzdump" and guest.lock == "backup"
    await _control(sim_api, "DELETE", f"/guests/{guest.vmid}/lock")
    assert guest.lock is None
    await _control(sim_api, "POST", f"/guests/{guest.vmid}/lockfile", {"seconds": 1})
    answer = await sim_api.put(_path(guest, "/config"), {"cores": 2})
    assert answer.reason.endswith("- got timeout")


async def test_node_ha_acpi_and_task_controls_over_http(sim: SimServer, sim_api: RawClient) -> None:
    """Control API: node offline, HA management, ACPI, archive, rotate and kill."""
    await _control(sim_api, "POST", "/nodes/pve2/offline", {"offline": True})
    assert (await sim_api.get("/nodes/pve2/status")).status == 595
    await _control(sim_api, "POST", "/nodes/pve2/offline", {"offline": False})
    await _control(sim_api, "POST", "/guests/100/ha", {"state": "started"})
    assert (await sim_api.get("/cluster/ha/resources/vm:100")).status == 200
    await _control(sim_api, "POST", "/guests/100/acpi", {"responds": False})
    assert sim.sim.guests[100].acpi is False
    guest = sim.sim.pick_guest("qemu", running=False)
    sim.sim.add_fault(method="POST", path="/status/start$", task_seconds=5.0)
    upid = (await sim_api.post(_path(guest, "/status/start"))).data
    assert (await _control(sim_api, "POST", "/tasks/kill", {"upid": upid}))["killed"] is True
    assert (await sim_api.wait_task(upid))["exitstatus"] == "unexpected status"
    await _control(sim_api, "POST", "/tasks/archive")
    rotated = await _control(sim_api, "POST", "/tasks/rotate", {"keep": 0})
    assert rotated["rotated"] >= 1
    gone = await sim_api.get(f"/nodes/{guest.node}/tasks/{upid}/status")
    assert gone.errors == {"upid": "no such task"}


async def test_control_errors(sim_api: RawClient) -> None:
    """Control API errors are JSON: 404 for unknown routes or guests, 400 for bad input."""
    assert (await sim_api.call("GET", "/_sim/nothing")).status == 404
    bad = await sim_api.call("POST", "/_sim/guests/100/status", json_body={"status": "melted"})
    assert bad.status == 400
    assert (
        await sim_api.call("POST", "/_sim/guests/4242/status", json_body={"status": "stopped"})
    ).status == 404
