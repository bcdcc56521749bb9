"""Helpers for the Proxmox client contract tests (imported explicitly, not a conftest).

Each adapter under test talks to a real simulator over loopback HTTP(S):

* ``aiohttp`` — :class:`HttpPveClient` with the API token over plain HTTP;
* ``proxmoxer-https`` — proxmoxer's ``https`` backend with the token, against the simulator
  served over TLS with a throw-away CA (trustme);
* ``proxmoxer-local`` — proxmoxer's ``local`` backend running a stand-in ``pvesh``
  (``fake_pvesh/pvesh.py``) found on ``PATH``; it logs in as ``root@pam`` with a password,
  as pvesh run as root acts as ``root@pam``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trustme

from lifecycled.domain.upid import Upid
from lifecycled.pve.auth import TokenAuth
from lifecycled.pve.http import HttpPveClient
from lifecycled.pve.port import PveClient, TaskStatus
from lifecycled.pve.proxmoxer_backend import build_proxmoxer_client
from lifecycled.pve.tls import TlsOptions
from lifecycled.sim import SimConfig, SimServer

TOKEN_TEXT = "root@pam!lifecycled=s3cret"
TOKEN = TokenAuth(user="root@pam!lifecycled", secret="s3cret")
PASSWORD = "sim-root-password"
FAKE_PVESH = Path(__file__).parent / "fake_pvesh" / "pvesh.py"
ADAPTERS = ("aiohttp", "proxmoxer-https", "proxmoxer-local")


def sim_config(**overrides: Any) -> SimConfig:
    """A small, fast two-node cluster (20 guests, 50 ms tasks, no 401 delay)."""
    settings: dict[str, Any] = {
        "nodes": ("pve1", "pve2"),
        "guests": 20,
        "token": TOKEN_TEXT,
        "task_seconds": 0.05,
        "seed": 1,
        "lock_timeout": 0.3,
        "auth_delay": 0.0,
        "archive_max": 1000,
        "archive_interval": 0.2,
        "resources_lag": 0.5,
        "ha_delay": 0.2,
        "tls": False,
        "password": PASSWORD,
    }
    settings.update(overrides)
    return SimConfig(**settings)


@attrs.frozen(kw_only=True)
class TlsMaterial:
    """A throw-away CA, the simulator's server context and its certificate's SHA-256."""

    ca_file: str
    server_context: ssl.SSLContext
    fingerprint: str


def make_tls(directory: Path) -> TlsMaterial:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    ca_file = directory / "pve-root-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    der = ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())
    return TlsMaterial(
        ca_file=str(ca_file),
        server_context=context,
        fingerprint=hashlib.sha256(der).hexdigest(),
    )


@asynccontextmanager
async def running_sim(
    cfg: SimConfig, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[SimServer]:
    """The simulator on an ephemeral loopback port."""
    async with SimServer(cfg, host="127.0.0.1", port=0, ssl_context=ssl_context) as server:
        yield server


def install_fake_pvesh(monkeypatch: pytest.MonkeyPatch, bindir: Path, api_url: str) -> None:
    """Put a ``pvesh`` on PATH that forwards to the simulator at ``api_url``."""
    bindir.mkdir(parents=True, exist_ok=True)
    script = bindir / "pvesh"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_PVESH}" "$@"\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_PVESH_URL", api_url)
    monkeypatch.setenv("FAKE_PVESH_PASSWORD", PASSWORD)
    monkeypatch.delenv("FAKE_PVESH_TOKEN", raising=False)


@attrs.define(kw_only=True)
class Harness:
    """One adapter connected to one running simulator."""

    adapter: str
    client: PveClient
    server: SimServer
    hooks: list[tuple[str, str, str]]
    tls: TlsMaterial | None = None

    def direct_client(self) -> HttpPveClient:
        """An aiohttp client for the same simulator (to act behind the adapter's back)."""
        options = TlsOptions(ca_file=self.tls.ca_file) if self.tls else TlsOptions()
        return HttpPveClient(self.server.url, auth=TOKEN, tls=options)

    @property
    def sim(self) -> Any:
        return self.server.sim

    @property
    def waits_for_tasks(self) -> bool:
        """pvesh answers a lifecycle call only when its task has ended."""
        return self.adapter == "proxmoxer-local"


@asynccontextmanager
async def harness_for(
    adapter: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **overrides: Any
) -> AsyncIterator[Harness]:
    """A running simulator and a client of ``adapter`` for it; both closed afterwards."""
    hooks: list[tuple[str, str, str]] = []

    def hook(method: str, endpoint: str, code: str, seconds: float) -> None:
        hooks.append((method, endpoint, code))

    tls = make_tls(tmp_path) if adapter == "proxmoxer-https" else None
    cfg = sim_config(**overrides)
    async with running_sim(cfg, tls.server_context if tls else None) as server:
        client: PveClient
        if adapter == "aiohttp":
            client = HttpPveClient(server.url, auth=TOKEN, on_request=hook)
        elif adapter == "proxmoxer-https":
            assert tls is not None
            host = server.url.split("://", 1)[1]
            client = build_proxmoxer_client(
                "https",
                host,
                token=TOKEN,
                tls=TlsOptions(ca_file=tls.ca_file),
                timeout=30.0,
                on_request=hook,
            )
        else:
            install_fake_pvesh(monkeypatch, tmp_path / "bin", server.url + "/api2/json")
            client = build_proxmoxer_client("local", timeout=60.0, on_request=hook)
        try:
            yield Harness(adapter=adapter, client=client, server=server, hooks=hooks, tls=tls)
        finally:
            await client.close()
            await asyncio.sleep(0.05)  # let the server see the client's connections close


async def wait_task(client: PveClient, upid: Upid, *, seconds: float = 10.0) -> TaskStatus:
    """Poll a task until it has stopped."""
    async with asyncio.timeout(seconds):
        while True:
            status = await client.task_status(upid)
            if not status.running:
                return status
            await asyncio.sleep(0.02)
