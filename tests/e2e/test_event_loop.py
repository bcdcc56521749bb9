"""`lifecycled run` runs on uvloop by default and on asyncio's own loop when asked
(``--event-loop``); either way a power op goes through and SIGTERM ends the daemon cleanly."""

from __future__ import annotations

import json
import ssl
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trustme
from crash_support import TOKEN, Daemon, Sim, http_json, spawn, wait_for

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


class _TlsSim:
    """`lifecycled sim --tls` as a subprocess: HTTPS with a self-signed certificate, its
    SHA-256 fingerprint in its log."""

    def __init__(self, tmp: Path) -> None:
        self.nodes = "pve1"
        ready, self.log = tmp / "sim.url", tmp / "sim.log"
        self.proc = spawn(
            [
                "sim", "--listen", "127.0.0.1:0", "--ready-file", str(ready), "--tls",
                "--guests", "4", "--token", TOKEN, "--task-seconds", "0.2", "--seed", "3",
                "--auth-delay", "0", "--lock-timeout", "1", "--log-format", "json",
            ],
            self.log,
        )  # fmt: skip
        wait_for(
            lambda: ready.exists() and ready.read_text().strip(), 20, "sim", self.proc, self.log
        )
        self.url = ready.read_text().strip().splitlines()[0]
        events = [json.loads(line) for line in self.log.read_text().splitlines() if line[:1] == "{"]
        self.fingerprint = next(e["fingerprint"] for e in events if e["event"] == "sim.tls")
        self._ctx = ssl.create_default_context()
        self._ctx.check_hostname = False
        self._ctx.verify_mode = ssl.CERT_NONE  # the test's own look at a self-signed sim

    def control(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}/_sim{path}", context=self._ctx) as resp:  # noqa: S310 - loopback
            return json.loads(resp.read())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def test_on_uvloop_the_daemon_speaks_tls_both_ways(tmp_path: Path) -> None:
    """On uvloop the daemon serves its API over HTTPS to a client with a certificate, and
    reaches Proxmox over HTTPS pinned by fingerprint: a start goes through end to end."""
    server_ca, client_ca = trustme.CA(), trustme.CA()
    cert = server_ca.issue_cert("127.0.0.1")
    cert_file, key_file, clients = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    key_file.chmod(0o600)
    client_ca.cert_pem.write_to_path(str(clients))
    ctx = ssl.create_default_context()
    server_ca.configure_trust(ctx)
    client_ca.issue_cert("controlplane@example.net").configure_cert(ctx)

    def call(path: str, body: Any = None) -> Any:
        req = urllib.request.Request(  # noqa: S310 - loopback test URL
            url + path,
            data=None if body is None else json.dumps(body).encode(),
            method="GET" if body is None else "POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:  # noqa: S310
            return json.loads(resp.read())

    def ready() -> bool:
        try:
            return bool(call("/readyz")["status"] == "ready")
        except OSError:
            return False

    sim = _TlsSim(tmp_path)
    extra = ["--pve-fingerprint", sim.fingerprint, "--tls-cert-file", str(cert_file)]
    extra += ["--tls-key-file", str(key_file), "--tls-client-ca-file", str(clients)]
    daemon = Daemon(tmp_path, sim, tmp_path / "journal.sqlite3", extra=extra)  # type: ignore[arg-type]
    try:
        daemon.start(wait_ready=False)
        url = daemon.url.replace("http://", "https://")
        wait_for(ready, 30, "daemon ready over https", daemon.proc, daemon.log)
        guest = next(
            g for g in sim.control("/state")["guests"]
            if g["kind"] == "qemu" and g["status"] == "stopped" and not g["template"]
            and g["ha"] is None and not g["lock"]
        )  # fmt: skip
        call(f"/v1/guests/{guest['vmid']}/manage", {})
        op = call("/v1/ops", {"action": "start", "vmid": guest["vmid"], "idempotency_key": "t"})
        wait_for(
            lambda: call(f"/v1/ops/{op['id']}")["state"] in ("succeeded", "failed"),
            30,
            "op terminal",
            daemon.proc,
            daemon.log,
        )
        done = call(f"/v1/ops/{op['id']}")
        status = next(g for g in sim.control("/state")["guests"] if g["vmid"] == guest["vmid"])
    finally:
        daemon.stop()
        sim.stop()
    assert [e["event_loop"] for e in _ready_events(daemon.log)] == ["uvloop"]
    assert done["state"] == "succeeded", done
    assert status["status"] == "running"
