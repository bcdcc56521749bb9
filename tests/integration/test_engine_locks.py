"""The engine's lock rules per kind and action, and boolean params, against the simulator (§13.6, §13.7)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from engine_support import running, submit, wait_terminal, writes_to

from lifecycled.domain.states import OpState
from lifecycled.engine.runtime import Runtime
from lifecycled.errors import ValidationError
from lifecycled.sim import SimServer


async def _attempted(rt: Runtime, op_id: int, times: int) -> None:
    """Wait until the op has been claimed ``times`` times (each claim re-reads the guest)."""
    async with asyncio.timeout(10):
        while (await rt.journal.get(op_id)).attempts < times:
            await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("action", "lock"),
    [("shutdown", "mounted"), ("suspend", "mounted")],
)
async def test_lxc_strict_lock_waits(
    sim: SimServer, tmp_path: Path, action: str, lock: str
) -> None:
    """An LXC shutdown/suspend on a `mounted` lock is held back (nothing sent) and goes out,
    once, after the lock is released."""
    guest = sim.sim.create_guest(900, kind="lxc", node="pve1", status="running")
    guest.config["lock"] = lock
    async with running(sim, tmp_path, lock_wait_max=30.0) as rt:
        op = await submit(rt, action, guest, key=f"lxc-{action}")
        await _attempted(rt, op.id, 2)
        assert writes_to(sim, guest.vmid) == []
        held = await rt.journal.get(op.id)
        assert held.error is not None and held.error.message == f"CT is locked ({lock})"
        del guest.config["lock"]
        done = await wait_terminal(rt, op.id)
    assert done.state is OpState.SUCCEEDED, done.error
    assert len(writes_to(sim, guest.vmid, f"/status/{action}")) == 1
    assert not guest.running


@pytest.mark.parametrize(
    ("kind", "action", "lock", "start_running"),
    [
        ("lxc", "reboot", "backup", True),
        ("lxc", "stop", "mounted", True),
        ("qemu", "suspend", "backup", True),
    ],
)
async def test_action_without_that_lock_check_is_sent(
    sim: SimServer, tmp_path: Path, kind: str, action: str, lock: str, start_running: bool
) -> None:
    """Actions Proxmox runs despite this lock (LXC reboot checks none, LXC stop exempts
    `mounted`, QEMU suspend skips a backup lock) are sent at once and succeed."""
    guest = sim.sim.create_guest(
        900, kind=kind, node="pve1", status="running" if start_running else "stopped"
    )
    guest.config["lock"] = lock
    async with running(sim, tmp_path) as rt:
        op = await submit(rt, action, guest, key=f"{kind}-{action}")
        done = await wait_terminal(rt, op.id)
    assert done.state is OpState.SUCCEEDED, done.error
    assert done.attempts == 1
    assert len(writes_to(sim, guest.vmid, f"/status/{action}")) == 1


async def test_boolean_text_is_normalised_and_sent_as_one(sim: SimServer, tmp_path: Path) -> None:
    """An op whose boolean reads "true" is journaled as true, sent as 1, and succeeds."""
    guest = sim.sim.create_guest(900, kind="qemu", node="pve1", status="running")
    async with running(sim, tmp_path) as rt:
        op = await submit(rt, "stop", guest, key="bool", **{"overrule-shutdown": "true"})
        assert op.params["overrule-shutdown"] is True
        done = await wait_terminal(rt, op.id)
    assert done.state is OpState.SUCCEEDED, done.error
    sent = [r for r in sim.sim.requests if r.path.endswith("/900/status/stop")]
    assert [r.params.get("overrule-shutdown") for r in sent] == ["1"]
    assert not guest.running


async def test_boolean_that_is_no_boolean_is_refused_at_submission(
    sim: SimServer, tmp_path: Path
) -> None:
    """A boolean spelled "yes" is refused at submission, naming the parameter; nothing is sent."""
    guest = sim.sim.create_guest(900, kind="qemu", node="pve1", status="running")
    async with running(sim, tmp_path) as rt:
        with pytest.raises(ValidationError) as info:
            await submit(rt, "stop", guest, key="bad-bool", **{"overrule-shutdown": "yes"})
    assert list(info.value.details) == ["params.overrule-shutdown"]
    assert "boolean" in info.value.details["params.overrule-shutdown"]
    assert writes_to(sim, guest.vmid) == []
