"""Health, readiness, status, Prometheus metrics and the OpenAPI document."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client.exposition import choose_encoder

import lifecycled
from lifecycled.domain.serialize import rfc3339
from lifecycled.domain.states import OpState
from lifecycled.engine import status as engine_status
from lifecycled.engine.runtime import Runtime
from lifecycled.errors import JournalError
from lifecycled.web.errors import unavailable
from lifecycled.web.routes import JSON, Route, error, ok, runtime_of

log = logging.getLogger("lifecycled.web")

OPENAPI_KEY = web.AppKey("openapi", dict[str, Any])

#: Free space below which the journal counts as unable to write.
MIN_FREE_BYTES = 1024 * 1024


async def healthz(_request: web.Request) -> web.Response:
    """``GET /healthz``: the process serves HTTP."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """``GET /readyz``: Recover has finished and the journal can write.

    ``degraded`` (still 200) while Proxmox does not answer, with the reason and since when.
    """
    runtime = runtime_of(request)
    if runtime.stopping.is_set():
        raise unavailable("not_ready", "lifecycled is shutting down", reason="stopping")
    if not runtime.ready.is_set():
        raise unavailable("not_ready", "Recover has not finished yet", reason="recovering")
    problem = await journal_write_problem(runtime)
    if problem is not None:
        raise unavailable("not_ready", f"the journal cannot write: {problem}", reason="journal")
    health = runtime.health
    if health.up is False:
        # Still ready: submissions are journaled and run when Proxmox answers again.
        body = health.to_dict()
        return web.json_response(
            {
                "status": "degraded",
                "reason": "proxmox_unreachable",
                "detail": body["reason"],
                "since": body["since"],
            }
        )
    return web.json_response({"status": "ready"})


async def journal_write_problem(runtime: Runtime) -> str | None:
    """Why the journal could not take a write now, or ``None``.

    The journal answers a read (it is open and sound), and its file system is writable by
    this process, not mounted read-only and not full. Nothing is written.
    """
    try:
        await runtime.journal.list_ops(limit=1)
    except JournalError as exc:
        return str(exc)
    return await asyncio.to_thread(_file_system_problem, runtime.journal.path)


def _file_system_problem(path: Path) -> str | None:
    directory = path.absolute().parent
    try:
        fs = os.statvfs(directory)
    except OSError as exc:
        return f"{directory}: {exc.strerror}"
    if fs.f_flag & os.ST_RDONLY:
        return f"{directory} is on a read-only file system"
    if fs.f_bavail * fs.f_frsize < MIN_FREE_BYTES:
        return f"{directory} has less than 1 MiB free"
    for target in (path, directory):
        if not os.access(target, os.W_OK):
            return f"{target} is not writable"
    return None


async def status(request: web.Request) -> web.Response:
    """``GET /v1/status``: the runtime's state, queue counts by state, dead letters, version."""
    runtime = runtime_of(request)
    body = engine_status.status(runtime)
    started = body.get("started_at")
    body["started_at"] = rfc3339(started) if isinstance(started, float) and started else None
    counts = await runtime.journal.counts_by_state()
    body["queue"] = {str(state): counts.get(state, 0) for state in OpState}
    body["dead_letters"] = counts.get(OpState.DEAD_LETTERED, 0)
    body["version"] = lifecycled.__version__
    return web.json_response(body)


async def metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: Prometheus text (or OpenMetrics when asked) from the runtime registry."""
    runtime = runtime_of(request)
    try:
        await runtime.gauges.refresh()
    except JournalError as exc:
        log.warning("web.metrics_gauges_stale", extra={"error": str(exc)})
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = encoder(runtime.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": content_type})


async def openapi_json(request: web.Request) -> web.Response:
    """``GET /openapi.json``: the OpenAPI 3.1 document of every route."""
    return web.json_response(request.app[OPENAPI_KEY])


_STATUS_SCHEMA = "Status"

ROUTES: tuple[Route, ...] = (
    Route(
        method="GET",
        path="/v1/status",
        handler=status,
        operation_id="getStatus",
        summary="Runtime status, queue counts and the last Recover report",
        tag="system",
        responses={200: ok("The status.", _STATUS_SCHEMA)},
    ),
    Route(
        method="GET",
        path="/healthz",
        handler=healthz,
        operation_id="healthz",
        summary="Liveness: 200 while the process serves",
        tag="system",
        public=True,
        responses={200: ok("Alive.", "Health")},
    ),
    Route(
        method="GET",
        path="/readyz",
        handler=readyz,
        operation_id="readyz",
        summary="Readiness: Recover finished and the journal can write",
        tag="system",
        public=True,
        responses={
            200: ok(
                "Ready, or `degraded` while Proxmox does not answer (submissions still accepted).",
                "Health",
            ),
            503: error(
                "Not ready (`not_ready`); `details.reason` is recovering, stopping or journal.",
                retry_after=True,
            ),
        },
    ),
    Route(
        method="GET",
        path="/metrics",
        handler=metrics,
        operation_id="metrics",
        summary="Prometheus metrics",
        tag="system",
        public=True,
        responses={
            200: {
                "description": "Prometheus text exposition (OpenMetrics when asked for).",
                "content": {
                    "text/plain": {"schema": {"type": "string"}},
                    "application/openmetrics-text": {"schema": {"type": "string"}},
                },
            }
        },
    ),
    Route(
        method="GET",
        path="/openapi.json",
        handler=openapi_json,
        operation_id="openapi",
        summary="This OpenAPI document",
        tag="system",
        public=True,
        responses={
            200: {
                "description": "The OpenAPI 3.1 document.",
                "content": {JSON: {"schema": {"type": "object"}}},
            }
        },
    ),
)
