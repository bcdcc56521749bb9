"""Shared pieces of the benchmark suite: results, medians, the machine, child processes.

The simulator and the daemon run as real ``python -m lifecycled`` subprocesses (the demo's
:class:`~lifecycled.demo.procs.Child`), each with its log in the run's work folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import attrs

from bench import MEASURED_SOURCE
from lifecycled.demo.procs import Child, free_port, wait_file, wait_ready

#: This checkout (the bench's own code and the simulator it runs).
ROOT = Path(__file__).resolve().parents[1]
TOKEN = "root@pam!lifecycled=bench-secret"
QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
RUNS = 3


#: Units where less is better (times, requests, CPU, memory); every other unit is a rate.
LOWER_IS_BETTER_UNITS = frozenset({"s", "ms", "µs", "req/op", "%", "MiB", "s/1,000 ops"})


@attrs.frozen(kw_only=True)
class Figure:
    """One measured figure: the median of ``runs`` and what it is compared with."""

    #: A stable identifier (bench/results/*.json, ``bench/compare.py``).
    key: str
    section: str
    name: str
    unit: str
    runs: tuple[float, ...]
    #: Key of the anchor this figure is divided by (measured in the same run), if any.
    anchor: str | None = None
    #: A goal: (ratio or value, "ratio" | "max" | "min"), shown as met/missed.
    goal: tuple[float, str] | None = None
    #: The row of issue 15's targets table this figure answers (its goal is the target).
    target: str | None = None
    #: Compare runs by the ratio to the anchor (rates, which drift with the machine) or by
    #: the value (counts such as requests per op, which do not: their anchor only adds its
    #: own noise).
    by_ratio: bool = True
    #: Changes up to this much (in the figure's unit) are never flagged: the resolution of
    #: the measurement (e.g. CPU ticks over an idle period).
    tolerance: float = 0.0
    #: Not lifecycled's figure (a peer, raw sqlite3, the poller baseline, the simulator):
    #: an anchor or a scale; ``bench/compare.py`` shows its change but never flags it.
    reference: bool = False
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def higher_is_better(self) -> bool:
        return self.unit not in LOWER_IS_BETTER_UNITS


def repeat(fn: Callable[[], float], runs: int = RUNS) -> tuple[float, ...]:
    """Run a blocking measurement ``runs`` times."""
    return tuple(fn() for _ in range(runs))


async def arepeat(fn: Callable[[], Awaitable[float]], runs: int = RUNS) -> tuple[float, ...]:
    """Run an async measurement ``runs`` times."""
    return tuple([await fn() for _ in range(runs)])


def _meminfo_total() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                kib = int(line.split()[1])
                return f"{kib / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    return {
        "nproc": str(os.cpu_count()),
        "cpu": _cpu_model(),
        "memory": _meminfo_total(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        **{
            dist: _version(dist)
            for dist in (
                "lifecycled",
                "aiosqlite",
                "aiohttp",
                "persist-queue",
                "huey",
                "py-spy",
            )
        },
    }


def _git_commit(tree: Path) -> str:
    """The tree's commit, ``+dirty`` with uncommitted changes to tracked files."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}+dirty" if dirty else commit


def measured() -> dict[str, str]:
    """Which lifecycled is measured: its source folder and commit (``BENCH_LIFECYCLED``)."""
    import lifecycled

    tree = Path(lifecycled.__file__).resolve().parents[1]
    if MEASURED_SOURCE is not None and not str(tree).startswith(MEASURED_SOURCE):
        raise RuntimeError(f"BENCH_LIFECYCLED={MEASURED_SOURCE} but lifecycled is {tree}")
    return {"source": str(tree), "commit": _git_commit(tree), "bench": _git_commit(ROOT)}


def rss_kib(pid: int) -> int:
    """Resident set size of a process (KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


# --- child processes ------------------------------------------------------------------------


class BenchChild(Child):
    """A :class:`Child` run from a chosen source tree: the daemon from the measured lifecycled
    (``BENCH_LIFECYCLED``), the simulator from this checkout. Its working folder is the run's
    work folder, so ``python -m lifecycled`` never picks up a ``lifecycled/`` from the current
    directory."""

    def __init__(self, name: str, args: list[str], log_path: Path, *, source: str | None):
        super().__init__(name, args, log_path)
        self.source = source

    async def start(self) -> None:
        env = dict(os.environ)
        env.pop("LIFECYCLED_CONFIG", None)
        if self.source is not None:
            env["PYTHONPATH"] = self.source
        log = self.log_path.open("ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "lifecycled",
                *self.args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                cwd=self.log_path.parent,
                start_new_session=True,
            )
        finally:
            log.close()


def daemon_child(args: list[str], log_path: Path) -> BenchChild:
    """``lifecycled run`` from the measured source."""
    return BenchChild("daemon", args, log_path, source=MEASURED_SOURCE)


@attrs.define
class SimProc:
    """``lifecycled sim`` as a child, with its control API."""

    child: BenchChild
    url: str
    session: aiohttp.ClientSession

    async def control(self, path: str, method: str = "GET", body: Any = None) -> Any:
        async with self.session.request(method, f"{self.url}/_sim{path}", json=body) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def api(self, path: str) -> Any:
        headers = {"Authorization": f"PVEAPIToken={TOKEN}"}
        async with self.session.get(f"{self.url}/api2/json{path}", headers=headers) as resp:
            resp.raise_for_status()
            return (await resp.json())["data"]

    async def request_count(self) -> int:
        """Proxmox API requests served since the log was last reset."""
        found = await self.control("/requests")
        return len(found["items"])


@contextlib.asynccontextmanager
async def sim_process(
    work: Path,
    *,
    guests: int,
    task_seconds: float,
    nodes: Sequence[str] = ("pve1",),
    archive_max: int = 1000,
    archive_interval: float = 10.0,
) -> AsyncIterator[SimProc]:
    """Start a simulator; stop it on exit."""
    work.mkdir(parents=True, exist_ok=True)
    ready = work / "sim.url"
    ready.unlink(missing_ok=True)
    child = BenchChild(
        "simulator",
        [
            "sim",
            "--listen",
            "127.0.0.1:0",
            "--ready-file",
            str(ready),
            "--nodes",
            ",".join(nodes),
            "--guests",
            str(guests),
            "--token",
            TOKEN,
            "--task-seconds",
            str(task_seconds),
            "--auth-delay",
            "0",
            "--archive-max",
            str(archive_max),
            "--archive-interval",
            str(archive_interval),
            "--log-level",
            "warning",
        ],
        work / "sim.log",
        source=str(ROOT),
    )
    await child.start()
    try:
        url = await wait_file(ready, child, 30)
        async with aiohttp.ClientSession() as session:
            yield SimProc(child=child, url=url, session=session)
    finally:
        await child.stop()


@attrs.define
class DaemonProc:
    """``lifecycled run`` as a child, with a bearer-token HTTP session."""

    child: BenchChild
    url: str
    session: aiohttp.ClientSession
    api_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_token}"}

    async def get(self, path: str) -> Any:
        async with self.session.get(f"{self.url}{path}", headers=self.headers) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def post(self, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.session.post(
            f"{self.url}{path}", json=body if body is not None else {}, headers=self.headers
        ) as resp:
            return resp.status, await resp.json()

    async def counts(self) -> dict[str, int]:
        """Ops by state, from ``/metrics``' queue depth."""
        async with self.session.get(f"{self.url}/metrics") as resp:
            text = await resp.text()
        counts: dict[str, int] = {}
        for line in text.splitlines():
            if line.startswith("lifecycled_queue_depth{"):
                state = line.split('state="', 1)[1].split('"', 1)[0]
                counts[state] = int(float(line.rsplit(" ", 1)[1]))
        return counts


#: The benchmarks' API token (admin: they submit every action).
BENCH_API_TOKEN = "bench-api-token-0001"


def daemon_args(db: Path, sim_url: str, work: Path, port: int, **flags: Any) -> list[str]:
    token_file = work / "pve.token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    api_file = work / "api.tokens"
    api_file.write_text(f"bench:admin:{BENCH_API_TOKEN}\n")
    api_file.chmod(0o600)
    args = [
        "run",
        "--db",
        str(db),
        "--listen",
        f"127.0.0.1:{port}",
        "--node",
        "pve1",
        "--pve-url",
        sim_url,
        "--pve-token-file",
        str(token_file),
        "--api-token-file",
        str(api_file),
        "--no-reconcile-on-start",
        # Benchmarks measure the daemon, not its per-token write limit.
        "--write-rate",
        "100000",
        "--write-burst",
        "1000000",
        "--log-format",
        "json",
    ]
    for name, value in flags.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return args


@contextlib.asynccontextmanager
async def daemon_process(
    work: Path,
    db: Path,
    sim_url: str,
    *,
    ready_within: float = 120.0,
    fresh: bool = True,
    **flags: Any,
) -> AsyncIterator[DaemonProc]:
    """Start the daemon and wait for ``/readyz``; stop it (SIGTERM) on exit.

    ``fresh``: remove a journal left at ``db`` by an earlier (interrupted) run first.
    """
    if fresh:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    child = daemon_child(daemon_args(db, sim_url, work, port, **flags), work / "daemon.log")
    await child.start()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
            await wait_ready(session, f"{url}/readyz", child, ready_within)
            yield DaemonProc(child=child, url=url, session=session, api_token=BENCH_API_TOKEN)
    finally:
        await child.stop(30)


async def manage_guests(daemon: DaemonProc, vmids: Sequence[int]) -> None:
    """Take guests under management (the ownership rule), if this version has the route."""
    doc = await daemon.get("/openapi.json")
    if "/v1/guests/{vmid}/manage" not in doc.get("paths", {}):
        return
    sem = asyncio.Semaphore(16)

    async def one(vmid: int) -> None:
        async with sem:
            status, body = await daemon.post(f"/v1/guests/{vmid}/manage", {})
            if status >= 400 and status != 409:
                raise RuntimeError(f"manage {vmid}: {status} {json.dumps(body)[:200]}")

    await asyncio.gather(*(one(v) for v in vmids))


async def wait_until(
    predicate: Callable[[], Awaitable[bool]], within: float, what: str, step: float = 0.05
) -> float:
    """Poll ``predicate``; the seconds it took. RuntimeError after ``within``."""
    started = time.perf_counter()
    while True:
        if await predicate():
            return time.perf_counter() - started
        if time.perf_counter() - started > within:
            raise RuntimeError(f"timed out after {within:g}s waiting for {what}")
        await asyncio.sleep(step)
