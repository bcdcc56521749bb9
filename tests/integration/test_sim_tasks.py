"""Tasks: UPIDs, status, logs, task lists, archive and rotation (reference §3, §4, §12.1–12.3)."""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable

from lifecycled.domain.upid import Upid
from lifecycled.sim import SimServer
from lifecycled.sim.rawclient import RawClient

SimFactory = Callable[..., Awaitable[SimServer]]
UPID_RE = re.compile(
    r"^UPID:pve[12]:[0-9A-F]{8}:[0-9A-F]{8,9}:[0-9A-F]{8}:[^:\s/]+:[^:\s/]*:[^:\s/]+:$"
)


async def _start(api: RawClient, server: SimServer, vmid: int | None = None) -> str:
    guest = server.sim.guests[vmid] if vmid else server.sim.pick_guest("qemu", running=False)
    answer = await api.post(f"/nodes/{guest.node}/qemu/{guest.vmid}/status/start")
    assert answer.status == 200, answer.reason
    upid: str = answer.data
    return upid


async def _quiet(sim_factory: SimFactory, **overrides: object) -> tuple[SimServer, RawClient]:
    """A simulator whose archiver only runs when the test says so."""
    server = await sim_factory(archive_interval=3600.0, **overrides)
    return server, RawClient(server.url, token=server.cfg.token)


async def test_upid_layout(sim: SimServer, sim_api: RawClient) -> None:
    """§3.1: UPID:node:%08X pid:%08X pstart:%08X starttime:type:id:user: with a trailing colon."""
    before = int(time.time())
    upid_text = await _start(sim_api, sim)
    assert UPID_RE.match(upid_text), upid_text
    upid = Upid.parse(upid_text)
    assert upid.type == "qmstart"
    assert upid.user == "root@pam!lifecycled"
    assert before - 1 <= upid.starttime <= time.time() + 1
    assert upid.pid > 0 and upid.pstart > 0


async def test_task_status_fields(sim: SimServer, sim_api: RawClient) -> None:
    """§4.1: status has the UPID fields, bare user + tokenid, exitstatus once stopped, no endtime."""
    upid = await _start(sim_api, sim)
    node = Upid.parse(upid).node
    running = await sim_api.get(f"/nodes/{node}/tasks/{upid}/status")
    assert running.data["status"] == "running"
    assert "exitstatus" not in running.data
    done = await sim_api.wait_task(upid)
    parsed = Upid.parse(upid)
    assert done == {
        "upid": upid,
        "node": node,
        "pid": parsed.pid,
        "pstart": parsed.pstart,
        "starttime": parsed.starttime,
        "type": "qmstart",
        "id": parsed.id,
        "user": "root@pam",
        "tokenid": "lifecycled",
        "status": "stopped",
        "exitstatus": "OK",
    }


async def test_task_log_lines_and_total(sim: SimServer, sim_api: RawClient) -> None:
    """§4.2: the log is [{n, t}] with total; the last line is TASK OK; start/limit page it."""
    guest = sim.sim.pick_guest("qemu", running=False)
    path = f"/nodes/{guest.node}/qemu/{guest.vmid}/config"
    upid = (await sim_api.post(path, {"cores": "2", "name": "renamed"})).data
    await sim_api.wait_task(upid)
    log = await sim_api.get(f"/nodes/{guest.node}/tasks/{upid}/log")
    assert log.json["total"] == len(log.data) == 3
    assert [item["n"] for item in log.data] == [1, 2, 3]
    assert log.data[-1] == {"n": 3, "t": "TASK OK"}
    page = await sim_api.get(f"/nodes/{guest.node}/tasks/{upid}/log", {"start": 1, "limit": 1})
    assert page.data == [{"n": 2, "t": log.data[1]["t"]}]
    assert page.json["total"] == 3


async def test_unknown_upid_log_is_one_line(sim: SimServer, sim_api: RawClient) -> None:
    """§12.1: the log of an unknown UPID answers 200 with one 'unable to open file' line."""
    upid = "UPID:pve1:00001234:00ABCDEF:65000000:qmstart:100:root@pam:"
    answer = await sim_api.get(f"/nodes/pve1/tasks/{upid}/log")
    assert answer.status == 200
    assert answer.data == [{"n": 1, "t": "unable to open file - No such file or directory"}]


async def test_unknown_upid_status_is_no_such_task(sim_api: RawClient) -> None:
    """§4.1: an unknown UPID → 400 {"errors":{"upid":"no such task"}}."""
    upid = "UPID:pve1:00001234:00ABCDEF:65000000:qmstart:100:root@pam:"
    answer = await sim_api.get(f"/nodes/pve1/tasks/{upid}/status")
    assert (answer.status, answer.errors) == (400, {"upid": "no such task"})


async def test_wrong_node_is_no_such_task(sim: SimServer, sim_api: RawClient) -> None:
    """§4.1: polling through a node that is not the UPID's node → 400 no such task."""
    upid = await _start(sim_api, sim)
    other = "pve2" if Upid.parse(upid).node == "pve1" else "pve1"
    answer = await sim_api.get(f"/nodes/{other}/tasks/{upid}/status")
    assert (answer.status, answer.errors) == (400, {"upid": "no such task"})


async def test_unparsable_upid(sim_api: RawClient) -> None:
    """§4.1: a malformed UPID (e.g. proxmoxer's fake suffix) → 400 'unable to parse worker upid'."""
    answer = await sim_api.get("/nodes/pve1/tasks/UPID:pve1:1:2:3:qmstart:100:root@pam:done/status")
    assert (answer.status, answer.errors) == (400, {"upid": "unable to parse worker upid"})


async def test_stop_task_received_interrupt(sim: SimServer, sim_api: RawClient) -> None:
    """§4.6: DELETE on a running task → null, and the task ends 'received interrupt'."""
    guest = sim.sim.pick_guest("qemu", running=False)
    sim.sim.add_fault(method="POST", path="/status/start$", task_seconds=5.0)
    upid = await _start(sim_api, sim, guest.vmid)
    answer = await sim_api.delete(f"/nodes/{guest.node}/tasks/{upid}")
    assert (answer.status, answer.json) == (200, {"data": None})
    done = await sim_api.wait_task(upid)
    assert done["exitstatus"] == "received interrupt"
    assert not guest.running
    again = await sim_api.delete(f"/nodes/{guest.node}/tasks/{upid}")
    assert again.status == 200  # a finished task: no-op


async def test_active_list_shows_finished_task_as_running_until_archived(
    sim_factory: SimFactory,
) -> None:
    """§4.3, §12.3: a finished task stays RUNNING in source=active until the archiver runs."""
    server, api = await _quiet(sim_factory)
    async with api:
        upid = await _start(api, server)
        node = Upid.parse(upid).node
        await api.wait_task(upid)
        active = await api.get(f"/nodes/{node}/tasks", {"source": "active"})
        assert [(t["upid"], t["status"]) for t in active.data] == [(upid, "RUNNING")]
        assert active.data[0]["user"] == "root@pam!lifecycled"
        assert "tokenid" not in active.data[0]
        archive = await api.get(f"/nodes/{node}/tasks")
        assert archive.data == [] and "total" not in archive.json
        server.sim.archive_now()
        archive = await api.get(f"/nodes/{node}/tasks")
    item = archive.data[0]
    assert (item["upid"], item["status"], item["user"], item["tokenid"]) == (
        upid,
        "OK",
        "root@pam",
        "lifecycled",
    )
    assert item["endtime"] >= item["starttime"]
    assert archive.json["total"] == 1


async def test_archiver_runs_on_next_fork(sim_factory: SimFactory) -> None:
    """§4.3: a task enters the archive at the next fork_worker on that node."""
    server, api = await _quiet(sim_factory, nodes=("pve1",))
    async with api:
        first = await _start(api, server, 100)
        await api.wait_task(first)
        await _start(api, server, 101)
        archive = await api.get("/nodes/pve1/tasks")
    assert [t["upid"] for t in archive.data] == [first]


async def test_task_list_filters(sim_factory: SimFactory) -> None:
    """§4.3: vmid, typefilter, userfilter, errors, since/until, start/limit and total."""
    server, api = await _quiet(sim_factory, nodes=("pve1",))
    async with api:
        ok = await _start(api, server, 101)
        failed = await _start(api, server, 100)  # QEMU start on a running VM: task error
        await api.wait_task(ok)
        await api.wait_task(failed)
        server.sim.archive_now()
        base = "/nodes/pve1/tasks"
        by_vmid = await api.get(base, {"vmid": 101})
        assert [t["upid"] for t in by_vmid.data] == [ok]
        by_type = await api.get(base, {"typefilter": "qmstart"})
        assert [t["upid"] for t in by_type.data] == [failed, ok]  # newest first
        assert (await api.get(base, {"typefilter": "qmstop"})).json == {"data": []}
        errors = await api.get(base, {"errors": 1})
        assert [(t["upid"], t["status"]) for t in errors.data] == [
            (failed, "VM 100 already running")
        ]
        assert (await api.get(base, {"userfilter": "ROOT@PAM"})).json["total"] == 2
        assert (await api.get(base, {"userfilter": "lifecycled"})).data == []  # bare user only
        start = Upid.parse(ok).starttime
        assert (await api.get(base, {"since": start + 5})).data == []
        assert len((await api.get(base, {"until": start + 5})).data) == 2
        page = await api.get(base, {"start": 1, "limit": 1})
        assert [t["upid"] for t in page.data] == [ok]
        assert page.json["total"] == 2
        statuses = await api.get(base, {"statusfilter": "ok"})
        assert [t["upid"] for t in statuses.data] == [ok]


async def test_source_all_lists_running_and_archived(sim_factory: SimFactory) -> None:
    """§4.3: source=all gives running tasks (status RUNNING) and archived ones."""
    server, api = await _quiet(sim_factory, nodes=("pve1",))
    async with api:
        done = await _start(api, server, 101)
        await api.wait_task(done)
        server.sim.archive_now()
        server.sim.add_fault(method="POST", path="/status/start$", task_seconds=5.0)
        running = await _start(api, server, 105)
        listing = await api.get("/nodes/pve1/tasks", {"source": "all"})
        await api.delete(f"/nodes/pve1/tasks/{running}")
    assert [(t["upid"], t["status"]) for t in listing.data] == [(running, "RUNNING"), (done, "OK")]


async def test_archive_rotation_gives_no_such_task(sim_factory: SimFactory) -> None:
    """§4.5: beyond archive_max finished tasks the oldest are rotated away → no such task."""
    server, api = await _quiet(sim_factory, nodes=("pve1",), archive_max=2)
    async with api:
        upids = []
        for _ in range(4):
            upid = await _start(api, server, 101)
            await api.wait_task(upid)
            upids.append(upid)
        server.sim.archive_now()
        gone = await api.get(f"/nodes/pve1/tasks/{upids[0]}/status")
        kept = await api.get(f"/nodes/pve1/tasks/{upids[3]}/status")
        listing = await api.get("/nodes/pve1/tasks")
    assert (gone.status, gone.errors) == (400, {"upid": "no such task"})
    assert kept.status == 200
    assert [t["upid"] for t in listing.data] == [upids[3], upids[2]]


async def test_forced_rotation(sim: SimServer, sim_api: RawClient) -> None:
    """§4.5: rotate_tasks(keep=0) drops every finished task; status → no such task."""
    upid = await _start(sim_api, sim)
    await sim_api.wait_task(upid)
    assert sim.sim.rotate_tasks() >= 1
    answer = await sim_api.get(f"/nodes/{Upid.parse(upid).node}/tasks/{upid}/status")
    assert answer.errors == {"upid": "no such task"}


async def test_cluster_tasks_is_refreshed_by_the_archiver(sim_factory: SimFactory) -> None:
    """§4.4: /cluster/tasks is a snapshot refreshed on the archiver loop (stale in between)."""
    server, api = await _quiet(sim_factory)
    async with api:
        upid = await _start(api, server)
        await api.wait_task(upid)
        stale = await api.get("/cluster/tasks")
        server.sim.archive_now()
        fresh = await api.get("/cluster/tasks")
    assert upid not in [t["upid"] for t in stale.data]
    item = next(t for t in fresh.data if t["upid"] == upid)
    assert (item["status"], item["user"], item["tokenid"]) == ("OK", "root@pam", "lifecycled")


async def test_log_path_bucket(sim: SimServer, sim_api: RawClient) -> None:
    """§3.1: each task's log file lives in /var/log/pve/tasks/<last hex digit of starttime>/."""
    upid = await _start(sim_api, sim)
    task = sim.sim.find_task(upid)
    assert task is not None
    assert task.log_path == f"/var/log/pve/tasks/{upid.split(':')[4][-1]}/{upid}"


async def test_zero_task_seconds_finishes_next_iteration(sim_factory: SimFactory) -> None:
    """task_seconds=0: the task ends as soon as the loop runs it (no wall-clock wait)."""
    server = await sim_factory(task_seconds=0.0)
    async with RawClient(server.url, token=server.cfg.token) as api:
        guest = server.sim.pick_guest("qemu", running=False)
        upid = await _start(api, server, guest.vmid)
        await server.sim.settle(0.5)
        assert (await api.wait_task(upid))["exitstatus"] == "OK"
    assert guest.running


async def test_per_type_task_durations(sim_factory: SimFactory) -> None:
    """task_durations overrides task_seconds for one worker type."""
    server = await sim_factory(task_durations={"qmstart": 0.3})
    async with RawClient(server.url, token=server.cfg.token) as api:
        started = time.monotonic()
        await api.wait_task(await _start(api, server))
        assert time.monotonic() - started >= 0.29
        guest = server.sim.pick_guest("qemu", running=True)
        started = time.monotonic()
        stop = await api.post(f"/nodes/{guest.node}/qemu/{guest.vmid}/status/stop")
        await api.wait_task(stop.data)
        assert time.monotonic() - started < 0.25
