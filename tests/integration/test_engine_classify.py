"""One classification, end to end: the engine acts on the class the adapter decided
(reference §11, §13.1, §13.2, §13.11), against the simulator over loopback HTTP."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from engine_support import (
    Crashed,
    client_for,
    crash_journal,
    pick,
    running,
    seeded,
    started,
    submit,
    wait_terminal,
    writes_to,
)

from lifecycled.domain.states import OpState
from lifecycled.sim import SimServer
from lifecycled.sim.rawclient import RawClient
from lifecycled.sim.tasks import Task

GUEST_LOCK = "can't lock file '/var/lock/qemu-server/lock-{vmid}.conf' - got timeout"
UNREADABLE_LOG = "unable to get last line from task log - open failed: No such file or directory"


def tasks_of(server: SimServer, vmid: int, worker_type: str) -> list[Task]:
    """Every task of ``worker_type`` for ``vmid`` the simulator's nodes know."""
    return [
        task
        for book in server.sim.books.values()
        for task in book.by_upid.values()
        if task.upid.id == str(vmid) and task.upid.type == worker_type
    ]


def task_list_reads(server: SimServer) -> list[str]:
    """Task-list searches the simulator received (``GET /nodes/{node}/tasks``)."""
    return [r.path for r in server.sim.requests if r.method == "GET" and r.path.endswith("/tasks")]


@pytest.mark.parametrize("answer", ["garbled", "truncated"])
@pytest.mark.parametrize(
    ("action", "start_running", "worker"),
    [("reboot", True, "qmreboot"), ("start", False, "qmstart")],
)
async def test_unreadable_200_after_the_task_started_is_adopted(
    sim: SimServer, tmp_path: Path, answer: str, action: str, start_running: bool, worker: str
) -> None:
    """A garbled or truncated 200 to a POST whose task started: the op adopts that task, one POST."""
    guest = pick(sim, "qemu", start_running)
    suffix = f"/status/{action}"
    sim.sim.add_fault(method="POST", path=f"/qemu/{guest.vmid}{suffix}$", answer=answer)
    async with running(sim, tmp_path) as rt:
        op = await submit(rt, action, guest, key=f"{answer}-{action}")
        done = await wait_terminal(rt, op.id)
        history = await rt.journal.history(op.id)
    (task,) = tasks_of(sim, guest.vmid, worker)
    assert done.state is OpState.SUCCEEDED, done.error
    assert done.upid_text == task.text
    assert len(writes_to(sim, guest.vmid, suffix)) == 1
    assert any("adopt" in h.reason for h in history)


async def test_fork_then_active_lock_timeout_is_adopted(sim: SimServer, tmp_path: Path) -> None:
    """``.active.lock`` timeout after fork_worker forked a reboot: adopted, never re-POSTed."""
    guest = pick(sim, "qemu", True)
    sim.sim.add_fault(
        method="POST", path=f"/qemu/{guest.vmid}/status/reboot$", answer="fork-lock-timeout"
    )
    async with running(sim, tmp_path) as rt:
        op = await submit(rt, "reboot", guest, key="active-lock")
        done = await wait_terminal(rt, op.id)
    (task,) = tasks_of(sim, guest.vmid, "qmreboot")
    assert done.state is OpState.SUCCEEDED, done.error
    assert done.upid_text == task.text
    assert len(writes_to(sim, guest.vmid, "/status/reboot")) == 1


async def test_guest_lock_file_timeout_is_retried_not_searched(
    sim: SimServer, tmp_path: Path
) -> None:
    """A guest's own lock-file timeout (before the fork) is retried, never treated as ambiguous."""
    guest = pick(sim, "qemu", True)
    sim.sim.add_fault(
        method="POST",
        path=f"/qemu/{guest.vmid}/status/reboot$",
        status=500,
        reason=GUEST_LOCK.format(vmid=guest.vmid),
    )
    async with running(sim, tmp_path) as rt:
        op = await submit(rt, "reboot", guest, key="guest-lock")
        done = await wait_terminal(rt, op.id)
        history = await rt.journal.history(op.id)
    assert done.state is OpState.SUCCEEDED, done.error
    assert done.attempts == 2
    assert len(writes_to(sim, guest.vmid, "/status/reboot")) == 2
    assert len(tasks_of(sim, guest.vmid, "qmreboot")) == 1
    assert task_list_reads(sim) == []
    assert not any("unknown" in h.reason for h in history)


async def test_unreadable_task_log_leaves_the_op_in_flight(sim: SimServer, tmp_path: Path) -> None:
    """``unable to get last line from task log`` is no failure: the task is read again later."""
    guest = pick(sim, "qemu", False)
    sim.sim.add_fault(
        method="POST",
        path=f"/qemu/{guest.vmid}/status/start$",
        exitstatus=UNREADABLE_LOG,
        effect=True,
    )
    async with running(sim, tmp_path) as rt:
        op = await submit(rt, "start", guest, key="unreadable-log")
        async with asyncio.timeout(10):
            while not tasks_of(sim, guest.vmid, "qmstart") or any(
                t.running for t in tasks_of(sim, guest.vmid, "qmstart")
            ):
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # several tracker polls of the stopped task
        meanwhile = await rt.journal.get(op.id)
        (task,) = tasks_of(sim, guest.vmid, "qmstart")
        task.lines[-1] = "TASK OK"  # the log is readable again: the status reads OK
        done = await wait_terminal(rt, op.id)
    assert not meanwhile.state.is_terminal
    assert done.state is OpState.SUCCEEDED, done.error
    assert len(writes_to(sim, guest.vmid, "/status/start")) == 1


async def test_background_delay_task_failure_fails_the_op_once(
    sim: SimServer, tmp_path: Path
) -> None:
    """A task error wrapped in background_delay's 500 fails the op once, never re-sent."""
    guest = pick(sim, "qemu", False)
    sim.sim.add_fault(
        method="POST", path=f"/qemu/{guest.vmid}/config$", exitstatus="hotplug problem"
    )
    async with running(sim, tmp_path) as rt:
        op = await submit(rt, "configure", guest, key="bg-delay", cores=3, background_delay=5)
        done = await wait_terminal(rt, op.id)
    assert done.state is OpState.FAILED
    assert done.error is not None
    assert done.error.message == f"failed to update VM {guest.vmid}: hotplug problem"
    assert len(writes_to(sim, guest.vmid, "/config")) == 1
    assert str(sim.sim.guests[guest.vmid].config.get("cores")) != "3"


async def test_recover_leaves_a_task_with_an_unreadable_log_in_flight(
    sim: SimServer, tmp_path: Path
) -> None:
    """Recover keeps an op whose task log is unreadable in flight until the log reads OK."""
    guest = pick(sim, "qemu", False)
    sim.sim.add_fault(
        method="POST",
        path=f"/qemu/{guest.vmid}/status/start$",
        exitstatus=UNREADABLE_LOG,
        effect=True,
    )
    async with RawClient(sim.url, token=sim.cfg.token) as api:
        answer = await api.post(f"/nodes/{guest.node}/qemu/{guest.vmid}/status/start")
    upid = str(answer.data)
    await sim.sim.settle()
    settings = await seeded(sim, tmp_path, guests=[guest])
    ids = await crash_journal(
        settings.db, [Crashed(guest=guest, action="start", upid=upid)], claimed_at=time.time() - 10
    )
    async with started(settings, client_for(sim)) as (runtime, _task):
        await asyncio.sleep(0.6)  # tracker polls of the stopped task
        meanwhile = await runtime.journal.get(ids[guest.vmid])
        found = sim.sim.find_task(upid)
        assert found is not None
        found.lines[-1] = "TASK OK"
        done = await wait_terminal(runtime, ids[guest.vmid])
    assert meanwhile.state is OpState.RUNNING
    assert done.state is OpState.SUCCEEDED, done.error
    assert done.upid_text == upid
