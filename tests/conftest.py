"""Shared fixtures: a running Proxmox VE simulator on a loopback port.

* ``sim`` — a started :class:`~lifecycled.sim.SimServer` with fast settings (two nodes,
  20 guests, 50 ms tasks, no 401 delay, 0.3 s lock waits, 0.2 s archiver and HA delay);
* ``sim_factory`` — ``await sim_factory(**overrides)`` starts another one with
  :class:`~lifecycled.sim.SimConfig` overrides (``ssl_context=``/``host=`` go to the server);
* ``sim_api`` — a :class:`~lifecycled.sim.rawclient.RawClient` for ``sim`` with its token.

Everything started here is stopped and closed at teardown.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, Protocol

import pytest

from lifecycled.journal import Journal
from lifecycled.sim import SimConfig, SimServer
from lifecycled.sim.rawclient import RawClient

#: The fast settings every simulator fixture starts from.
FAST_SIM: dict[str, Any] = {
    "nodes": ("pve1", "pve2"),
    "guests": 20,
    "task_seconds": 0.05,
    "seed": 1,
    "auth_delay": 0.0,
    "lock_timeout": 0.3,
    "archive_interval": 0.2,
    "resources_lag": 0.5,
    "ha_delay": 0.2,
}


class SimFactory(Protocol):
    def __call__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
        **overrides: Any,
    ) -> Awaitable[SimServer]: ...


@pytest.fixture
async def sim_factory() -> AsyncIterator[SimFactory]:
    """Start simulators with SimConfig overrides; all are stopped at teardown."""
    servers: list[SimServer] = []

    async def make(
        *, ssl_context: ssl.SSLContext | None = None, host: str = "127.0.0.1", **overrides: Any
    ) -> SimServer:
        cfg = SimConfig(**{**FAST_SIM, **overrides})
        server = SimServer(cfg, host=host, port=0, ssl_context=ssl_context)
        await server.start()
        servers.append(server)
        return server

    try:
        yield make
    finally:
        for server in reversed(servers):
            await server.stop()


@pytest.fixture
async def sim(sim_factory: SimFactory) -> SimServer:
    """A started simulator with the fast settings (two nodes pve1/pve2, 20 guests)."""
    return await sim_factory()


@pytest.fixture
async def sim_api(sim: SimServer) -> AsyncIterator[RawClient]:
    """A raw API caller for ``sim``, authenticated with its API token."""
    async with RawClient(sim.url, token=sim.cfg.token) as client:
        yield client


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    """An empty journal on a real SQLite file (WAL, fsync on) in ``tmp_path``."""
    async with await Journal.open(tmp_path / "j.sqlite3") as j:
        yield j
