"""Child processes of the demo: the simulator and the daemon, started and stopped for real."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from pathlib import Path

import aiohttp


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Child:
    """One ``python -m lifecycled …`` subprocess with its output in a log file."""

    def __init__(self, name: str, args: list[str], log_path: Path) -> None:
        self.name = name
        self.args = args
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = dict(os.environ)
        env.pop("LIFECYCLED_CONFIG", None)
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
                start_new_session=True,
            )
        finally:
            log.close()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def kill(self) -> None:
        """SIGKILL: no chance to clean up (the crash being demonstrated)."""
        if self.alive() and self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)

    async def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, wait, then SIGKILL if it does not exit."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _first_line(path: Path) -> str | None:
    try:
        lines = path.read_text().strip().splitlines()
    except FileNotFoundError:
        return None
    return lines[0] if lines else None


async def wait_file(path: Path, child: Child, within: float) -> str:
    """The first line of ``path`` once the child wrote it."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        line = await asyncio.to_thread(_first_line, path)
        if line:
            return line
        if not child.alive():
            raise RuntimeError(f"{child.name} exited early:\n{child.tail()}")
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{child.name} did not start within {within:g}s:\n{child.tail()}")


async def wait_ready(session: aiohttp.ClientSession, url: str, child: Child, within: float) -> None:
    """Poll ``url`` until it answers 200."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited early:\n{child.tail()}")
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{child.name} was not ready within {within:g}s:\n{child.tail()}")


async def start_simulator(
    workdir: Path, *, nodes: str, guests: int, token: str, task_seconds: float, extra: list[str]
) -> tuple[Child, str]:
    """``lifecycled sim`` on a free loopback port (log in ``workdir/sim.log``): the child and
    its URL, once it has written its ready file."""
    ready = workdir / "sim.url"
    child = Child(
        "simulator",
        [
            "sim",
            "--listen",
            "127.0.0.1:0",
            "--ready-file",
            str(ready),
            "--nodes",
            nodes,
            "--guests",
            str(guests),
            "--token",
            token,
            "--task-seconds",
            str(task_seconds),
            "--seed",
            "7",
            "--auth-delay",
            "0",
            *extra,
        ],
        workdir / "sim.log",
    )
    await child.start()
    return child, await wait_file(ready, child, within=20)
