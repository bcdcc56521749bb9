"""The aiohttp application and its embedding: ``AppRunner`` and a guarded listener (never
``run_app``).

:func:`start_web` is the runtime's :data:`~lifecycled.engine.runtime.WebStarter`: it binds
``settings.listen``, records the real URL on ``runtime.web_url`` (port 0 included) and
returns the coroutine function that stops the server.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

import lifecycled
from lifecycled.domain.access import RateLimit
from lifecycled.engine.runtime import Runtime
from lifecycled.web import (
    handlers_audit,
    handlers_guests,
    handlers_node,
    handlers_ops,
    handlers_system,
)
from lifecycled.web.auth import AUTH_GATE_KEY, ROUTE_ROLES_KEY, AuthGate, auth_middleware
from lifecycled.web.errors import drop_server_header, error_middleware, protocol_logger
from lifecycled.web.guard import (
    GUARD_KEY,
    Guard,
    GuardedListener,
    Limiter,
    door_middleware,
    limits_middleware,
    listener_names,
)
from lifecycled.web.handlers_system import OPENAPI_KEY
from lifecycled.web.openapi import build_document
from lifecycled.web.routes import RUNTIME_KEY, SERVICES_KEY, Route
from lifecycled.web.signing import SIGNATURE_GATE_KEY, SignatureGate
from lifecycled.web.tls import server_tls_context

log = logging.getLogger("lifecycled.web")

#: Every route table the app serves; guests, audit and node routes join here.
ROUTE_TABLES: tuple[tuple[Route, ...], ...] = (
    handlers_ops.ROUTES,
    handlers_system.ROUTES,
    handlers_node.ROUTES,
    handlers_guests.ROUTES,
    handlers_audit.ROUTES,
)

#: Paths polled by probes and scrapers: their successful requests are logged at debug level.
_PROBES = frozenset({"/healthz", "/readyz", "/metrics"})

#: Seconds given to open connections to finish when the server stops.
SHUTDOWN_TIMEOUT = 5.0
#: Seconds an unread request body is drained after its answer before the connection closes.
LINGERING_TIME = 2.0


def all_routes() -> Iterable[Route]:
    for table in ROUTE_TABLES:
        yield from table


@web.middleware
async def access_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One ``http.request`` event per request: method, path template, status, duration.

    Successful probe and scrape requests (``/healthz``, ``/readyz``, ``/metrics``) are logged
    at debug level so that a probe every few seconds does not drown the log.
    """
    started = time.perf_counter()
    status = 499  # the client went away before an answer was made
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        level = logging.DEBUG if request.path in _PROBES and status < 400 else logging.INFO
        if log.isEnabledFor(level):  # its fields are not built for a level that is off
            resource = request.match_info.route.resource
            log.log(
                level,
                "http.request",
                extra={
                    "method": request.method,
                    "path": resource.canonical if resource is not None else "<unmatched>",
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                },
            )


def build_app(runtime: Runtime) -> web.Application:
    """The application: middlewares, every route, the OpenAPI document, auth set-up.

    Middlewares, outermost first: the access log, the JSON error shape, the door (Host,
    Origin, Sec-Fetch-Site), authentication and roles, then the write limits (rate, body
    read time).
    """
    settings = runtime.settings
    app = web.Application(
        middlewares=[
            access_log_middleware,
            error_middleware,
            door_middleware,
            auth_middleware,
            limits_middleware,
        ],
        # aiohttp refuses larger bodies itself (413); the handlers check again.
        client_max_size=settings.max_body_bytes,
    )
    app[RUNTIME_KEY] = runtime
    app[SERVICES_KEY] = runtime.services
    app.on_response_prepare.append(drop_server_header)
    app[GUARD_KEY] = Guard(
        allowed_hosts=listener_names(settings.listen_host),
        body_timeout=settings.http_timeout,
        writes=Limiter(RateLimit(rate=settings.write_rate, burst=settings.write_burst)),
    )
    gate = AuthGate(runtime.settings.api_token_file)
    app[AUTH_GATE_KEY] = gate
    app.on_startup.append(gate.load)
    signatures = SignatureGate(runtime.settings.trusted_keys_file)
    app[SIGNATURE_GATE_KEY] = signatures
    app.on_startup.append(signatures.load)
    # SIGHUP re-reads both files (Runtime.reload); in-flight requests keep the set they had.
    runtime.reloaders = [gate.reload, signatures.reload]
    routes = list(all_routes())
    for route in routes:
        app.router.add_route(route.method, route.path, route.handler, name=route.operation_id)
    app[ROUTE_ROLES_KEY] = {route.operation_id: route.role for route in routes}
    app[OPENAPI_KEY] = build_document(routes, version=lifecycled.__version__)
    return app


def _url(host: str, port: int, *, tls: bool) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{shown}:{port}"


async def start_web(runtime: Runtime) -> Callable[[], Awaitable[None]]:
    """Serve the API on ``settings.listen``; return the coroutine function that stops it.

    The listener is :class:`~lifecycled.web.guard.GuardedListener` over the runner's protocol
    factory (it caps concurrent connections). aiohttp's ``keepalive_timeout`` is armed when a
    connection opens and after every answer, and closes the connection if no complete request
    head arrived by then: with ``http_timeout`` it bounds a half-sent (slowloris) request.
    """
    settings = runtime.settings
    runner = web.AppRunner(
        build_app(runtime),
        access_log=None,  # our middleware logs one event per request
        logger=protocol_logger(),  # aiohttp's protocol errors: one line, no traceback
        handle_signals=False,  # signals belong to the ``run`` entry point
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        keepalive_timeout=settings.http_timeout,
        lingering_time=LINGERING_TIME,
    )
    listener = GuardedListener(runner, max_connections=settings.max_connections)
    try:
        await runner.setup()  # runs the start-up hooks: the token file is read here
        tls = server_tls_context(settings)
        tls_options: dict[str, Any] = {}
        if tls is not None:
            # A TLS handshake that never finishes is bounded like a request head.
            tls_options = {"ssl": tls, "ssl_handshake_timeout": settings.http_timeout}
        addresses = await listener.start(settings.listen_host, settings.listen_port, **tls_options)
    except BaseException:
        listener.close()
        await runner.cleanup()
        await listener.wait_closed()
        raise
    port = settings.listen_port
    for address in addresses:
        port = int(address[1])
        break
    runtime.web_url = _url(settings.listen_host, port, tls=tls is not None)
    log.info("web.listening", extra={"url": runtime.web_url})

    stopped = False

    async def stop() -> None:
        nonlocal stopped
        if stopped:
            return
        stopped = True
        listener.close()
        await runner.cleanup()
        await listener.wait_closed()
        log.info("web.stopped", extra={"url": runtime.web_url})

    return stop
