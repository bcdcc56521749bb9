"""SIGHUP re-reads the API tokens, the trusted keys and the log level, audited, in-flight work untouched."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

from crash_support import Daemon, Sim, wait_for

OLD = "ops:" + "o" * 32
NEW = "ops:" + "n" * 32


def _status(url: str, token: str) -> int:
    request = urllib.request.Request(  # noqa: S310 — a loopback http URL of the test
        f"{url}/v1/status", headers={"Authorization": f"Bearer {token.partition(':')[2]}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:  # noqa: S310 — loopback test URL
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def _audit(url: str, token: str) -> list[dict[str, object]]:
    request = urllib.request.Request(  # noqa: S310 — a loopback http URL of the test
        f"{url}/v1/audit?action=reload",
        headers={"Authorization": f"Bearer {token.partition(':')[2]}"},
    )
    with urllib.request.urlopen(request, timeout=5) as resp:  # noqa: S310 — loopback test URL
        body = json.loads(resp.read())
    items = body["items"] if isinstance(body, dict) else body
    return list(items)


def test_sighup_swaps_api_tokens_and_keeps_them_on_a_bad_file(tmp_path: Path) -> None:
    """After SIGHUP the new token works and the old one is refused; a broken file keeps what is in force."""
    tokens = tmp_path / "api.tokens"
    tokens.write_text(OLD + "\n")
    tokens.chmod(0o600)
    sim = Sim(tmp_path, guests=2, task_seconds=0.1)
    daemon = Daemon(tmp_path, sim, tmp_path / "j.sqlite3", extra=["--api-token-file", str(tokens)])
    try:
        daemon.start(wait_ready=False)
        wait_for(lambda: daemon.url and _ready(daemon.url), 30, "daemon", daemon.proc, daemon.log)
        assert daemon.proc is not None
        assert _status(daemon.url, OLD) == 200
        assert _status(daemon.url, NEW) == 401

        tokens.write_text(NEW + "\n")
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: _status(daemon.url, NEW) == 200, 10, "new token", daemon.proc, daemon.log)
        assert _status(daemon.url, OLD) == 401

        tokens.write_text("this line is not a token file line at all: : :\n")
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: len(_audit(daemon.url, NEW)) == 2, 10, "second reload", daemon.proc, daemon.log
        )
        assert _status(daemon.url, NEW) == 200  # the broken file changed nothing
        reloads = _audit(daemon.url, NEW)
        decisions = sorted(str(r["decision"]) for r in reloads)
        assert decisions == ["allowed", "refused"], reloads
        assert all(r["actor"] == "signal:SIGHUP" for r in reloads)
        assert daemon.proc.poll() is None
        time.sleep(0.1)
        assert daemon.stop() == 0
    finally:
        daemon.stop()
        sim.stop()


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as resp:  # noqa: S310
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False
