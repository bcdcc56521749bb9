"""Trace one op from ``POST /v1/ops`` to ``succeeded``: every lifecycled function it crosses.

Run it from the repository root (about 3 s)::

    .venv/bin/python tests/integration/trace_op.py

It starts the simulator (one node) and a daemon (the composition root's ``Runtime`` with its
HTTP API on a loopback port, as ``lifecycled run`` does) in this process, manages one stopped
VM through the API and then, with a profiler hook (:func:`sys.setprofile` and
:func:`threading.setprofile`), sends ``POST /v1/ops`` (start) and records until the op has
succeeded (plus :data:`GRACE`, for the bookkeeping after the commit).

A *hop* is one distinct lifecycled function (``file:qualified name``) that ran for the op:
comprehensions are not hops; lambdas, nested functions and properties are. Left out: the
simulator (the other side of the wire, and its own calls into ``lifecycled.domain``), the
runtime's background loops (their tasks are named in :data:`BACKGROUND`; a trace that a
journal-using one ran into is taken again, as its journal work cannot be told from the op's)
and the tracer itself (it reads the op's state through its own journal connection, opened
before the hook). Each hop is printed once, numbered, where it first ran (``http``: the
request's handler; ``task``: another unnamed task, e.g. a shielded journal write; else the
runtime's task or a thread), indented under the lifecycled function that first called it.
docs/ARCHITECTURE.md records the trace of one commit; ``tests/integration/test_trace_op.py``
checks that the tracer sees the whole way.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
import attrs

import lifecycled
from lifecycled.config import Settings
from lifecycled.engine.runtime import Runtime
from lifecycled.journal import Journal
from lifecycled.pve.auth import TokenAuth
from lifecycled.pve.http import HttpPveClient
from lifecycled.sim import SimConfig, SimServer
from lifecycled.web import start_web

PACKAGE = str(Path(lifecycled.__file__).parent) + "/"
SIMULATOR = PACKAGE + "sim/"
#: The runtime's background loops: their work is not the op's.
BACKGROUND = frozenset({"gauges", "janitor", "reconcile", "pve-probe", "watchdog", "push"})
#: Background loops that use the journal: their journal work runs on the journal's thread,
#: where it cannot be told from the op's, so a trace they ran into is taken again.
JOURNAL_BACKGROUND = frozenset({"gauges", "janitor", "reconcile", "push"})
_COMPREHENSIONS = ("<genexpr>", "<listcomp>", "<dictcomp>", "<setcomp>")
_SKIP = "skip"
#: The stopped VM of the seeded simulator (docs/SIMULATOR.md "The seeded cluster").
VMID = 101
#: How long the trace goes on after the op's terminal state is committed (the code that
#: committed it still runs: metrics, the tracker letting the op go).
GRACE = 0.3
TERMINAL = frozenset({"succeeded", "failed", "dead_lettered", "cancelled"})


@attrs.frozen(kw_only=True)
class Hop:
    """One lifecycled function the op crossed, where it first ran and who called it."""

    where: str
    function: str  # ``engine/executor.py:Executor.apply``
    caller: str | None


@attrs.frozen(kw_only=True)
class Trace:
    hops: tuple[Hop, ...]
    state: str
    attempts: int
    #: The requests Proxmox (the simulator) received meanwhile: ``METHOD path``.
    requests: tuple[str, ...]

    def tree(self) -> Iterator[tuple[int, Hop]]:
        """The hops in first-run order, each under its caller: (depth, hop)."""
        children: dict[str | None, list[Hop]] = {}
        known = {hop.function for hop in self.hops}
        for hop in self.hops:
            parent = hop.caller if hop.caller in known else None
            children.setdefault(parent, []).append(hop)

        def walk(parent: str | None, depth: int) -> Iterator[tuple[int, Hop]]:
            for hop in children.get(parent, []):
                yield depth, hop
                yield from walk(hop.function, depth + 1)

        yield from walk(None, 0)


def _name(frame: FrameType) -> str | None:
    """``file:qualname`` of a lifecycled frame, :data:`_SKIP` for the simulator's, else None."""
    code = frame.f_code
    path = code.co_filename
    if not path.startswith(PACKAGE):
        return None
    if path.startswith(SIMULATOR):
        return _SKIP
    if code.co_qualname.endswith(_COMPREHENSIONS):
        return None
    return f"{path[len(PACKAGE) :]}:{code.co_qualname}"


class Recorder:
    """The profiler hook: the first call of each lifecycled function, where it ran and its
    nearest lifecycled caller. Only while ``recording``; the simulator's own calls into
    lifecycled (``domain.upid``) and the tracer's task are left out."""

    def __init__(self) -> None:
        self.recording = False
        self.seq = 0
        #: function → (seq, where, caller); only the first call is kept.
        self.first: dict[str, tuple[int, str, str | None]] = {}
        #: Journal-using background loops that ran while recording.
        self.interfered: set[str] = set()
        #: When the gauges loop last ran (recording or not).
        self.gauges_at = 0.0
        self.loop_thread = threading.get_ident()
        self.tracer: asyncio.Task[Any] | None = None
        #: The label of each unnamed task, from the first lifecycled function it ran.
        self.unnamed: dict[int, str] = {}

    def hook(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "call":
            return
        name = _name(frame)
        if name is None or name == _SKIP:
            return
        where = self._where(name)
        if where is None or not self.recording:
            return
        caller = None
        up = frame.f_back
        while up is not None and caller is None:
            caller = _name(up)
            up = up.f_back
        if caller == _SKIP:
            return
        self.seq += 1
        if name not in self.first:
            self.first[name] = (self.seq, where, caller)

    def _where(self, name: str) -> str | None:
        if threading.get_ident() != self.loop_thread:
            return f"thread {threading.current_thread().name.split(' ', 1)[0]}"
        task = asyncio.current_task()
        if task is None:
            return "loop"  # protocol callbacks
        if task is self.tracer:
            return None
        task_name = task.get_name()
        if task_name == "gauges":
            self.gauges_at = time.monotonic()
        if task_name in BACKGROUND:
            if self.recording and task_name in JOURNAL_BACKGROUND:
                self.interfered.add(task_name)
            return None
        if not task_name.startswith("Task-"):
            return task_name
        # Unnamed: aiohttp's request handler (it starts in web/) or a shielded write.
        return self.unnamed.setdefault(id(task), "http" if name.startswith("web/") else "task")


def _settings(workdir: Path, server: SimServer) -> Settings:
    return Settings(
        db=workdir / "journal.sqlite3",
        listen="127.0.0.1:0",
        node=server.sim.cfg.nodes[0],
        pve_url=server.url,
        workers=2,
        poll_interval=0.5,
        reconcile_on_start=False,
        reconcile_interval=3600.0,
        stale_after=3600.0,
        startup_jitter=0.0,
    )


async def trace_op(workdir: Path, *, task_seconds: float = 0.3, attempts: int = 5) -> Trace:
    """Run the daemon against the simulator and trace one ``start`` from POST to succeeded
    (taken again, up to ``attempts`` times, while a journal-using background loop ran into it).
    """
    for attempt in range(1, attempts + 1):
        recorder = Recorder()
        state, requests = await _traced(workdir / f"attempt-{attempt}", recorder, task_seconds)
        if not recorder.interfered or attempt == attempts:
            break
    if recorder.interfered:
        raise RuntimeError(f"background loops ran into every trace: {sorted(recorder.interfered)}")
    ordered = sorted(recorder.first.items(), key=lambda item: item[1][0])
    hops = tuple(Hop(where=w, function=f, caller=c) for f, (_s, w, c) in ordered)
    return Trace(hops=hops, state=state, attempts=attempt, requests=requests)


async def _traced(
    workdir: Path, recorder: Recorder, task_seconds: float
) -> tuple[str, tuple[str, ...]]:
    await asyncio.to_thread(workdir.mkdir, parents=True)
    recorder.tracer = asyncio.current_task()
    cfg = SimConfig(nodes=("pve1",), guests=8, seed=1, task_seconds=task_seconds)
    async with SimServer(cfg, port=0) as server:
        settings = _settings(workdir, server)
        # The tracer's own journal connection (to see the op's state) has its thread before
        # the profiler hook is set, so nothing it runs is recorded.
        async with await Journal.open(settings.db) as journal:
            profile: Callable[[FrameType, str, Any], None] = recorder.hook
            threading.setprofile(profile)  # threads started from now on: the daemon's journal
            sys.setprofile(profile)
            try:
                user, _, secret = server.sim.cfg.token.partition("=")
                pve = HttpPveClient(server.url, auth=TokenAuth(user=user, secret=secret))
                runtime = await Runtime.build(settings, pve=pve)
                running = asyncio.create_task(runtime.run(web=start_web), name="runtime")
                try:
                    async with asyncio.timeout(20):
                        await runtime.ready.wait()
                    assert runtime.web_url is not None
                    async with aiohttp.ClientSession(base_url=runtime.web_url) as http:
                        async with http.post(f"/v1/guests/{VMID}/manage") as resp:
                            assert resp.status == 200, await resp.text()
                        mark = server.sim.requests[-1].seq if server.sim.requests else 0
                        state = await _one_op(http, journal, recorder)
                        seen = server.sim.requests_since(mark)
                        # ``GET /version`` is the idle probe's (a background loop), not the op's.
                        return state, tuple(
                            f"{r.method} {r.path}" for r in seen if not r.path.endswith("/version")
                        )
                finally:
                    recorder.recording = False
                    runtime.request_stop()
                    try:
                        await asyncio.wait_for(running, 15)
                    finally:
                        await runtime.close()
            finally:
                sys.setprofile(None)
                threading.setprofile(None)


async def _one_op(http: aiohttp.ClientSession, journal: Journal, recorder: Recorder) -> str:
    # Open the window just after the gauges loop ran (every 2 s): the op is done before the
    # next run.
    seen = recorder.gauges_at
    async with asyncio.timeout(10):
        while recorder.gauges_at == seen:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    recorder.recording = True
    async with http.post("/v1/ops", json={"action": "start", "vmid": VMID}) as resp:
        body = await resp.json()
        assert resp.status == 202, body
    async with asyncio.timeout(20):
        while (state := str((await journal.get(int(body["id"]))).state)) not in TERMINAL:
            await asyncio.sleep(0.01)
    await asyncio.sleep(GRACE)  # the finishing task's bookkeeping after the commit
    recorder.recording = False
    return state


def format_trace(trace: Trace) -> str:
    """The count, the numbered hops (where, then the function under its caller), the count
    by package, the Proxmox requests."""
    lines = [f"{len(trace.hops)} hops, op {trace.state} (attempt {trace.attempts})"]
    for n, (depth, hop) in enumerate(trace.tree(), start=1):
        lines.append(f"{n:4d}  {hop.where:<20} {'  ' * depth}{hop.function}")
    counts: dict[str, int] = {}
    for hop in trace.hops:
        package = hop.function.split("/", 1)[0] if "/" in hop.function else hop.function
        package = package.split(":", 1)[0].removesuffix(".py")
        counts[package] = counts.get(package, 0) + 1
    lines.append("by package: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    lines.append(f"{len(trace.requests)} Proxmox requests:")
    lines.extend(f"  {request}" for request in trace.requests)
    return "\n".join(lines)


def main() -> None:
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        trace = asyncio.run(trace_op(Path(tmp)))
    sys.stdout.write(format_trace(trace) + "\n")
    sys.stderr.write(f"traced in {time.monotonic() - started:.1f} s\n")


if __name__ == "__main__":
    main()
