"""Simulated worker tasks: their logs, exit statuses, per-node task files, lock files.

A task's exit status is derived from the last line of its log, as ``UPID.pm`` ``read_status``
does (reference §4.1): ``TASK OK`` → ``OK``, ``TASK WARNINGS: n`` → ``WARNINGS: n``,
``TASK ERROR: msg`` → ``msg``, anything else → ``unexpected status``.
"""

from __future__ import annotations

import asyncio
import time

import attrs

from lifecycled.domain.upid import Upid
from lifecycled.sim.errors import TaskFailed, TaskKilled

OK = "OK"
UNEXPECTED = "unexpected status"


@attrs.define(kw_only=True, eq=False)
class Task:
    """One worker and its log file ``/var/log/pve/tasks/<X>/<UPID>``."""

    upid: Upid
    seq: int
    lines: list[str] = attrs.field(factory=list)
    running: bool = True
    endtime: int | None = None
    #: When it stopped, to the microsecond (control API only; Proxmox's ``endtime`` is whole
    #: seconds): the benchmark measures the time from here to the op's terminal state.
    ended_at: float | None = None
    archived: bool = False
    #: ``DELETE …/tasks/{upid}`` was received (the worker dies with ``received interrupt``).
    interrupted: bool = False
    warnings: int = 0
    handle: asyncio.Task[None] | None = None

    @property
    def text(self) -> str:
        return str(self.upid)

    @property
    def node(self) -> str:
        return self.upid.node

    @property
    def log_path(self) -> str:
        return f"/var/log/pve/tasks/{self.upid.log_bucket}/{self.upid}"

    @property
    def exitstatus(self) -> str | None:
        """None while running; else derived from the last log line."""
        if self.running:
            return None
        last = self.lines[-1] if self.lines else ""
        if last == "TASK OK":
            return OK
        if last.startswith("TASK WARNINGS: "):
            return last.removeprefix("TASK ")
        if last.startswith("TASK ERROR: "):
            return last.removeprefix("TASK ERROR: ")
        return UNEXPECTED

    def log(self, line: str) -> None:
        self.lines.append(line)

    def warn(self, text: str) -> None:
        self.warnings += 1
        self.lines.append(f"WARN: {text}")

    def finish(self, final_line: str | None) -> None:
        """Stop the task; ``final_line`` None models a worker that died mid-task."""
        if not self.running:
            return
        if final_line is not None:
            self.lines.append(final_line)
        self.running = False
        self.ended_at = time.time()
        self.endtime = int(self.ended_at)


def final_line(exit_status: str) -> str | None:
    """The log line that produces ``exit_status`` (None for ``unexpected status``)."""
    if exit_status == OK:
        return "TASK OK"
    if exit_status.startswith("WARNINGS: "):
        return f"TASK {exit_status}"
    if exit_status == UNEXPECTED:
        return None
    return "TASK ERROR: " + " ".join(exit_status.splitlines())


@attrs.define(kw_only=True, eq=False)
class TaskRun:
    """What a task body gets: its task, duration and the scripted outcome (if any)."""

    task: Task
    duration: float
    #: A fault's exit status for this task (None = the real outcome).
    forced_exit: str | None = None
    #: A fault's override of whether the effect happens (None = only on success).
    forced_effect: bool | None = None

    def log(self, line: str) -> None:
        self.task.log(line)

    def warn(self, text: str) -> None:
        self.task.warn(text)

    async def work(self, seconds: float | None = None) -> None:
        """The task's working time; then decide (for faults) whether the effect happens."""
        await asyncio.sleep(self.duration if seconds is None else seconds)
        forced = self.forced_exit
        if forced is None or self.forced_effect is True:
            return
        if forced == UNEXPECTED:
            raise TaskKilled
        if forced != OK and not forced.startswith("WARNINGS: "):
            raise TaskFailed(forced)
        if self.forced_effect is False:
            raise TaskFailed(forced)  # outcome is overridden below; skip the effect


@attrs.define(kw_only=True, eq=False)
class TaskBook:
    """A node's task files: the active list and the archive (``index`` + ``index.1``)."""

    node: str
    by_upid: dict[str, Task] = attrs.field(factory=dict)
    active: list[Task] = attrs.field(factory=list)
    archive: list[Task] = attrs.field(factory=list)  # oldest first

    def add(self, task: Task) -> None:
        self.by_upid[task.text] = task
        self.active.append(task)

    def get(self, upid: str) -> Task | None:
        return self.by_upid.get(upid)

    def archive_finished(self, keep: int) -> int:
        """Move finished tasks from the active list into the archive; rotate beyond ``keep``."""
        done = [t for t in self.active if not t.running]
        if done:
            self.active = [t for t in self.active if t.running]
            for task in done:
                task.archived = True
                self.archive.append(task)
        self.rotate(keep)
        return len(done)

    def rotate(self, keep: int) -> int:
        """Drop the oldest archived tasks (and their logs) beyond ``keep``."""
        excess = len(self.archive) - keep
        if excess <= 0:
            return 0
        gone, self.archive = self.archive[:excess], self.archive[excess:]
        for task in gone:
            self.by_upid.pop(task.text, None)
        return excess

    def running(self) -> list[Task]:
        return [t for t in self.active if t.running]


class FileLocks:
    """The guests' lock files (``flock``), one FIFO lock per vmid."""

    def __init__(self) -> None:
        self._locks: dict[int, asyncio.Lock] = {}

    def _lock(self, vmid: int) -> asyncio.Lock:
        lock = self._locks.get(vmid)
        if lock is None:
            lock = self._locks[vmid] = asyncio.Lock()
        return lock

    def held(self, vmid: int) -> bool:
        return self._lock(vmid).locked()

    async def acquire(self, vmid: int, wait: float | None) -> bool:
        """Take the lock, waiting up to ``wait`` seconds (None: forever); False on timeout."""
        lock = self._lock(vmid)
        if not lock.locked():
            await lock.acquire()
            return True
        if wait is not None and wait <= 0:
            return False
        try:
            async with asyncio.timeout(wait):
                await lock.acquire()
        except TimeoutError:
            return False
        return True

    def release(self, vmid: int) -> None:
        lock = self._lock(vmid)
        if lock.locked():
            lock.release()
