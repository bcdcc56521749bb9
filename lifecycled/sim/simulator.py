"""The in-memory simulated cluster: nodes, guests, tasks, faults and the request log.

:class:`Simulator` owns all state and the background work (running tasks, the archiver
loop, delayed HA effects). The HTTP layer (:mod:`lifecycled.sim.api`) and the action
implementations (:mod:`lifecycled.sim.power`, :mod:`lifecycled.sim.guestops`) act on it and
:mod:`lifecycled.sim.views` renders it; it imports none of them. Tests use it directly for
assertions, fault injection and out-of-band changes (someone else acting on the cluster).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any

from lifecycled.domain.upid import Upid
from lifecycled.sim import errors as txt
from lifecycled.sim.config import SimConfig
from lifecycled.sim.errors import SimError, TaskFailed, TaskKilled
from lifecycled.sim.faults import Fault, validate
from lifecycled.sim.model import (
    Guest,
    HaResource,
    Node,
    coerce_value,
    lxc_config,
    qemu_config,
    seed_guests,
)
from lifecycled.sim.records import ROOT, Caller, FlockSpec, RequestRecord
from lifecycled.sim.tasks import OK, FileLocks, Task, TaskBook, TaskRun, final_line

logger = logging.getLogger("lifecycled.sim")

TaskBody = Callable[[TaskRun], Awaitable[None]]

GUEST_STATUSES = ("running", "stopped", "paused", "prelaunch", "hibernated")


class Simulator:
    """All state of one simulated Proxmox VE cluster (single event loop, no threads)."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        now = time.time()
        self.nodes: dict[str, Node] = {
            name: Node(
                name=name,
                boot_time=now - self.rng.randint(3600, 40 * 86400),
                next_pid=self.rng.randint(0x1000, 0x8000),
                ip=f"10.0.0.{i + 1}",
            )
            for i, name in enumerate(cfg.nodes)
        }
        self.guests: dict[int, Guest] = seed_guests(cfg, self.rng)
        for guest in self.guests.values():
            if guest.running:
                guest.pid = self.nodes[guest.node].new_pid(self.rng)
        #: What ``/cluster/resources`` shows as each guest's status (pvestatd's last sample).
        self.rrd: dict[int, str] = {}
        self.sample_resources()
        self.books: dict[str, TaskBook] = {n: TaskBook(node=n) for n in cfg.nodes}
        self.locks = FileLocks()
        self.faults: list[Fault] = []
        self.requests: list[RequestRecord] = []
        self.cluster_tasks: list[Task] = []
        self._fault_seq = 0
        self._request_seq = 0
        self._task_seq = 0
        self._background: set[asyncio.Task[Any]] = set()
        self._workers: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._statd_task: asyncio.Task[None] | None = None
        self._closing = False
        self._idle = asyncio.Event()
        self._idle.set()

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self.refresh_cluster_tasks()
        if self._loop_task is None and self.cfg.archive_interval > 0:  # 0: archived on finish
            self._loop_task = asyncio.create_task(self._archiver(), name="sim-archiver")
        if self._statd_task is None and self.cfg.resources_lag > 0:  # 0: always live
            self._statd_task = asyncio.create_task(self._statd(), name="sim-pvestatd")

    async def close(self) -> None:
        """Stop the archiver, the delayed HA work and every running task (they die mid-task)."""
        self._closing = True
        pending = [
            t for t in (self._loop_task, self._statd_task, *self._background, *self._workers) if t
        ]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._loop_task = None
        self._statd_task = None

    async def _archiver(self) -> None:
        """pvestatd's loop: archive finished tasks, refresh ``/cluster/tasks`` (§4.3, §4.4)."""
        while True:
            await asyncio.sleep(self.cfg.archive_interval)
            self.archive_now()

    async def _statd(self) -> None:
        """pvestatd's status push: sample the guests' power state for ``/cluster/resources``."""
        while True:
            await asyncio.sleep(self.cfg.resources_lag)
            self.sample_resources()

    def sample_resources(self) -> None:
        """Record every guest's power state as ``/cluster/resources`` will show it until the
        next sample (a guest on an offline node is not sampled: it keeps its old value)."""
        for vmid in [v for v in self.rrd if v not in self.guests]:
            del self.rrd[vmid]
        for guest in self.guests.values():
            if self.nodes[guest.node].online:
                self.rrd[guest.vmid] = guest.power_state

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run background work owned by the simulator (kept referenced, cancelled on close)."""
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # --- lookups ---------------------------------------------------------------------------

    def guest_on(self, node: str, kind: str, vmid: int) -> Guest | None:
        """The guest whose config lives in this node's directory for this kind, if any."""
        guest = self.guests.get(vmid)
        if guest is None or guest.node != node or guest.kind != kind:
            return None
        return guest

    def require_guest(self, node: str, kind: str, vmid: int) -> Guest:
        """``load_config``: the guest, or 500 ``Configuration file … does not exist``."""
        guest = self.guest_on(node, kind, vmid)
        if guest is None:
            raise SimError(500, txt.no_config(kind, node, vmid))
        return guest

    def pick_guest(
        self, kind: str, running: bool, *, node: str | None = None, exclude: Iterable[int] = ()
    ) -> Guest:
        """A plain guest (no HA, no protection, not a template, no lock) in that state."""
        skip = set(exclude)
        for guest in sorted(self.guests.values(), key=lambda g: g.vmid):
            if guest.kind != kind or guest.running != running or guest.vmid in skip:
                continue
            if node is not None and guest.node != node:
                continue
            if guest.ha or guest.template or guest.lock or guest.config.get("protection") == 1:
                continue
            return guest
        raise LookupError(f"no plain {'running' if running else 'stopped'} {kind} guest")

    def find_task(self, upid: str) -> Task | None:
        for book in self.books.values():
            task = book.get(upid)
            if task is not None:
                return task
        return None

    def new_pid(self, node: str) -> int:
        return self.nodes[node].new_pid(self.rng)

    def next_task_seq(self) -> int:
        """The creation order of a new task (its list position: newest first)."""
        self._task_seq += 1
        return self._task_seq

    # --- tasks -----------------------------------------------------------------------------

    def fork(
        self,
        node: str,
        worker_type: str,
        task_id: int | str,
        caller: Caller,
        body: TaskBody,
        *,
        flock: FlockSpec | None = None,
    ) -> Upid:
        """``fork_worker``: create the task (its log exists at once) and start its worker."""
        book = self.books[node]
        book.archive_finished(self.cfg.archive_max)  # the archiver also runs on every fork
        host = self.nodes[node]
        upid = Upid(
            node=node,
            pid=host.new_pid(self.rng),
            pstart=host.pstart_now(),
            starttime=int(time.time()),
            type=worker_type,
            id=str(task_id),
            user=caller.user,
        )
        task = Task(upid=upid, seq=self.next_task_seq())
        book.add(task)
        duration = caller.task_seconds
        run = TaskRun(
            task=task,
            duration=self.cfg.duration(worker_type) if duration is None else duration,
            forced_exit=caller.exitstatus,
            forced_effect=caller.effect,
        )
        handle = asyncio.create_task(self._run(run, body, flock), name=f"sim-task {upid}")
        task.handle = handle
        self._workers.add(handle)
        self._idle.clear()
        handle.add_done_callback(self._worker_done)
        caller.upids.append(str(upid))
        logger.debug("sim.task.started", extra={"upid": str(upid)})
        return upid

    def _worker_done(self, handle: asyncio.Task[None]) -> None:
        self._workers.discard(handle)
        if not self._workers:
            self._idle.set()

    async def _run(self, run: TaskRun, body: TaskBody, flock: FlockSpec | None) -> None:
        task = run.task
        final: str | None
        taken = False
        try:
            try:
                if flock is not None:
                    taken = flock.held or await self.locks.acquire(flock.vmid, flock.wait)
                    if not taken:
                        raise TaskFailed(txt.lock_timeout(flock.kind, flock.vmid))
                await body(run)
            finally:
                if taken and flock is not None:
                    self.locks.release(flock.vmid)
        except TaskFailed as exc:
            final = final_line(exc.text)
        except TaskKilled:
            final = None
        except Exception as exc:  # a simulator bug must not leave the task running forever
            logger.exception("sim.task.crashed", extra={"upid": task.text})
            final = final_line(f"simulator error: {exc}")
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            final = final_line(txt.INTERRUPTED) if task.interrupted else None
        else:
            final = f"TASK WARNINGS: {task.warnings}" if task.warnings else final_line(OK)
        if run.forced_exit is not None:
            final = final_line(run.forced_exit)
        task.finish(final)
        logger.debug("sim.task.finished", extra={"upid": task.text, "exitstatus": task.exitstatus})
        if self.cfg.archive_interval == 0 and not self._closing:
            self.archive_now()

    def stop_task(self, task: Task) -> None:
        """``DELETE …/tasks/{upid}``: the worker gets SIGTERM (no-op when finished)."""
        if task.running and task.handle is not None:
            task.interrupted = True
            task.handle.cancel()

    def archive_now(self) -> None:
        for book in self.books.values():
            if self.nodes[book.node].online:
                book.archive_finished(self.cfg.archive_max)
        self.refresh_cluster_tasks()

    def refresh_cluster_tasks(self) -> None:
        """``/cluster/tasks``: running tasks plus the 25 newest finished per node (§4.4)."""
        snapshot: list[Task] = []
        for book in self.books.values():
            snapshot.extend(book.running())
            finished = [t for t in book.active if not t.running] + book.archive[-25:]
            finished.sort(key=lambda t: t.seq)
            snapshot.extend(finished[-25:])
        snapshot.sort(key=lambda t: t.seq, reverse=True)
        self.cluster_tasks = snapshot

    async def settle(self, within: float = 10.0) -> None:
        """Wait until no task is running (a test helper); TimeoutError after ``within``."""
        async with asyncio.timeout(within):
            await self._idle.wait()

    # --- faults and the request log --------------------------------------------------------

    def add_fault(self, **spec: Any) -> Fault:
        """Script a fault (fields of :class:`~lifecycled.sim.faults.Fault`); returns it."""
        self._fault_seq += 1
        fault = Fault(id=self._fault_seq, **spec)
        validate(fault)
        self.faults.append(fault)
        return fault

    def add_fault_obj(self, fault: Fault) -> Fault:
        self.faults.append(fault)
        return fault

    def next_fault_id(self) -> int:
        self._fault_seq += 1
        return self._fault_seq

    def remove_fault(self, fault_id: int) -> bool:
        before = len(self.faults)
        self.faults = [f for f in self.faults if f.id != fault_id]
        return len(self.faults) != before

    def clear_faults(self) -> None:
        self.faults.clear()

    def take_fault(self, method: str, path: str) -> Fault | None:
        """The first fault matching this request, consumed once."""
        for fault in self.faults:
            if fault.matches(method, path):
                fault.consume()
                if fault.exhausted:
                    self.faults.remove(fault)
                return fault
        return None

    def record_request(self, method: str, path: str, params: dict[str, Any]) -> RequestRecord:
        self._request_seq += 1
        record = RequestRecord(
            seq=self._request_seq, time=time.time(), method=method, path=path, params=params
        )
        self.requests.append(record)
        limit = self.cfg.request_log_max
        if len(self.requests) > limit + max(limit // 10, 1):  # trim in batches, not per request
            del self.requests[: len(self.requests) - limit]
        return record

    def requests_since(self, seq: int) -> list[RequestRecord]:
        return [r for r in self.requests if r.seq > seq]

    def reset_requests(self) -> None:
        self.requests.clear()

    # --- out-of-band changes ---------------------------------------------------------------
    # Someone else acting on the cluster while lifecycled runs (also reachable through the
    # control API, ``/_sim/…``). None of these go through the API, its auth, its faults or its
    # request log.

    def _guest(self, vmid: int) -> Guest:
        guest = self.guests.get(vmid)
        if guest is None:
            raise KeyError(f"no guest {vmid}")
        return guest

    def hold_lock(
        self, vmid: int, lock: str = "backup", seconds: float | None = 5.0
    ) -> Upid | None:
        """Set the guest's config ``lock`` for ``seconds`` (None: until :meth:`release_lock`).

        A ``backup`` lock comes with a running ``vzdump`` task (user ``root@pam``) for its
        duration, as a real backup job would have.
        """
        guest = self._guest(vmid)
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

            return self.fork(guest.node, "vzdump", vmid, Caller(user=ROOT), body)
        if seconds is not None:

            async def later() -> None:
                await asyncio.sleep(seconds)
                clear()

            self.spawn(later(), name=f"sim-lock {vmid}")
        return None

    def release_lock(self, vmid: int) -> None:
        self._guest(vmid).config.pop("lock", None)

    async def hold_lock_file(self, vmid: int, seconds: float) -> None:
        """Take the guest's lock file (as another worker would) and keep it ``seconds``
        (returns once it is held)."""
        await self.locks.acquire(vmid, None)

        async def release() -> None:
            try:
                await asyncio.sleep(seconds)
            finally:
                self.locks.release(vmid)

        self.spawn(release(), name=f"sim-flock {vmid}")

    def delete_guest(self, vmid: int) -> None:
        self._guest(vmid)
        del self.guests[vmid]

    def set_guest_status(self, vmid: int, status: str) -> None:
        """``running``, ``stopped``, ``paused`` or ``prelaunch`` (QEMU run states of a running
        VM) or ``hibernated`` (QEMU, lock suspended)."""
        guest = self._guest(vmid)
        if status not in GUEST_STATUSES:
            raise ValueError(f"status must be one of {', '.join(GUEST_STATUSES)}")
        if status == "stopped":
            guest.set_stopped()
        elif status == "hibernated":
            guest.set_stopped()
            guest.config["lock"] = "suspended"
        else:
            if not guest.running:
                guest.set_running(self.new_pid(guest.node))
            guest.qmpstatus = status if status in ("paused", "prelaunch") else "running"

    def create_guest(
        self,
        vmid: int,
        kind: str = "qemu",
        node: str | None = None,
        status: str = "stopped",
        config: Mapping[str, Any] | None = None,
    ) -> Guest:
        """Make a guest appear (default config like the seeded ones, overridden by ``config``)."""
        if vmid in self.guests:
            raise ValueError(f"guest {vmid} already exists")
        if kind not in ("qemu", "lxc"):
            raise ValueError("kind must be qemu or lxc")
        where = node or next(iter(self.nodes))
        if where not in self.nodes:
            raise ValueError(f"no node {where}")
        name = f"guest-{vmid}"
        base = (
            qemu_config(vmid, name, self.rng, ctime=int(time.time()))
            if kind == "qemu"
            else lxc_config(vmid, name, self.rng)
        )
        for key, value in (config or {}).items():
            base[key] = coerce_value(kind, key, value)
        guest = Guest(vmid=vmid, kind=kind, node=where, config=base)
        self.guests[vmid] = guest
        self.set_guest_status(vmid, status)
        return guest

    def update_config(
        self, vmid: int, values: Mapping[str, Any] | None = None, delete: Iterable[str] = ()
    ) -> None:
        """Change config keys directly (the digest changes; nothing goes to pending)."""
        guest = self._guest(vmid)
        for key, value in (values or {}).items():
            guest.config[key] = coerce_value(guest.kind, key, value)
        for key in delete:
            guest.config.pop(key, None)

    def move_guest(self, vmid: int, node: str) -> None:
        if node not in self.nodes:
            raise ValueError(f"no node {node}")
        self._guest(vmid).node = node

    def set_ha(self, vmid: int, state: str | None) -> None:
        """Make the guest HA-managed with a request state, or unmanaged (None). No LRM action."""
        guest = self._guest(vmid)
        if state is None:
            guest.ha = None
        elif guest.ha is None:
            guest.ha = HaResource(state=state)
        else:
            guest.ha.state = state

    def set_acpi(self, vmid: int, responds: bool) -> None:
        """False: the guest ignores ACPI shutdown requests (shutdown tasks time out)."""
        self._guest(vmid).acpi = responds

    def rotate_tasks(self, node: str | None = None, keep: int = 0) -> int:
        """Archive finished tasks, then rotate the archive down to ``keep`` (→ ``no such
        task``)."""
        dropped = 0
        for book in self.books.values():
            if node is None or book.node == node:
                book.archive_finished(self.cfg.archive_max)
                dropped += book.rotate(keep)
        self.refresh_cluster_tasks()
        return dropped

    def add_history(
        self,
        node: str,
        count: int,
        *,
        worker_type: str = "vncproxy",
        task_id: int | str = "",
        user: str | None = None,
    ) -> list[str]:
        """``count`` finished tasks (``TASK OK``), newest last, straight into the node's
        archive: a busy node's history (its task list then pages, reference §13.9). ``user``
        defaults to the API token's user. Rotation beyond ``archive_max`` applies as usual."""
        book = self.books[node]
        book.archive_finished(self.cfg.archive_max)
        host = self.nodes[node]
        who = user if user is not None else self.cfg.api_token.full_user
        upids: list[str] = []
        for _ in range(count):
            now = int(time.time())
            task = Task(
                upid=Upid(
                    node=node,
                    pid=host.new_pid(self.rng),
                    pstart=host.pstart_now(),
                    starttime=now,
                    type=worker_type,
                    id=str(task_id),
                    user=who,
                ),
                seq=self.next_task_seq(),
                lines=["TASK OK"],
                running=False,
                endtime=now,
                archived=True,
            )
            book.by_upid[task.text] = task
            book.archive.append(task)
            upids.append(task.text)
        book.rotate(self.cfg.archive_max)
        self.refresh_cluster_tasks()
        return upids

    def kill_task(self, upid: str) -> bool:
        """Kill a running worker without a final log line (→ ``unexpected status``)."""
        task = self.find_task(upid)
        if task is None or not task.running or task.handle is None:
            return False
        task.handle.cancel()
        return True

    # --- node state ------------------------------------------------------------------------

    def set_node_offline(self, node: str, offline: bool = True, *, crash: bool = False) -> None:
        """Take a node off the network (its API answers 595) or bring it back.

        ``crash=True`` also kills its running tasks (``unexpected status``) and stops its
        guests, as a node reset would.
        """
        host = self.nodes.get(node)
        if host is None:
            raise KeyError(node)
        host.online = not offline
        if offline and crash:
            for task in self.books[node].running():
                if task.handle is not None:
                    task.handle.cancel()
            for guest in self.guests.values():
                if guest.node == node:
                    guest.set_stopped()
            host.boot_time = time.time()
        logger.info(
            "sim.node.offline" if offline else "sim.node.online",
            extra={"node": node, "crash": crash},
        )
