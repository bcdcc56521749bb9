"""Health, readiness, status, metrics, the access log and the OpenAPI document (SPEC §5)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest_web import pick, pve_client, serving, web_settings
from prometheus_client.parser import text_string_to_metric_families

import lifecycled
from lifecycled.engine.runtime import Runtime
from lifecycled.metrics import Metrics
from lifecycled.sim import SimServer
from lifecycled.web import build_app, start_web
from lifecycled.web.handlers_system import OPENAPI_KEY

SPEC_METRICS = (
    "lifecycled_queue_depth",
    "lifecycled_retries_total",
    "lifecycled_commands_total",
    "lifecycled_reconcile_runs_total",
    "lifecycled_reconcile_commands_total",
    "lifecycled_recover_ops_total",
    "lifecycled_orphans_total",
    "lifecycled_guests",
    "lifecycled_dead_letters",
    "lifecycled_op_duration_seconds",
    "lifecycled_pve_requests_total",
    "lifecycled_pve_request_duration_seconds",
    "lifecycled_journal_commit_seconds",
)


async def test_healthz_answers_while_serving(sim: SimServer, tmp_path: Path) -> None:
    """/healthz is 200 as long as the process serves, ready or not."""
    async with serving(sim, tmp_path, run=False) as env:
        status, body = await env.get_json("/healthz")
    assert (status, body) == (200, {"status": "ok"})


async def test_readyz_follows_recover_and_stop(sim: SimServer, tmp_path: Path) -> None:
    """/readyz is 503 until Recover finished, 200 while running, 503 again once stopping."""
    runtime = await Runtime.build(web_settings(tmp_path, sim), pve=pve_client(sim))
    stop_web = await start_web(runtime)
    task: asyncio.Task[None] | None = None
    try:
        assert runtime.web_url is not None
        async with aiohttp.ClientSession(base_url=runtime.web_url) as http:
            async with http.get("/readyz") as resp:
                assert resp.status == 503
                assert resp.headers["Retry-After"].isdigit()
                body = await resp.json()
            assert body["error"]["code"] == "not_ready"
            assert body["error"]["details"] == {"reason": "recovering"}
            task = asyncio.create_task(runtime.run(), name="runtime")
            async with asyncio.timeout(10):
                await runtime.ready.wait()
            async with http.get("/readyz") as resp:
                assert resp.status == 200
                assert await resp.json() == {"status": "ready"}
            runtime.request_stop()
            async with http.get("/readyz") as resp:
                assert resp.status == 503
                assert (await resp.json())["error"]["details"] == {"reason": "stopping"}
            async with http.get("/healthz") as resp:
                assert resp.status == 200
    finally:
        runtime.request_stop()
        if task is not None:
            await asyncio.wait_for(task, 15)
        await stop_web()
        await runtime.close()


async def test_readyz_is_503_when_the_journal_fails(sim: SimServer, tmp_path: Path) -> None:
    """A journal that cannot be used (closed under the server) makes /readyz answer 503."""
    async with serving(sim, tmp_path) as env:
        status, _ = await env.get_json("/readyz")
        assert status == 200
        await env.runtime.journal.close()
        status, body = await env.get_json("/readyz")
        assert status == 503
        assert body["error"]["details"] == {"reason": "journal"}
        status, _ = await env.get_json("/healthz")
        assert status == 200


async def test_status_reports_runtime_queue_and_version(sim: SimServer, tmp_path: Path) -> None:
    """/v1/status has the runtime state, op counts by state, dead letters and the version."""
    guest = pick(sim, "qemu", running=False)
    async with serving(sim, tmp_path) as env:
        _, op = await env.submit({"action": "start", "vmid": guest.vmid})
        await env.wait_state(op["id"])
        status, body = await env.get_json("/v1/status")
    assert status == 200
    assert body["ready"] is True and body["stopping"] is False
    assert body["node"] == sim.sim.cfg.nodes[0]
    assert body["version"] == lifecycled.__version__
    assert body["queue"]["succeeded"] == 1
    assert set(body["queue"]) == {
        "pending",
        "dispatching",
        "running",
        "succeeded",
        "failed",
        "dead_lettered",
        "cancelled",
    }
    assert body["dead_letters"] == 0
    assert body["started_at"].endswith("Z")
    assert body["recover"]["examined"] == 0


async def test_metrics_expose_every_spec_metric_without_ids(sim: SimServer, tmp_path: Path) -> None:
    """/metrics parses as Prometheus text, has every SPEC metric, no vmid or UPID labels."""
    guest = pick(sim, "qemu", running=False)
    async with serving(sim, tmp_path) as env:
        _, op = await env.submit({"action": "start", "vmid": guest.vmid})
        await env.wait_state(op["id"], within=20)
        async with env.http.get("/metrics") as resp:
            assert resp.status == 200
            assert resp.content_type == "text/plain"
            text = await resp.text()
        async with env.http.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        ) as resp:
            assert resp.content_type == "application/openmetrics-text"
            assert (await resp.text()).rstrip().endswith("# EOF")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in SPEC_METRICS:
        assert name in families or name.removesuffix("_total") in families, name
    samples = [s for f in families.values() for s in f.samples]
    depth = {s.labels["state"]: s.value for s in samples if s.name == "lifecycled_queue_depth"}
    assert depth["succeeded"] == 1.0
    commands = [s for s in samples if s.name == "lifecycled_commands_total"]
    assert any(s.labels == {"action": "start", "outcome": "succeeded"} for s in commands)
    zero = [s for s in commands if s.labels == {"action": "clone", "outcome": "dead_lettered"}]
    assert [s.value for s in zero] == [0.0]  # every known series exists from the start
    build = [s for s in samples if s.name == "lifecycled_build_info"]
    assert build and build[0].labels["version"] == lifecycled.__version__
    assert "process_cpu_seconds_total" in {s.name for s in samples}
    assert {s.name for s in samples} >= {
        "lifecycled_pve_up",
        "lifecycled_recover_duration_seconds_count",
    }
    recover = [s for s in samples if s.name == "lifecycled_recover_duration_seconds_count"]
    assert recover[0].value == 1.0
    vmids = {str(v) for v in sim.sim.guests}
    for sample in samples:
        for label, value in sample.labels.items():
            assert value not in vmids, (sample.name, label, value)
            assert "UPID" not in value, (sample.name, label, value)


def test_hostile_label_values_become_other() -> None:
    """Metric helpers map any value outside their closed sets (vmids, UPIDs, junk) to other."""
    metrics = Metrics()
    upid = "UPID:pve1:000A1B2C:0011AABB:65F0A1B2:qmstart:101:root@pam!lifecycled:"
    hostile = ["101", "4711", upid, "x" * 500, "start\n", "", "../../etc", "Start"]
    for value in hostile:
        metrics.command(value, value)
        metrics.retry(value, value)
        metrics.recover(value)
        metrics.orphan(value)
        metrics.reconcile_run(value)
        metrics.reconcile_command(value, value)
        metrics.op_finished(value, 1.0)
        metrics.set_guests({(value, value): 1})
        # endpoint labels must be templates; codes are three-digit HTTP statuses
        metrics.pve_request(value, f"/nodes/pve1/qemu/{value}/status/start", value + "x", 0.1)
    metrics.pve_request("GET", f"/nodes/{{node}}/tasks/{upid}/status", "200", 0.1)
    metrics.pve_request("GET", "/nodes/pve1/tasks", "200", 0.1)
    seen: set[str] = set()
    for family in metrics.registry.collect():
        if not family.name.startswith("lifecycled_") or family.name == "lifecycled_build_info":
            continue
        for sample in family.samples:
            # the zero-initialised series (and their _created stamps) carry known values only
            if sample.value and not sample.name.endswith("_created"):
                seen |= {v for k, v in sample.labels.items() if k != "le"}
    assert seen == {"other", "GET", "200"}


def test_repeated_requests_count_in_their_own_series() -> None:
    """Each request counts once in its (method, endpoint, code) series, also when the same
    labels come again or an id-bearing endpoint repeats (both times under other)."""
    metrics = Metrics()
    upid = "UPID:pve1:000A1B2C:0011AABB:65F0A1B2:qmstart:101:root@pam!lifecycled:"
    for _ in range(3):
        metrics.pve_request("GET", "/nodes/{node}/qemu", "200", 0.01)
        metrics.pve_request("GET", f"/nodes/pve1/tasks/{upid}/status", "200", 0.01)
    metrics.pve_request("GET", "/nodes/{node}/qemu", "500", 2.0)
    counts = {
        (s.labels["endpoint"], s.labels["code"]): s.value
        for family in metrics.registry.collect()
        if family.name == "lifecycled_pve_requests"
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert counts == {
        ("/nodes/{node}/qemu", "200"): 3,
        ("other", "200"): 3,
        ("/nodes/{node}/qemu", "500"): 1,
    }
    slow = metrics.registry.get_sample_value(
        "lifecycled_pve_request_duration_seconds_bucket",
        {"endpoint": "/nodes/{node}/qemu", "le": "1.0"},
    )
    assert slow == 3  # the 2 s request is not in the 1 s bucket


async def test_every_request_is_one_access_log_event(
    sim: SimServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """http.request carries method, the path template (no ids), status and duration."""
    caplog.set_level(logging.INFO, logger="lifecycled.web")
    async with serving(sim, tmp_path, run=False) as env:
        await env.get_json("/v1/ops/12345")
        await env.get_json("/no/such/path")
    events = [r for r in caplog.records if r.getMessage() == "http.request"]
    fields = [(r.__dict__["method"], r.__dict__["path"], r.__dict__["status"]) for r in events]
    assert fields == [("GET", "/v1/ops/{id}", 404), ("GET", "<unmatched>", 404)]
    assert all(r.name == "lifecycled.web" for r in events)
    assert all(isinstance(r.__dict__["duration_ms"], float) for r in events)


def _missing_from(doc: dict[str, Any], app: web.Application) -> list[str]:
    """Routes of ``app`` that the OpenAPI document does not describe."""
    missing = []
    for route in app.router.routes():
        resource = route.resource
        if resource is None:
            continue
        path = resource.canonical
        if route.method.lower() not in doc["paths"].get(path, {}):
            missing.append(f"{route.method} {path}")
    return missing


async def test_openapi_documents_every_route(sim: SimServer, tmp_path: Path) -> None:
    """Walking app.router finds no route the OpenAPI document lacks (and the check bites)."""
    runtime = await Runtime.build(web_settings(tmp_path, sim), pve=pve_client(sim))
    try:
        app = build_app(runtime)
        doc = app[OPENAPI_KEY]
        assert doc["openapi"].startswith("3.1")
        assert _missing_from(doc, app) == []
        documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
        served = {
            (r.method.lower(), r.resource.canonical) for r in app.router.routes() if r.resource
        }
        assert documented == served
        for path, ops in doc["paths"].items():
            for method, op in ops.items():
                assert op["responses"], (method, path)
                for code, response in op["responses"].items():
                    # 304 Not Modified has no body by definition (HTTP semantics).
                    assert "content" in response or code == "304", (method, path)
                if path.startswith("/v1/"):
                    assert {"401", "403", "503"} <= set(op["responses"]), (method, path)
                    assert op["security"] == [{"bearer": []}]
                else:
                    assert op["security"] == []
        extra = build_app(runtime)

        async def undocumented(_r: web.Request) -> web.Response:
            return web.Response()

        extra.router.add_get("/v1/undocumented", undocumented)
        assert "GET /v1/undocumented" in _missing_from(doc, extra)
    finally:
        await runtime.close()


async def test_openapi_is_served(sim: SimServer, tmp_path: Path) -> None:
    """GET /openapi.json serves the document, without a token."""
    async with serving(sim, tmp_path, run=False, headers={}) as env:
        status, doc = await env.get_json("/openapi.json")
    assert status == 200
    assert {"/v1/ops", "/v1/ops/{id}", "/metrics", "/openapi.json"} <= set(doc["paths"])
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
