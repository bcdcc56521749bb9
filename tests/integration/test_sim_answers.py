"""The simulator's wrong answers after doing the work, and QEMU config's background_delay
answers (reference §13.1, §13.2), seen on the wire."""

from __future__ import annotations

import aiohttp
import pytest

from lifecycled.sim import SimServer
from lifecycled.sim.faults import ACTIVE_LOCK_TIMEOUT
from lifecycled.sim.model import Guest
from lifecycled.sim.rawclient import RawClient


def _path(guest: Guest, suffix: str = "") -> str:
    return f"/nodes/{guest.node}/{guest.kind}/{guest.vmid}{suffix}"


def _tasks(sim: SimServer, vmid: int, worker: str) -> list[str]:
    return [
        text
        for book in sim.sim.books.values()
        for text, task in book.by_upid.items()
        if task.upid.id == str(vmid) and task.upid.type == worker
    ]


async def test_garbled_answer_after_the_task_started(sim: SimServer, sim_api: RawClient) -> None:
    """``answer: garbled``: the task runs, the 200's body is not JSON."""
    guest = sim.sim.pick_guest("qemu", running=False)
    sim.sim.add_fault(method="POST", path=r"/status/start$", answer="garbled")
    got = await sim_api.post(_path(guest, "/status/start"))
    assert got.status == 200
    assert got.json is None  # not JSON
    (upid,) = _tasks(sim, guest.vmid, "qmstart")
    assert sim.sim.requests[-1].upid == upid


async def test_truncated_answer_after_the_task_started(sim: SimServer) -> None:
    """``answer: truncated``: the task runs, the 200 promises a body and is cut mid-way."""
    guest = sim.sim.pick_guest("qemu", running=False)
    sim.sim.add_fault(method="POST", path=r"/status/start$", answer="truncated")
    headers = {"Authorization": f"PVEAPIToken={sim.cfg.token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{sim.url}/api2/json{_path(guest, '/status/start')}", headers=headers
        ) as resp,
    ):
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    assert len(_tasks(sim, guest.vmid, "qmstart")) == 1
    assert sim.sim.requests[-1].reason == "truncated"


async def test_fork_lock_timeout_after_the_task_started(sim: SimServer, sim_api: RawClient) -> None:
    """``answer: fork-lock-timeout``: the task runs, the answer is fork_worker's 500 (§13.1)."""
    guest = sim.sim.pick_guest("qemu", running=True)
    sim.sim.add_fault(method="POST", path=r"/status/reboot$", answer="fork-lock-timeout")
    got = await sim_api.post(_path(guest, "/status/reboot"))
    assert (got.status, got.reason) == (500, ACTIVE_LOCK_TIMEOUT)
    assert len(_tasks(sim, guest.vmid, "qmreboot")) == 1


def test_answer_fault_is_validated(sim: SimServer) -> None:
    """Only the known wrong answers are accepted, and never together with status or drop."""
    with pytest.raises(ValueError, match="answer must be one of"):
        sim.sim.add_fault(answer="rude")
    with pytest.raises(ValueError, match="no status"):
        sim.sim.add_fault(answer="garbled", status=500)


@pytest.mark.parametrize(
    ("exitstatus", "lock_text"),
    [("VM is locked (backup)", True), ("hotplug problem - cannot unplug", False)],
)
async def test_background_delay_failure_is_a_500_without_upid(
    sim: SimServer, sim_api: RawClient, exitstatus: str, lock_text: bool
) -> None:
    """A qmconfig task failing within background_delay: 500 ``failed to update VM N: …``."""
    guest = sim.sim.pick_guest("qemu", running=False)
    sim.sim.add_fault(method="POST", path=r"/config$", exitstatus=exitstatus)
    got = await sim_api.post(_path(guest, "/config"), {"cores": 2, "background_delay": 5})
    assert (got.status, got.reason) == (500, f"failed to update VM {guest.vmid}: {exitstatus}")
    assert got.json is not None and got.json["data"] is None
    assert len(_tasks(sim, guest.vmid, "qmconfig")) == 1  # the task exists, its UPID is not told


async def test_background_delay_warnings_answer_null(sim: SimServer, sim_api: RawClient) -> None:
    """A qmconfig task ending ``WARNINGS: n`` within background_delay answers null (§13.2)."""
    guest = sim.sim.pick_guest("qemu", running=False)
    sim.sim.add_fault(method="POST", path=r"/config$", exitstatus="WARNINGS: 1", effect=True)
    got = await sim_api.post(_path(guest, "/config"), {"cores": 2, "background_delay": 5})
    assert (got.status, got.json) == (200, {"data": None})


async def test_background_delay_outlived_returns_the_upid(
    sim: SimServer, sim_api: RawClient
) -> None:
    """A task still running when background_delay ends: the UPID, as without the delay."""
    guest = sim.sim.pick_guest("qemu", running=False)
    sim.sim.add_fault(method="POST", path=r"/config$", task_seconds=3.0)
    got = await sim_api.post(_path(guest, "/config"), {"cores": 2, "background_delay": 1})
    assert got.status == 200 and str(got.json["data"]).startswith("UPID:")
