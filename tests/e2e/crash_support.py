"""Real processes for crash tests: the simulator and the daemon as `python -m lifecycled`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

TOKEN = "root@pam!lifecycled=crash-test"
TOKEN_USER = "root@pam!lifecycled"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(
    args: list[str], log: Path, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLED_")}
    env.update(extra_env or {})
    with log.open("ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "lifecycled", *args],
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=fh,
            env=env,
            start_new_session=True,
        )


def wait_for(
    predicate: Any,
    within: float,
    what: str,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited {proc.returncode}\n{_tail(log)}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}\n{_tail(log)}")


def _tail(log: Path | None) -> str:
    if log is None or not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-30:])


def http_json(
    url: str, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None
) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))  # noqa: S310 - loopback test URL
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback test URL
        return json.loads(resp.read() or b"null")


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - loopback test URL
            return bool(resp.status == 200)
    except OSError:
        return False


class Sim:
    """`lifecycled sim` as a subprocess."""

    def __init__(self, tmp: Path, *, guests: int, task_seconds: float, nodes: str = "pve1") -> None:
        self.nodes = nodes
        self.ready = tmp / "sim.url"
        self.log = tmp / "sim.log"
        self.proc = spawn(
            [
                "sim",
                "--listen",
                "127.0.0.1:0",
                "--ready-file",
                str(self.ready),
                "--nodes",
                nodes,
                "--guests",
                str(guests),
                "--token",
                TOKEN,
                "--task-seconds",
                str(task_seconds),
                "--seed",
                "3",
                "--auth-delay",
                "0",
                "--lock-timeout",
                "1",
            ],
            self.log,
        )
        wait_for(
            lambda: self.ready.exists() and self.ready.read_text().strip(),
            20,
            "simulator",
            self.proc,
            self.log,
        )
        self.url = self.ready.read_text().strip().splitlines()[0]

    def api(self, path: str) -> Any:
        return http_json(
            f"{self.url}/api2/json{path}", headers={"Authorization": f"PVEAPIToken={TOKEN}"}
        )["data"]

    def control(self, path: str, method: str = "GET", body: Any = None) -> Any:
        return http_json(f"{self.url}/_sim{path}", method=method, body=body)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Daemon:
    """`lifecycled run` as a subprocess against a simulator."""

    def __init__(
        self,
        tmp: Path,
        sim: Sim,
        db: Path,
        *,
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.tmp = tmp
        self.sim = sim
        self.db = db
        self.log = tmp / "daemon.log"
        self.token_file = tmp / "pve.token"
        self.token_file.write_text(TOKEN + "\n")
        self.token_file.chmod(0o600)
        self.extra = extra or []
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, *, wait_ready: bool = True) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.proc = spawn(
            [
                "run",
                "--db",
                str(self.db),
                "--listen",
                f"127.0.0.1:{port}",
                "--node",
                self.sim.nodes,  # one daemon serving every node of the simulator (SPEC §7)
                "--pve-url",
                self.sim.url,
                "--pve-token-file",
                str(self.token_file),
                "--workers",
                "3",
                "--node-cap",
                "6",
                "--max-retries",
                "4",
                "--retry-backoff",
                "0.2s",
                "--max-backoff",
                "1s",
                "--poll-interval",
                "0.5s",
                "--no-reconcile-on-start",
                "--log-format",
                "json",
                *self.extra,
            ],
            self.log,
            self.env,
        )
        if wait_ready:
            wait_for(lambda: healthy(f"{self.url}/readyz"), 30, "daemon ready", self.proc, self.log)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
