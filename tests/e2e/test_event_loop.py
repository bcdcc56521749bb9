"""`lifecycled run` runs on uvloop by default and on asyncio's own loop when asked
(``--event-loop``); either way a power op goes through and SIGTERM ends the daemon cleanly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from crash_support import Daemon, Sim, http_json, wait_for

pytestmark = pytest.mark.timeout(120)


def _ready_events(log: Path) -> list[dict[str, Any]]:
    events = (json.loads(line) for line in log.read_text().splitlines() if line.startswith("{"))
    return [e for e in events if e.get("event") == "runtime.ready"]


def _start_a_guest(daemon: Daemon, sim: Sim) -> dict[str, Any]:
    guest = next(
        g
        for g in sim.control("/state")["guests"]
        if g["kind"] == "qemu"
        and g["status"] == "stopped"
        and not g["template"]
        and g["ha"] is None
        and not g["lock"]
    )
    http_json(f"{daemon.url}/v1/guests/{guest['vmid']}/manage", "POST", {})
    op = http_json(
        f"{daemon.url}/v1/ops",
        "POST",
        {"action": "start", "vmid": guest["vmid"], "idempotency_key": "loop-e2e"},
    )

    def terminal() -> bool:
        found = http_json(f"{daemon.url}/v1/ops/{op['id']}")["state"]
        return found in ("succeeded", "failed", "dead_lettered")

    wait_for(terminal, 30, "op terminal", daemon.proc, daemon.log)
    found: dict[str, Any] = http_json(f"{daemon.url}/v1/ops/{op['id']}")
    found["guest_status"] = next(
        g["status"] for g in sim.control("/state")["guests"] if g["vmid"] == guest["vmid"]
    )
    return found


@pytest.mark.parametrize(
    ("extra", "expected"), [([], "uvloop"), (["--event-loop", "asyncio"], "asyncio")]
)
def test_the_daemon_runs_on_the_chosen_event_loop(
    tmp_path: Path, extra: list[str], expected: str
) -> None:
    """The ready line names the loop in use; an op succeeds on it and SIGTERM exits 0."""
    sim = Sim(tmp_path, guests=4, task_seconds=0.2)
    daemon = Daemon(tmp_path, sim, tmp_path / "journal.sqlite3", extra=extra)
    try:
        daemon.start()
        op = _start_a_guest(daemon, sim)
        code = daemon.stop()
    finally:
        daemon.stop()
        sim.stop()
    assert [e["event_loop"] for e in _ready_events(daemon.log)] == [expected]
    assert op["state"] == "succeeded", op
    assert op["guest_status"] == "running"
    assert code == 0
