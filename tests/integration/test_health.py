"""Proxmox reachability: /readyz and /v1/status say `degraded` (never refuse), lifecycled_pve_up."""

from __future__ import annotations

import asyncio
from typing import Any

from conftest import SimFactory
from conftest_web import WebEnv, pick, serving

from lifecycled.engine.health import PveHealth
from lifecycled.sim import SimServer


async def _until(env: WebEnv, path: str, check: Any, within: float = 10.0) -> dict[str, Any]:
    async with asyncio.timeout(within):
        while True:
            status, body = await env.get_json(path)
            if check(status, body):
                return dict(body)
            await asyncio.sleep(0.05)


def _pve_up(env: WebEnv) -> float | None:
    return env.runtime.metrics.registry.get_sample_value("lifecycled_pve_up")


async def test_unreachable_proxmox_is_degraded_not_refused(
    sim_factory: SimFactory, tmp_path: Any
) -> None:
    """With Proxmox gone /readyz is 200 degraded with reason and since; submissions still accepted."""
    server: SimServer = await sim_factory()
    guest = pick(server, "qemu", False)
    async with serving(server, tmp_path) as env:
        env.runtime.probe_idle = 0.2
        await _until(env, "/readyz", lambda s, b: s == 200 and b["status"] == "ready")
        await _until(env, "/v1/status", lambda s, b: b["proxmox"]["up"] is True)
        assert _pve_up(env) == 1
        await server.stop()
        body = await _until(env, "/readyz", lambda s, b: s == 200 and b["status"] == "degraded")
        assert body["reason"] == "proxmox_unreachable" and body["since"] and body["detail"]
        status = await _until(env, "/v1/status", lambda s, b: b["status"] == "degraded")
        assert status["proxmox"]["up"] is False and status["proxmox"]["since"] == body["since"]
        assert _pve_up(env) == 0
        code, op = await env.submit(
            {
                "action": "start",
                "vmid": guest.vmid,
                "kind": guest.kind,
                "node": guest.node,
                "idempotency_key": "while-down",
            }
        )
        assert code == 202, op
        assert op["state"] == "pending"


def test_health_record_flips_and_keeps_since() -> None:
    """Up→down→up flips the verdict once each way; since moves only on a flip."""
    now = [100.0]
    changes: list[bool] = []
    health = PveHealth(now=lambda: now[0], on_change=changes.append)
    assert health.up is None and health.idle_for() == float("inf")
    health.on_request("GET", "/version", "200", 0.01)
    now[0] = 110.0
    health.on_request("GET", "/version", "error", 0.01)
    first_down = health.since
    now[0] = 120.0
    health.on_request("POST", "/nodes/{node}/qemu/{vmid}/status/start", "error", 0.01)
    assert health.up is False and health.since == first_down == 110.0
    assert health.reason is not None and "no answer" in health.reason
    health.on_request("GET", "/version", "500", 0.01)
    assert health.up is True and health.reason is None and changes == [True, False, True]
    assert health.to_dict()["since"] is not None and health.idle_for() == 0.0
