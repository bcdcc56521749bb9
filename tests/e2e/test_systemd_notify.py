"""`lifecycled run` under Type=notify: READY after Recover, STATUS, WATCHDOG, STOPPING."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from crash_support import Daemon, Sim


def _messages(sock: socket.socket, until: float) -> list[str]:
    out: list[str] = []
    while time.monotonic() < until:
        try:
            out.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
    return out


def test_daemon_speaks_sd_notify(tmp_path: Path) -> None:
    """READY=1 (with STATUS) once Recover is done, WATCHDOG=1 every WatchdogSec/2, STOPPING=1 on SIGTERM."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(0.2)
        sim = Sim(tmp_path, guests=4, task_seconds=0.1)
        env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "600000"}  # ping every 0.3 s
        daemon = Daemon(tmp_path, sim, tmp_path / "j.sqlite3", env=env)
        try:
            daemon.start()
            running = _messages(sock, time.monotonic() + 2.0)
            assert daemon.stop() == 0
            stopping = _messages(sock, time.monotonic() + 0.5)
        finally:
            daemon.stop()
            sim.stop()
    ready = [m for m in running if "READY=1" in m]
    assert len(ready) == 1, running
    assert "STATUS=0 in flight, 0 pending, 0 dead letters; Proxmox ok" in ready[0]
    assert running.index(ready[0]) == 0  # nothing before READY: Recover comes first
    assert sum(m == "WATCHDOG=1" for m in running) >= 4, running
    assert any(m.startswith("STOPPING=1") for m in stopping), stopping


def test_no_notify_socket_means_no_notifications(tmp_path: Path) -> None:
    """Outside systemd (no NOTIFY_SOCKET) the daemon starts and stops as before."""
    sim = Sim(tmp_path, guests=2, task_seconds=0.1)
    daemon = Daemon(tmp_path, sim, tmp_path / "j.sqlite3", env={"WATCHDOG_USEC": "1000"})
    try:
        daemon.start()
        assert daemon.stop() == 0
        assert "sdnotify" not in daemon.log.read_text()
    finally:
        daemon.stop()
        sim.stop()
