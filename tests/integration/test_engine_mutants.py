"""Engine paths a hand-made mutation once slipped past the suite (issue 10 point 11).

Each test drives the real engine against the simulator over loopback HTTP and asserts what
Proxmox received (the simulator's request log) and what the journal holds. docs/TESTING.md
lists the mutation each test was checked against.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from engine_support import (
    Crashed,
    client_for,
    crash_journal,
    journal_op,
    pick,
    running,
    seeded,
    submit,
    wait_terminal,
    writes_to,
)

from lifecycled.domain.actions import Action
from lifecycled.domain.op import GuestKind
from lifecycled.domain.states import OpState
from lifecycled.domain.upid import Upid
from lifecycled.journal import Journal
from lifecycled.pve.auth import TicketAuth
from lifecycled.pve.http import HttpPveClient
from lifecycled.sim import SimServer
from lifecycled.sim.model import Guest

PASSWORD = "another-admin"


async def post_task(server: SimServer, guest: Guest, action: str, **fault: object) -> str:
    """Start ``action`` on ``guest`` as lifecycled's own token user would; its UPID."""
    if fault:
        server.sim.add_fault(method="POST", path=f"/{guest.vmid}/status/{action}$", **fault)
    async with client_for(server) as pve:
        upid = await pve.dispatch(guest.node, GuestKind(guest.kind), Action(action), guest.vmid, {})
    assert upid is not None
    return str(upid)


def upids_in(history: Iterable[object]) -> set[str]:
    return {h.upid for h in history if getattr(h, "upid", None)}  # type: ignore[attr-defined]


def plain_guests(server: SimServer, n: int, *, running_now: bool | None = None) -> list[Guest]:
    chosen: set[int] = set()
    found: list[Guest] = []
    for kind, state in (("qemu", True), ("lxc", True), ("qemu", False), ("lxc", False)):
        if running_now is not None and state != running_now:
            continue
        while len(found) < n:
            try:
                found.append(pick(server, kind, state, avoid=chosen))
            except LookupError:
                break
    assert len(found) >= n, "not enough plain guests in the simulator"
    return found[:n]


# --- (a) an op picked up again after an unanswered POST searches before it POSTs -------------


async def test_reboot_picked_up_after_an_unanswered_post_adopts_instead_of_reposting(
    sim: SimServer, tmp_path: Path
) -> None:
    """A reboot whose POST went unanswered (the task ran) and whose first task search failed is
    picked up again: it searches, adopts the task, and Proxmox gets one reboot, not two."""
    guest = pick(sim, "qemu", True)
    sim.sim.add_fault(method="POST", path=f"/{guest.vmid}/status/reboot$", drop=True, count=1)
    sim.sim.add_fault(
        method="GET", path=f"/nodes/{guest.node}/tasks$", status=500, reason="proxy loop", count=1
    )
    async with running(sim, tmp_path) as rt:
        op = await submit(rt, "reboot", guest, key="rb-unanswered")
        done = await wait_terminal(rt, op.id)
        history = await rt.journal.history(op.id)
    reboots = [r for r in sim.sim.requests if r.method == "POST" and r.path.endswith("/reboot")]
    assert len(reboots) == 1, [r.path for r in reboots]
    assert done.state is OpState.SUCCEEDED, done.error
    assert done.attempts == 2
    assert done.upid_text == reboots[0].upid
    assert any(h.reason.startswith("adopted") and h.upid == done.upid_text for h in history)


async def test_slow_start_picked_up_after_an_unanswered_post_is_not_posted_again(
    sim: SimServer, tmp_path: Path
) -> None:
    """The same for a start whose task is still running when the op is picked up again: the
    guest is not running yet, but the task is found and adopted; one start POST in all."""
    guest = pick(sim, "qemu", False)
    sim.sim.add_fault(
        method="POST", path=f"/{guest.vmid}/status/start$", drop=True, count=1, task_seconds=2.0
    )
    sim.sim.add_fault(
        method="GET", path=f"/nodes/{guest.node}/tasks$", status=500, reason="proxy loop", count=1
    )
    async with running(sim, tmp_path) as rt:
        op = await submit(rt, "start", guest, key="start-unanswered")
        done = await wait_terminal(rt, op.id)
    assert len(writes_to(sim, guest.vmid, "/status/start")) == 1
    assert done.state is OpState.SUCCEEDED, done.error
    assert done.upid is not None and done.upid.type == "qmstart"
    assert sim.sim.guests[guest.vmid].running


# --- (b) Recover adopts the task of an op that crashed before its UPID was journaled ----------


async def test_recover_adopts_the_task_of_an_op_without_upid(
    sim: SimServer, tmp_path: Path
) -> None:
    """Killed between the POST and journaling its UPID: Recover finds the one task in the
    node's task list, journals it as the op's UPID and follows it to success (one op, so
    Recover searches per op)."""
    guest = pick(sim, "qemu", True)
    settings = await seeded(sim, tmp_path)
    claimed_at = time.time() - 1
    ids = await crash_journal(
        settings.db, [Crashed(guest=guest, action="reboot")], claimed_at=claimed_at
    )
    upid = await post_task(sim, guest, "reboot")
    async with running(sim, tmp_path) as rt:
        report = rt.recoverer.last_report
        done = await wait_terminal(rt, ids[guest.vmid])
    assert report is not None and report.counts.get("adopted") == 1, report
    assert done.state is OpState.SUCCEEDED, done.error
    assert done.upid_text == upid
    assert len(writes_to(sim, guest.vmid, "/status/reboot")) == 1


async def test_recover_with_prefetch_adopts_tasks_of_ops_without_upid(
    sim: SimServer, tmp_path: Path
) -> None:
    """The same with enough ops in flight that Recover reads each node's task list once:
    each of six ops adopts exactly its own task (reboots and stops, qemu and lxc)."""
    guests = plain_guests(sim, 6, running_now=True)
    crashed = [Crashed(guest=g, action="reboot" if i % 2 else "stop") for i, g in enumerate(guests)]
    settings = await seeded(sim, tmp_path, node_cap=8)
    ids = await crash_journal(settings.db, crashed, claimed_at=time.time() - 1)
    upids = {c.guest.vmid: await post_task(sim, c.guest, c.action) for c in crashed}
    await sim.sim.settle()
    async with running(sim, tmp_path, node_cap=8) as rt:
        report = rt.recoverer.last_report
        done = {vmid: await wait_terminal(rt, op_id) for vmid, op_id in ids.items()}
    assert report is not None and report.counts.get("adopted") == 6, report
    assert {v: (op.state, op.upid_text) for v, op in done.items()} == {
        v: (OpState.SUCCEEDED, upids[v]) for v in ids
    }


# --- (c) the tracker follows a task only once its UPID is durable ----------------------------


async def test_task_is_not_polled_before_its_upid_is_committed(
    sim: SimServer, tmp_path: Path
) -> None:
    """While the journal cannot commit the UPID Proxmox returned (another writer holds the
    file), nothing polls the task: tracking starts only after the UPID is durable."""
    guest = pick(sim, "qemu", False)
    sim.sim.add_fault(method="POST", path=f"/{guest.vmid}/status/start$", delay=0.5, count=1)
    async with running(sim, tmp_path) as rt:
        db = rt.settings.db
        op = await submit(rt, "start", guest, key="commit-first")
        async with asyncio.timeout(10):
            while (await rt.journal.get(op.id)).state is not OpState.DISPATCHING:
                await asyncio.sleep(0.01)
        blocker = sqlite3.connect(db, isolation_level=None, timeout=10, check_same_thread=False)
        try:
            await asyncio.to_thread(blocker.execute, "BEGIN IMMEDIATE")
            async with asyncio.timeout(10):
                while not any(r.upid for r in sim.sim.requests if r.method == "POST"):
                    await asyncio.sleep(0.01)
            upid = next(r.upid for r in sim.sim.requests if r.method == "POST" and r.upid)
            await asyncio.sleep(1.0)  # five tracker ticks
            row = blocker.execute("SELECT state, upid FROM ops WHERE id = ?", (op.id,)).fetchone()
            polled = [r.path for r in sim.sim.requests if r.method == "GET" and "/tasks" in r.path]
            tracked = op.id in rt.tracker.tracked_ids()
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        done = await wait_terminal(rt, op.id)
    assert row == ("dispatching", None)
    assert polled == [] and not tracked, (polled, tracked)
    assert done.state is OpState.SUCCEEDED, done.error
    assert done.upid_text == upid


# --- (d) the janitor leaves alone what this process is handling ------------------------------


async def test_janitor_leaves_ops_held_by_a_worker_or_tracked_alone(
    sim: SimServer, tmp_path: Path
) -> None:
    """With stale_after far below a slow POST and a slow task, the janitor touches neither the
    op a worker is dispatching nor the op the tracker follows: both succeed, one POST each,
    and no janitor line is in their history."""
    slow_post = pick(sim, "qemu", False)
    slow_task = pick(sim, "lxc", False)
    sim.sim.add_fault(method="POST", path=f"/{slow_post.vmid}/status/start$", delay=3.0, count=1)
    sim.sim.add_fault(
        method="POST", path=f"/{slow_task.vmid}/status/start$", task_seconds=3.0, count=1
    )
    async with running(sim, tmp_path, stale_after=0.3) as rt:
        ops = [
            await submit(rt, "start", slow_post, key="held"),
            await submit(rt, "start", slow_task, key="tracked"),
        ]
        done = [await wait_terminal(rt, op.id) for op in ops]
        histories = [await rt.journal.history(op.id) for op in ops]
    assert [d.state for d in done] == [OpState.SUCCEEDED, OpState.SUCCEEDED], [
        d.error for d in done
    ]
    for guest in (slow_post, slow_task):
        assert len(writes_to(sim, guest.vmid, "/status/start")) == 1
    touched = [h.reason for hist in histories for h in hist if "janitor" in h.reason]
    assert touched == []


# --- (e) a search adopts only this op's own, new task ----------------------------------------


async def test_recover_never_adopts_another_users_task(sim_factory: Any, tmp_path: Path) -> None:
    """Another Proxmox user rebooted the guest after our claim: that task is not ours, so
    Recover fails the reboot (never sent, fail-safe) instead of adopting it; same for a
    start, which succeeds from the guest's state but records no foreign UPID."""
    server = await sim_factory(password=PASSWORD)
    reboot = pick(server, "qemu", True)
    start = pick(server, "qemu", False)
    settings = await seeded(server, tmp_path)
    ids = await crash_journal(
        settings.db,
        [Crashed(guest=reboot, action="reboot"), Crashed(guest=start, action="start")],
        claimed_at=time.time() - 1,
    )
    other = HttpPveClient(server.url, auth=TicketAuth(username="root@pam", password=PASSWORD))
    async with other:
        foreign = {
            str(await other.dispatch(g.node, GuestKind(g.kind), Action(a), g.vmid, {}))
            for g, a in ((reboot, "reboot"), (start, "start"))
        }
    await server.sim.settle()
    assert all(Upid.parse(u).user == "root@pam" for u in foreign)
    async with running(server, tmp_path) as rt:
        report = rt.recoverer.last_report
        done = {vmid: await wait_terminal(rt, op_id) for vmid, op_id in ids.items()}
        seen = {vmid: upids_in(await rt.journal.history(op_id)) for vmid, op_id in ids.items()}
    assert report is not None and report.counts.get("adopted", 0) == 0, report
    assert done[reboot.vmid].state is OpState.FAILED
    assert done[start.vmid].state is OpState.SUCCEEDED
    assert all(op.upid_text is None for op in done.values())
    assert seen == {reboot.vmid: set(), start.vmid: set()}


async def test_recover_never_adopts_the_ops_own_earlier_task(
    sim: SimServer, tmp_path: Path
) -> None:
    """Attempt 1's start task failed (lock timeout, retried); attempt 2 crashed before its
    POST. Recover's search sees attempt 1's task (ours, same guest, within the clock-skew
    window) but must not adopt it: no new task, target not held → failed, never sent."""
    guest = pick(sim, "qemu", False)
    settings = await seeded(sim, tmp_path)
    now = time.time()
    first = await post_task(
        sim,
        guest,
        "start",
        exitstatus=f"can't lock file '/var/lock/qemu-server/lock-{guest.vmid}.conf' - got timeout",
        effect=False,
    )
    await sim.sim.settle()
    async with await Journal.open(settings.db) as journal:
        op = await journal_op(journal, guest, "start", "own-earlier", now=now - 3)
        assert (await journal.claim_next(now=now - 2)) is not None
        await journal.record_upid(op.id, first, now=now - 2)
        await journal.requeue(
            op.id, now=now - 1, next_attempt_at=now - 1, reason="task failed (transient)"
        )
        again = await journal.claim_next(now=now)
        assert again is not None and again.attempts == 2
    async with running(sim, tmp_path) as rt:
        report = rt.recoverer.last_report
        done = await wait_terminal(rt, op.id)
        history = await rt.journal.history(op.id)
    assert report is not None and report.counts.get("adopted", 0) == 0, report
    assert done.state is OpState.FAILED, done
    assert upids_in(history) == {first}
    assert writes_to(sim, guest.vmid) == [
        f"POST /api2/json/nodes/{guest.node}/qemu/{guest.vmid}/status/start"
    ]


# --- (f) Recover hands a still-running task to the tracker ------------------------------------


@pytest.mark.parametrize("count", [1, 6])
async def test_recover_keeps_tracking_still_running_tasks(
    sim_factory: Any, tmp_path: Path, count: int
) -> None:
    """Ops whose tasks still run at restart (one alone; six at once, so Recover prefetches)
    are resumed and reach succeeded when their task ends, long before the janitor would look
    (stale_after 120 s)."""
    server = await sim_factory(guests=40)
    guests = plain_guests(server, count, running_now=False)
    settings = await seeded(server, tmp_path, node_cap=8)
    claimed_at = time.time() - 1
    upids = {g.vmid: await post_task(server, g, "start", task_seconds=1.5) for g in guests}
    ids = await crash_journal(
        settings.db,
        [Crashed(guest=g, action="start", upid=upids[g.vmid]) for g in guests],
        claimed_at=claimed_at,
    )
    async with running(server, tmp_path, node_cap=8) as rt:
        report = rt.recoverer.last_report
        done = {v: await wait_terminal(rt, op_id, within=10) for v, op_id in ids.items()}
    assert report is not None and report.counts.get("resumed") == count, report
    assert {v: (op.state, op.upid_text) for v, op in done.items()} == {
        v: (OpState.SUCCEEDED, upids[v]) for v in ids
    }


# --- rules guarded before only by unit tests of the pure functions ----------------------------


async def test_one_shot_with_unknown_outcome_is_never_sent_again(
    sim: SimServer, tmp_path: Path
) -> None:
    """A reboot POST answered 596 (the request never ran) leaves its outcome unknown: no task
    is found, so the op fails as ambiguous and Proxmox saw exactly one reboot request."""
    guest = pick(sim, "qemu", True)
    sim.sim.add_fault(
        method="POST", path=f"/{guest.vmid}/status/reboot$", status=596, reason="Broken pipe"
    )
    async with running(sim, tmp_path) as rt:
        op = await submit(rt, "reboot", guest, key="rb-596")
        done = await wait_terminal(rt, op.id)
    assert done.state is OpState.FAILED
    assert done.error is not None and done.error.error_class == "ambiguous"
    assert len(writes_to(sim, guest.vmid, "/status/reboot")) == 1


async def test_one_shot_task_ending_without_status_is_never_sent_again(
    sim: SimServer, tmp_path: Path
) -> None:
    """A reset whose task dies without a final line (`unexpected status`) is failed, not
    retried: one reset request in all."""
    guest = pick(sim, "qemu", True)
    sim.sim.add_fault(
        method="POST", path=f"/{guest.vmid}/status/reset$", exitstatus="unexpected status"
    )
    async with running(sim, tmp_path) as rt:
        op = await submit(rt, "reset", guest, key="reset-unknown")
        done = await wait_terminal(rt, op.id)
    assert done.state is OpState.FAILED
    assert done.exitstatus == "unexpected status"
    assert len(writes_to(sim, guest.vmid, "/status/reset")) == 1


async def test_recover_fails_a_one_shot_whose_task_log_is_gone(
    sim: SimServer, tmp_path: Path
) -> None:
    """After a crash, a reboot whose task log was rotated away has an unknown outcome:
    Recover fails it and sends nothing."""
    guest = pick(sim, "qemu", True)
    settings = await seeded(sim, tmp_path)
    claimed_at = time.time() - 1
    upid = await post_task(sim, guest, "reboot")
    ids = await crash_journal(
        settings.db, [Crashed(guest=guest, action="reboot", upid=upid)], claimed_at=claimed_at
    )
    await sim.sim.settle()
    assert sim.sim.rotate_tasks(guest.node) >= 1
    async with running(sim, tmp_path) as rt:
        done = await wait_terminal(rt, ids[guest.vmid])
    assert done.state is OpState.FAILED
    assert done.error is not None and done.error.error_class == "ambiguous"
    assert len(writes_to(sim, guest.vmid, "/status/reboot")) == 1


async def test_lock_answers_do_not_use_up_the_retry_budget(sim: SimServer, tmp_path: Path) -> None:
    """`VM is locked (backup)` four times with max_retries 2: the op keeps waiting for the
    lock (lock_wait_max), then succeeds on the fifth POST instead of being dead-lettered."""
    guest = pick(sim, "qemu", False)
    sim.sim.add_fault(
        method="POST",
        path=f"/{guest.vmid}/status/start$",
        count=4,
        status=500,
        reason="VM is locked (backup)",
    )
    async with running(sim, tmp_path, max_retries=2) as rt:
        op = await submit(rt, "start", guest, key="locked-answers")
        done = await wait_terminal(rt, op.id)
    assert done.state is OpState.SUCCEEDED, done.error
    assert done.attempts == 5
    assert len(writes_to(sim, guest.vmid, "/status/start")) == 5


async def test_a_lock_held_past_lock_wait_max_dead_letters_without_a_post(
    sim: SimServer, tmp_path: Path
) -> None:
    """A config lock that never clears is waited on only up to lock_wait_max: then the op is
    dead-lettered as locked, and nothing was ever sent."""
    guest = pick(sim, "qemu", False)
    guest.config["lock"] = "backup"
    async with running(sim, tmp_path, max_retries=50, lock_wait_max=1.0) as rt:
        op = await submit(rt, "start", guest, key="locked-forever")
        done = await wait_terminal(rt, op.id)
    assert done.state is OpState.DEAD_LETTERED
    assert done.error is not None and done.error.error_class == "locked"
    assert writes_to(sim, guest.vmid) == []


@pytest.mark.parametrize("kind", ["qemu", "lxc"])
async def test_protection_flag_set_in_proxmox_refuses_terminate_before_anything_is_sent(
    sim: SimServer, tmp_path: Path, kind: str
) -> None:
    """The protection flag is read live: set in Proxmox after the guest was managed, it makes
    terminate of a running guest fail as refused, with no stop and no destroy sent, audited."""
    guest = pick(sim, kind, True)
    async with running(sim, tmp_path) as rt:
        row = await rt.journal.get_guest(guest.vmid)
        assert not row.protected
        guest.config["protection"] = 1
        op = await submit(rt, "terminate", guest, key="protected-live")
        done = await wait_terminal(rt, op.id)
        refused = (await rt.journal.list_audit(vmid=guest.vmid, decision="refused")).items
        allowed = (await rt.journal.list_audit(vmid=guest.vmid, decision="allowed")).items
    assert done.state is OpState.FAILED and done.error is not None
    assert done.error.error_class == "permanent" and "protection" in done.error.message
    assert writes_to(sim, guest.vmid) == []
    assert sim.sim.guests[guest.vmid].running
    assert [r.reason.split(":")[0] for r in refused] == ["protected"]
    assert allowed == []


# --- branches mutation testing found unasserted (docs/TESTING.md, "survivors") ---------------


async def test_recover_retries_a_convergent_op_whose_task_log_is_gone_and_target_not_held(
    sim: SimServer, tmp_path: Path
) -> None:
    """After a crash, a start whose task log was rotated away and whose guest is still stopped
    is requeued (target not held) and started by a new attempt: two start POSTs in all."""
    guest = pick(sim, "qemu", False)
    settings = await seeded(sim, tmp_path)
    claimed_at = time.time() - 1
    upid = await post_task(sim, guest, "start", exitstatus="command failed", effect=False)
    ids = await crash_journal(
        settings.db, [Crashed(guest=guest, action="start", upid=upid)], claimed_at=claimed_at
    )
    await sim.sim.settle()
    assert sim.sim.rotate_tasks(guest.node) >= 1
    async with running(sim, tmp_path) as rt:
        done = await wait_terminal(rt, ids[guest.vmid])
        history = await rt.journal.history(ids[guest.vmid])
    assert done.state is OpState.SUCCEEDED, done.error
    assert done.attempts == 2
    assert any(h.reason == "task log rotated and target not held" for h in history)
    assert len(writes_to(sim, guest.vmid, "/status/start")) == 2
    assert sim.sim.guests[guest.vmid].running


async def test_satisfied_answer_with_target_not_held_fails_permanently(
    sim: SimServer, tmp_path: Path
) -> None:
    """`VM N already running` to a start while the guest is stopped is not taken on faith:
    the guest is read, the target does not hold, and the op fails permanently with that
    answer as its error; nothing is re-sent."""
    guest = pick(sim, "qemu", False)
    answer = f"VM {guest.vmid} already running"
    sim.sim.add_fault(method="POST", path=f"/{guest.vmid}/status/start$", status=500, reason=answer)
    async with running(sim, tmp_path) as rt:
        op = await submit(rt, "start", guest, key="satisfied-not-held")
        done = await wait_terminal(rt, op.id)
    assert done.state is OpState.FAILED
    assert done.error is not None
    assert (done.error.error_class, done.error.message) == ("permanent", answer)
    assert len(writes_to(sim, guest.vmid, "/status/start")) == 1
    assert not sim.sim.guests[guest.vmid].running


async def test_convergent_task_ending_without_status_and_target_not_held_is_retried(
    sim: SimServer, tmp_path: Path
) -> None:
    """A start whose task dies without a final line (`unexpected status`) and left the guest
    stopped is retried as ambiguous (a convergent op may be sent again once its task is
    over) and succeeds on the second attempt."""
    guest = pick(sim, "qemu", False)
    sim.sim.add_fault(
        method="POST",
        path=f"/{guest.vmid}/status/start$",
        exitstatus="unexpected status",
        effect=False,
    )
    async with running(sim, tmp_path) as rt:
        op = await submit(rt, "start", guest, key="unknown-not-held")
        done = await wait_terminal(rt, op.id)
        history = await rt.journal.history(op.id)
    assert done.state is OpState.SUCCEEDED, done.error
    assert done.attempts == 2
    requeued = [h for h in history if h.to_state == "pending" and h.from_state is not None]
    assert [h.reason for h in requeued] == ["task outcome unknown; target not held"]
    assert len(writes_to(sim, guest.vmid, "/status/start")) == 2


async def test_recover_adopts_the_ha_task_of_an_ha_managed_guest(
    sim: SimServer, tmp_path: Path
) -> None:
    """An HA-managed guest's stop is an `hastop` request task: Recover's search for an op
    that crashed before its UPID was journaled recognises and adopts that task too."""
    guest = next(g for g in sim.sim.guests.values() if g.ha is not None and g.running)
    settings = await seeded(sim, tmp_path)
    claimed_at = time.time() - 1
    ids = await crash_journal(
        settings.db, [Crashed(guest=guest, action="stop")], claimed_at=claimed_at
    )
    upid = await post_task(sim, guest, "stop")
    assert ":hastop:" in upid
    async with running(sim, tmp_path) as rt:
        report = rt.recoverer.last_report
        done = await wait_terminal(rt, ids[guest.vmid])
        history = await rt.journal.history(ids[guest.vmid])
    assert report is not None and report.counts.get("adopted") == 1, report
    assert done.state is OpState.SUCCEEDED, done.error
    assert any(h.reason.startswith("adopted") and h.upid == upid for h in history)
    assert not sim.sim.guests[guest.vmid].running
