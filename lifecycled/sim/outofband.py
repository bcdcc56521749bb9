"""Out-of-band changes: someone else acting on the cluster while lifecycled runs.

Exposed as :class:`~lifecycled.sim.simulator.Simulator` methods and through the control API
(``/_sim/…``). None of these go through the API, its auth, its faults or its request log.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from lifecycled.domain.upid import Upid
from lifecycled.sim.model import Guest, HaResource, coerce_value, lxc_config, qemu_config
from lifecycled.sim.records import ROOT, Caller
from lifecycled.sim.tasks import Task, TaskRun

if TYPE_CHECKING:
    from lifecycled.sim.simulator import Simulator

GUEST_STATUSES = ("running", "stopped", "paused", "prelaunch", "hibernated")


def _guest(sim: Simulator, vmid: int) -> Guest:
    guest = sim.guests.get(vmid)
    if guest is None:
        raise KeyError(f"no guest {vmid}")
    return guest


def hold_lock(sim: Simulator, vmid: int, lock: str, seconds: float | None) -> Upid | None:
    """Set the guest's config ``lock`` for ``seconds`` (None: until :func:`release_lock`).

    A ``backup`` lock comes with a running ``vzdump`` task (user ``root@pam``) for its
    duration, as a real backup job would have.
    """
    guest = _guest(sim, vmid)
    guest.config["lock"] = lock

    def clear() -> None:
        if guest.config.get("lock") == lock:
            guest.config.pop("lock", None)

    if lock == "backup" and seconds is not None:

        async def body(run: TaskRun) -> None:
            run.log(f"INFO: Starting Backup of VM {vmid} ({guest.kind})")
            try:
                await run.work(seconds)
            finally:
                clear()
            run.log(f"INFO: Finished Backup of VM {vmid}")

        return sim.fork(guest.node, "vzdump", vmid, Caller(user=ROOT), body)
    if seconds is not None:

        async def later() -> None:
            await asyncio.sleep(seconds)
            clear()

        sim.spawn(later(), name=f"sim-lock {vmid}")
    return None


def release_lock(sim: Simulator, vmid: int) -> None:
    _guest(sim, vmid).config.pop("lock", None)


async def hold_lock_file(sim: Simulator, vmid: int, seconds: float) -> None:
    """Take the guest's lock file (as another worker would) and keep it ``seconds``."""
    await sim.locks.acquire(vmid, None)

    async def release() -> None:
        try:
            await asyncio.sleep(seconds)
        finally:
            sim.locks.release(vmid)

    sim.spawn(release(), name=f"sim-flock {vmid}")


def delete_guest(sim: Simulator, vmid: int) -> None:
    _guest(sim, vmid)
    del sim.guests[vmid]


def set_guest_status(sim: Simulator, vmid: int, status: str) -> None:
    """``running``, ``stopped``, ``paused`` or ``prelaunch`` (QEMU run states of a running VM)
    or ``hibernated`` (QEMU, lock suspended)."""
    guest = _guest(sim, vmid)
    if status not in GUEST_STATUSES:
        raise ValueError(f"status must be one of {', '.join(GUEST_STATUSES)}")
    if status == "stopped":
        guest.set_stopped()
    elif status == "hibernated":
        guest.set_stopped()
        guest.config["lock"] = "suspended"
    else:
        if not guest.running:
            guest.set_running(sim.new_pid(guest.node))
        guest.qmpstatus = status if status in ("paused", "prelaunch") else "running"


def create_guest(
    sim: Simulator,
    vmid: int,
    kind: str = "qemu",
    node: str | None = None,
    status: str = "stopped",
    config: Mapping[str, Any] | None = None,
) -> Guest:
    """Make a guest appear (default config like the seeded ones, overridden by ``config``)."""
    if vmid in sim.guests:
        raise ValueError(f"guest {vmid} already exists")
    if kind not in ("qemu", "lxc"):
        raise ValueError("kind must be qemu or lxc")
    where = node or next(iter(sim.nodes))
    if where not in sim.nodes:
        raise ValueError(f"no node {where}")
    name = f"guest-{vmid}"
    base = (
        qemu_config(vmid, name, sim.rng, ctime=int(time.time()))
        if kind == "qemu"
        else lxc_config(vmid, name, sim.rng)
    )
    for key, value in (config or {}).items():
        base[key] = coerce_value(kind, key, value)
    guest = Guest(vmid=vmid, kind=kind, node=where, config=base)
    sim.guests[vmid] = guest
    set_guest_status(sim, vmid, status)
    return guest


def update_config(
    sim: Simulator, vmid: int, values: Mapping[str, Any] | None = None, delete: Iterable[str] = ()
) -> None:
    """Change config keys directly (the digest changes; nothing goes to pending)."""
    guest = _guest(sim, vmid)
    for key, value in (values or {}).items():
        guest.config[key] = coerce_value(guest.kind, key, value)
    for key in delete:
        guest.config.pop(key, None)


def move_guest(sim: Simulator, vmid: int, node: str) -> None:
    if node not in sim.nodes:
        raise ValueError(f"no node {node}")
    _guest(sim, vmid).node = node


def set_ha(sim: Simulator, vmid: int, state: str | None) -> None:
    """Make the guest HA-managed with a request state, or unmanaged (None). No LRM action."""
    guest = _guest(sim, vmid)
    if state is None:
        guest.ha = None
    elif guest.ha is None:
        guest.ha = HaResource(state=state)
    else:
        guest.ha.state = state


def set_acpi(sim: Simulator, vmid: int, responds: bool) -> None:
    """False: the guest ignores ACPI shutdown requests (shutdown tasks time out)."""
    _guest(sim, vmid).acpi = responds


def rotate_tasks(sim: Simulator, node: str | None = None, keep: int = 0) -> int:
    """Archive finished tasks, then rotate the archive down to ``keep`` (→ ``no such task``)."""
    dropped = 0
    for book in sim.books.values():
        if node is None or book.node == node:
            book.archive_finished(sim.cfg.archive_max)
            dropped += book.rotate(keep)
    sim.refresh_cluster_tasks()
    return dropped


def add_history(
    sim: Simulator,
    node: str,
    count: int,
    *,
    worker_type: str = "vncproxy",
    task_id: int | str = "",
    user: str | None = None,
) -> list[str]:
    """``count`` finished tasks (``TASK OK``), newest last, straight into the node's archive:
    a busy node's history (its task list then pages, reference §13.9). ``user`` defaults to
    the API token's user. Rotation beyond ``archive_max`` applies as usual."""
    book = sim.books[node]
    book.archive_finished(sim.cfg.archive_max)
    host = sim.nodes[node]
    who = user if user is not None else sim.cfg.api_token.full_user
    upids: list[str] = []
    for _ in range(count):
        now = int(time.time())
        task = Task(
            upid=Upid(
                node=node,
                pid=host.new_pid(sim.rng),
                pstart=host.pstart_now(),
                starttime=now,
                type=worker_type,
                id=str(task_id),
                user=who,
            ),
            seq=sim.next_task_seq(),
            lines=["TASK OK"],
            running=False,
            endtime=now,
            archived=True,
        )
        book.by_upid[task.text] = task
        book.archive.append(task)
        upids.append(task.text)
    book.rotate(sim.cfg.archive_max)
    sim.refresh_cluster_tasks()
    return upids


def kill_task(sim: Simulator, upid: str) -> bool:
    """Kill a running worker without a final log line (→ ``unexpected status``)."""
    task = sim.find_task(upid)
    if task is None or not task.running or task.handle is None:
        return False
    task.handle.cancel()
    return True
