"""Sections 1 (HTTP), 2, 3, 4 and 5: the real daemon and simulator as child processes.

Everything goes through ``lifecycled run`` and ``lifecycled sim`` over loopback HTTP, as in
production; Proxmox request counts come from the simulator's request log
(``GET /_sim/requests``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import attrs

from bench import bigjournal
from bench.common import (
    TOKEN,
    DaemonProc,
    SimProc,
    cpu_seconds,
    daemon_args,
    daemon_child,
    daemon_process,
    manage_guests,
    rss_kib,
    sim_process,
    wait_until,
)
from bench.loadgen import post_all
from bench.profile import spy
from lifecycled.demo.procs import free_port, wait_ready
from lifecycled.domain.serialize import parse_rfc3339

TERMINAL = ("succeeded", "failed", "dead_lettered", "cancelled")
VERBOSE = os.environ.get("BENCH_VERBOSE", "") not in ("", "0")


async def _guests(sim: SimProc) -> list[dict[str, Any]]:
    state = await sim.control("/state")
    guests = state["guests"]
    items = guests.values() if isinstance(guests, dict) else guests
    return sorted(
        (g for g in items if not g.get("template") and not g.get("ha") and not g.get("lock")),
        key=lambda g: int(g["vmid"]),
    )


def _power_body(guest: dict[str, Any], key: str) -> dict[str, Any]:
    """An op that needs a task: shut a running guest down (ACPI; stop if it ignores ACPI),
    start a stopped one."""
    if guest["status"] == "running":
        action = "shutdown" if guest.get("acpi", True) else "stop"
    else:
        action = "start"
    return {
        "action": action,
        "vmid": int(guest["vmid"]),
        "kind": guest["kind"],
        "node": guest["node"],
        "idempotency_key": key,
    }


async def _open_ops(daemon: DaemonProc) -> int:
    status = await daemon.get("/v1/status")
    queue = status["queue"]
    return int(queue["pending"] + queue["dispatching"] + queue["running"])


async def _terminal_counts(daemon: DaemonProc) -> Counter[str]:
    status = await daemon.get("/v1/status")
    return Counter({s: int(status["queue"][s]) for s in TERMINAL})


# --- 1. durable submissions over HTTP ---------------------------------------------------------


@attrs.frozen(kw_only=True)
class Submissions:
    """One run of HTTP submissions: the rate and the daemon's CPU per submission."""

    rate: float
    daemon_cpu_us: float


@contextlib.asynccontextmanager
async def _maybe_spy(pid: int | None, out: Path | None) -> AsyncIterator[None]:
    if out is None or pid is None:
        yield
        return
    async with spy(pid, out):
        yield


async def http_submissions(
    work: Path, *, runs: int, n: int, clients: int = 32, profile: Path | None = None
) -> list[Submissions]:
    """POST /v1/ops from ``clients`` keep-alive connections; submissions per second and the
    daemon's CPU (``/proc/<pid>/stat``) per submission.

    The daemon has one worker and a node cap of 1 and the simulator's tasks run for an hour,
    so after the first op nothing is dispatched: the figure is the submission path (auth,
    validation, node admission, the ownership record, the guarded journal write, the answer).
    ``profile``: py-spy records the daemon during the first run into that file.
    """
    async with (
        sim_process(work / "sim", guests=200, task_seconds=3600) as sim,
        daemon_process(
            work, work / "http.sqlite3", sim.url, workers=1, node_cap=1, log_level="warning"
        ) as daemon,
    ):
        guests = await _guests(sim)
        await manage_guests(daemon, [int(g["vmid"]) for g in guests])
        pid = daemon.child.pid
        assert pid is not None
        found = []
        for run in range(runs):
            bodies = [
                {
                    "action": "start",
                    "vmid": int(g["vmid"]),
                    "kind": g["kind"],
                    "node": g["node"],
                    "idempotency_key": f"http-{run}-{i}",
                }
                for i, g in enumerate(_cycle(guests, n))
            ]
            async with _maybe_spy(pid, profile if run == 0 else None):
                cpu0 = cpu_seconds(pid)
                result = await post_all(
                    daemon.url, "/v1/ops", bodies, headers=daemon.headers, connections=clients
                )
                cpu1 = cpu_seconds(pid)
            if result.statuses.get(202, 0) != n:
                raise RuntimeError(f"HTTP submissions: statuses {result.statuses}")
            found.append(Submissions(rate=result.rate, daemon_cpu_us=(cpu1 - cpu0) / n * 1e6))
        return found


def _cycle(items: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    return [items[i % len(items)] for i in range(n)]


# --- 2. full op lifecycle ---------------------------------------------------------------------

LIFECYCLE_FLAGS: dict[str, Any] = {
    "workers": 32,
    "node_cap": 256,
    "poll_interval": "0.4s",
    "log_level": "warning",
}


@attrs.frozen(kw_only=True)
class LifecycleRun:
    """One run of the full lifecycle: the rate and CPU per 1,000 ops of each process."""

    rate: float
    daemon_cpu_per_1000: float
    sim_cpu_per_1000: float


def _last_finished(db: Path) -> float:
    """The latest ``finished_at`` in the daemon's journal (read-only; the daemon runs on)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        (value,) = conn.execute("SELECT max(finished_at) FROM ops").fetchone()
    finally:
        conn.close()
    return float(value)


async def lifecycle(
    work: Path, *, runs: int, n: int, profile: Path | None = None
) -> list[LifecycleRun]:
    """Submit ``n`` power ops (one per guest) over HTTP and wait until all are terminal;
    ops per second from the first submission to the last op's ``finished_at`` (tasks take
    0 s), and the CPU (``/proc/<pid>/stat``) the daemon and the simulator — separate
    processes — each used meanwhile, per 1,000 ops. ``profile``: py-spy records the daemon
    during the first run into that file."""
    db = work / "lifecycle.sqlite3"
    async with (
        sim_process(work / "sim", guests=n + 50, task_seconds=0, archive_max=1_000_000) as sim,
        daemon_process(work, db, sim.url, **LIFECYCLE_FLAGS) as daemon,
    ):
        guests = (await _guests(sim))[:n]
        await manage_guests(daemon, [int(g["vmid"]) for g in guests])
        pid, sim_pid = daemon.child.pid, sim.child.pid
        assert pid is not None and sim_pid is not None
        found = []
        for run in range(runs):
            guests = (await _guests(sim))[:n]
            bodies = [_power_body(g, f"life-{run}-{g['vmid']}") for g in guests]
            before = await _terminal_counts(daemon)
            async with _maybe_spy(pid, profile if run == 0 else None):
                cpu0, sim0 = cpu_seconds(pid), cpu_seconds(sim_pid)
                started = time.time()
                result = await post_all(daemon.url, "/v1/ops", bodies, headers=daemon.headers)
                if result.statuses.get(202, 0) != len(bodies):
                    raise RuntimeError(f"lifecycle submissions: {result.statuses}")
                # a coarse wait: each look at /v1/status costs the daemon CPU too
                await wait_until(lambda: _none_open(daemon), 300, "all ops terminal", step=0.25)
                cpu1, sim1 = cpu_seconds(pid), cpu_seconds(sim_pid)
            elapsed = _last_finished(db) - started
            after = await _terminal_counts(daemon)
            succeeded = after["succeeded"] - before["succeeded"]
            if succeeded != len(bodies):
                raise RuntimeError(f"lifecycle: {succeeded}/{len(bodies)} succeeded: {after}")
            found.append(
                LifecycleRun(
                    rate=len(bodies) / elapsed,
                    daemon_cpu_per_1000=(cpu1 - cpu0) / len(bodies) * 1000,
                    sim_cpu_per_1000=(sim1 - sim0) / len(bodies) * 1000,
                )
            )
        return found


async def _none_open(daemon: DaemonProc) -> bool:
    return await _open_ops(daemon) == 0


# --- 3. Proxmox requests per op ----------------------------------------------------------------


@attrs.frozen(kw_only=True)
class RequestCounts:
    concurrency: int
    lifecycled: float
    baseline: float
    lifecycled_by_endpoint: dict[str, int]
    #: Of ``lifecycled``: the SPEC §7 ownership record's requests per op (its config GET,
    #: which carries the digest for the compare-and-swap, and its PUT). A power op reads no
    #: config otherwise (its Check reads the node's listing), so these are all the record's.
    record: float = 0.0
    #: Measured after the other levels: the daemon has learned how long these tasks take
    #: (duration-aware polling), as a daemon that has been running for a while has.
    warm: bool = False


def _endpoint(path: str) -> str:
    parts = path.split("/")
    return "/".join("{x}" if p.isdigit() or p.startswith("UPID:") else p for p in parts)


async def _log_since(sim: SimProc, seq: int) -> tuple[list[dict[str, Any]], int]:
    found = await sim.control(f"/requests?since={seq}")
    return list(found["items"]), int(found["last_seq"])


async def _baseline(sim: SimProc, guests: list[dict[str, Any]]) -> None:
    """A per-UPID 1 s poller, the way common Terraform/Ansible clients wait for a task:
    POST the action, then GET the task status every second until it stops."""
    headers = {"Authorization": f"PVEAPIToken={TOKEN}"}
    api = f"{sim.url}/api2/json"

    async def one(session: aiohttp.ClientSession, guest: dict[str, Any]) -> None:
        action = _power_body(guest, "")["action"]
        base = f"{api}/nodes/{guest['node']}/{guest['kind']}/{guest['vmid']}"
        async with session.post(f"{base}/status/{action}", headers=headers) as resp:
            upid = (await resp.json())["data"]
        while True:
            await asyncio.sleep(1.0)
            url = f"{api}/nodes/{guest['node']}/tasks/{upid}/status"
            async with session.get(url, headers=headers) as resp:
                if (await resp.json())["data"]["status"] == "stopped":
                    return

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(session, g) for g in guests))


async def requests_per_op(
    work: Path, levels: tuple[int, ...] = (1, 10, 100)
) -> list[RequestCounts]:
    """Proxmox API requests per op with 2 s tasks: lifecycled vs the 1 s per-UPID poller.

    Each level runs in turn on one daemon; a last lone op runs once the daemon has learned
    these tasks' durations from the levels before (``warm``), as on a daemon that has run a
    while — the first level is the cold case (no history: the young-task cadence)."""
    results = []
    async with (
        sim_process(work / "sim", guests=max(levels) * 2 + 20, task_seconds=2.0) as sim,
        daemon_process(
            work,
            work / "requests.sqlite3",
            sim.url,
            workers=8,
            node_cap=max(levels) + 10,
            log_level="warning",
        ) as daemon,
    ):
        await manage_guests(daemon, [int(g["vmid"]) for g in await _guests(sim)])
        for k, warm in [(k, False) for k in levels] + [(1, True)]:
            # The warm op takes a guest no level touched: its desired state changes, so it
            # pays the ownership record's write like every first op on a guest.
            guests = (await _guests(sim))[-1:] if warm else (await _guests(sim))[:k]
            _, seq = await _log_since(sim, 0)
            prefix = "req-warm" if warm else f"req-{k}"
            bodies = [_power_body(g, f"{prefix}-{g['vmid']}") for g in guests]
            result = await post_all(
                daemon.url, "/v1/ops", bodies, headers=daemon.headers, connections=min(k, 32)
            )
            if result.statuses.get(202, 0) != k:
                raise RuntimeError(f"requests/op submissions: {result.statuses}")
            await asyncio.sleep(0.2)
            await wait_until(lambda: _none_open(daemon), 120, f"{k} ops terminal", step=0.1)
            items, seq = await _log_since(sim, seq)
            ours = len(items)
            by_endpoint = Counter(f"{r['method']} {_endpoint(r['path'])}" for r in items)
            # the same guests again (now in the other power state), the baseline way
            vmids = {int(g["vmid"]) for g in guests}
            await _baseline(sim, [g for g in await _guests(sim) if int(g["vmid"]) in vmids])
            items, seq = await _log_since(sim, seq)
            record = sum(n for e, n in by_endpoint.items() if e.endswith("/{x}/config"))
            results.append(
                RequestCounts(
                    concurrency=k,
                    lifecycled=ours / k,
                    record=record / k,
                    baseline=len(items) / k,
                    lifecycled_by_endpoint=dict(by_endpoint),
                    warm=warm,
                )
            )
    return results


# --- 6. time from a task's end to its op's terminal state -------------------------------------


def default_poll_interval() -> float:
    """The measured lifecycled's default ``--poll-interval`` (seconds)."""
    from lifecycled.config import Settings

    value = attrs.fields(Settings).poll_interval.default
    if not isinstance(value, int | float):
        raise TypeError(f"cannot read the default poll interval ({value!r})")
    return float(value)


def _terminal_at(op: dict[str, Any]) -> float:
    """When the op's history reached its terminal state (epoch seconds)."""
    for entry in reversed(op["history"]):
        if entry["to"] in TERMINAL:
            return parse_rfc3339(entry["at"])
    raise RuntimeError(f"op {op['id']} has no terminal history entry")


async def task_end_latency(
    work: Path, *, n: int, durations: Sequence[float]
) -> list[tuple[float, float]]:
    """Seconds from each task's end (the simulator's ``ended_at``) to its op's terminal
    history entry, for ``n`` power ops submitted at once on distinct guests, their tasks
    lasting ``durations`` in turn (a simulator fault per guest sets each one); a
    (task length, latency) pair per op.

    The daemon runs with its default settings (workers, poll interval, …) except a node
    cap of ``n``, so every op is in flight together rather than queued behind the default 3.
    """
    db = work / "latency.sqlite3"
    async with (
        sim_process(work / "sim", guests=n + 20, task_seconds=2.0, archive_max=100_000) as sim,
        daemon_process(work, db, sim.url, node_cap=n, log_level="warning") as daemon,
    ):
        guests = (await _guests(sim))[:n]
        await manage_guests(daemon, [int(g["vmid"]) for g in guests])
        guests = (await _guests(sim))[:n]
        bodies = []
        length: dict[int, float] = {}
        for guest, seconds in zip(guests, itertools.cycle(durations), strict=False):
            body = _power_body(guest, f"latency-{guest['vmid']}")
            path = f"/{guest['kind']}/{guest['vmid']}/status/{body['action']}$"
            fault = {"method": "POST", "path": path, "count": 1, "task_seconds": seconds}
            await sim.control("/faults", "POST", fault)
            bodies.append(body)
            length[int(guest["vmid"])] = seconds
        ids: list[int] = []
        result = await post_all(
            daemon.url,
            "/v1/ops",
            bodies,
            headers=daemon.headers,
            connections=8,
            on_answer=lambda status, raw: ids.append(int(json.loads(raw)["id"])),
        )
        if result.statuses.get(202, 0) != n:
            raise RuntimeError(f"latency submissions: {result.statuses}")
        within = max(durations) + 120
        await wait_until(lambda: _none_open(daemon), within, f"{n} ops terminal", step=0.25)
        ended = {t["upid"]: t["ended_at"] for t in (await sim.control("/state"))["tasks"]}
        latencies: list[tuple[float, float]] = []
        for op_id in ids:
            op = await daemon.get(f"/v1/ops/{op_id}")
            if op["state"] != "succeeded" or ended.get(op["upid"]) is None:
                raise RuntimeError(f"latency: op {op_id} {op['state']}, task {op['upid']}")
            latency = _terminal_at(op) - float(ended[op["upid"]])
            latencies.append((length[int(op["guest"]["vmid"])], latency))
        return latencies


# --- 4. Recover with 10,000 ops in flight --------------------------------------------------------

_IN_FLIGHT = (
    "INSERT INTO ops (idempotency_key, action, node, kind, vmid, params, origin, actor, state,"
    " attempts, due_at, upid, created_at, updated_at, claimed_at, dispatched)"
    " VALUES (?, ?, ?, ?, ?, '{}', 'api', 'api:bench', ?, 1, ?, ?, ?, ?, ?, ?)"
)
#: The same row for a journal older than migration 0007 (``phase`` written; 2 = in flight).
_IN_FLIGHT_WITH_PHASE = (
    "INSERT INTO ops (idempotency_key, action, node, kind, vmid, params, origin, actor, state,"
    " attempts, due_at, upid, created_at, updated_at, claimed_at, dispatched, phase)"
    " VALUES (?, ?, ?, ?, ?, '{}', 'api', 'api:bench', ?, 1, ?, ?, ?, ?, ?, ?, 2)"
)
_HISTORY = (
    "INSERT INTO op_history (op_id, at, from_state, to_state, reason, attempt, upid)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)


async def _in_flight_journal(
    path: Path, guests: list[dict[str, Any]], upids: dict[int, str], now: float
) -> None:
    """One op in flight per guest: ``running`` with its task id for the guests in ``upids``
    (the task really ran), ``dispatching`` without one for the others (the daemon died
    between the claim and journaling the UPID, before its POST)."""
    from bench.journal_bench import fresh_journal

    await fresh_journal(path)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        # Before migration 0007 ``phase`` was a plain column the journal wrote (2: in flight);
        # since, it is generated from ``state``. Measuring an older checkout needs it written.
        hidden = {row[1]: row[6] for row in conn.execute("PRAGMA table_xinfo(ops)")}
        insert = _IN_FLIGHT if hidden.get("phase", 2) else _IN_FLIGHT_WITH_PHASE
        conn.execute("BEGIN")
        for i, guest in enumerate(guests):
            vmid, kind, node = int(guest["vmid"]), guest["kind"], guest["node"]
            upid = upids.get(vmid)
            action = _power_body(guest, "")["action"] if upid is None else upids_action(upid)
            cur = conn.execute(
                insert,
                (
                    f"rec-{i}",
                    action,
                    node,
                    kind,
                    vmid,
                    "running" if upid else "dispatching",
                    now - 30,
                    upid,
                    now - 30,
                    now - 30,
                    now - 30,
                    1 if upid else 0,
                ),
            )
            op_id = cur.lastrowid
            conn.executemany(
                _HISTORY,
                [
                    (op_id, now - 31, None, "pending", "submitted", 0, None),
                    (op_id, now - 30, "pending", "dispatching", "claimed (attempt 1)", 1, None),
                ]
                + ([(op_id, now - 29, "dispatching", "running", "task", 1, upid)] if upid else []),
            )
        conn.execute("COMMIT")
    finally:
        conn.close()


_WORKER_ACTIONS = {"start": "start", "shutdown": "shutdown", "stop": "stop"}


def upids_action(upid: str) -> str:
    """The action of a power task's UPID (``qmstart`` → start, ``vzshutdown`` → shutdown)."""
    worker = upid.split(":")[5]
    return _WORKER_ACTIONS[worker[2:]]


async def _run_tasks(sim: SimProc, guests: list[dict[str, Any]]) -> dict[int, str]:
    """POST a power action for each guest (the tasks run and finish); vmid → UPID."""
    headers = {"Authorization": f"PVEAPIToken={TOKEN}"}
    sem = asyncio.Semaphore(32)
    upids: dict[int, str] = {}

    async def one(guest: dict[str, Any]) -> None:
        action = _power_body(guest, "")["action"]
        url = (
            f"{sim.url}/api2/json/nodes/{guest['node']}/{guest['kind']}/{guest['vmid']}"
            f"/status/{action}"
        )
        async with sem, sim.session.post(url, headers=headers) as resp:
            resp.raise_for_status()
            upids[int(guest["vmid"])] = (await resp.json())["data"]

    await asyncio.gather(*(one(g) for g in guests))
    return upids


async def recover(work: Path, *, runs: int, n: int = 10_000) -> list[float]:
    """Seconds Recover takes for ``n`` in-flight ops (as ``/v1/status`` reports it): half
    with the UPID of a task that ran (finished meanwhile), half claimed but never sent."""
    durations = []
    for run in range(runs):
        # A fresh simulator per run: each run adds n tasks to the simulator's archive, and a
        # bigger archive makes every status read slower — the runs would not be repeats.
        async with sim_process(
            work / "sim", guests=n + n // 20, task_seconds=0, archive_max=10 * n
        ) as sim:
            guests = (await _guests(sim))[:n]
            upids = await _run_tasks(sim, guests[: n // 2])
            await asyncio.sleep(0.5)
            await sim.control("/tasks/archive", "POST", {})
            guests = (await _guests(sim))[:n]  # the new power states
            db = work / f"recover-{run}.sqlite3"
            await _in_flight_journal(db, guests, upids, time.time())
            assert sim.child.pid is not None
            sim_cpu = cpu_seconds(sim.child.pid)
            async with daemon_process(
                work, db, sim.url, fresh=False, log_level="warning"
            ) as daemon:
                status = await daemon.get("/v1/status")
                if VERBOSE and daemon.child.pid is not None:
                    print(
                        f"recover: daemon cpu {cpu_seconds(daemon.child.pid):.2f}s,"
                        f" sim cpu {cpu_seconds(sim.child.pid) - sim_cpu:.2f}s,"
                        f" report {status['recover']}",
                        file=sys.stderr,
                    )
                report = status["recover"]
                if report["examined"] != n:
                    raise RuntimeError(f"recover examined {report['examined']} of {n}")
                durations.append(float(report["duration_seconds"]))
    return durations


# --- 5. a 1,000,000-op journal: startup, memory, idle CPU ---------------------------------------


@attrs.frozen(kw_only=True)
class Footprint:
    ready_seconds: float
    rss_mib: float
    idle_cpu_percent: float


async def footprint(work: Path, *, runs: int, n_ops: int, idle_seconds: float) -> list[Footprint]:
    """Start the daemon on a journal with ``n_ops`` terminal ops: seconds to ``/readyz``,
    RSS once ready, CPU share over ``idle_seconds`` of idling."""
    work.mkdir(parents=True, exist_ok=True)
    source = await asyncio.to_thread(bigjournal.cached, work, n_ops)
    found = []
    async with sim_process(work / "sim", guests=20, task_seconds=0.2) as sim:
        for _ in range(runs):
            db = await asyncio.to_thread(bigjournal.copy_of, source, work / "big-run.sqlite3")
            port = free_port()
            child = daemon_child(
                daemon_args(db, sim.url, work, port, log_level="warning"),
                work / "daemon-big.log",
            )
            started = time.perf_counter()
            await child.start()
            try:
                async with aiohttp.ClientSession() as session:
                    await wait_ready(session, f"http://127.0.0.1:{port}/readyz", child, 120)
                    ready = time.perf_counter() - started
                    assert child.pid is not None
                    await asyncio.sleep(1.0)
                    cpu0 = cpu_seconds(child.pid)
                    await asyncio.sleep(idle_seconds)
                    cpu1 = cpu_seconds(child.pid)
                    rss = rss_kib(child.pid) / 1024
            finally:
                await child.stop(30)
            found.append(
                Footprint(
                    ready_seconds=ready,
                    rss_mib=rss,
                    idle_cpu_percent=100 * (cpu1 - cpu0) / idle_seconds,
                )
            )
    return found
