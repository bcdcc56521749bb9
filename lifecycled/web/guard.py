"""The door of the HTTP API: same-origin checks, limits, and the audit of refusals.

What this module bounds (docs/SECURITY.md, docs/HTTP_API.md "Limits"):

* **Where a request comes from** — :func:`door_middleware` refuses a ``Host`` that is not one
  of a loopback listener's own names (421 ``host_not_allowed``, DNS rebinding), an ``Origin``
  other than the one the request was sent to and a ``Sec-Fetch-Site`` other than
  ``same-origin``/``none`` (403 ``cross_origin``): a page in a browser on the node cannot
  drive the API. The rule itself is :func:`lifecycled.domain.access.door_refusal`. No
  ``Access-Control-*`` header is ever sent.
* **How long a request may take to arrive** — aiohttp closes a connection whose request head
  has not fully arrived ``http_timeout`` after the connection opened or the previous answer
  was sent (its ``keepalive_timeout``, which it also arms at connection start); the body of a
  write must arrive within ``http_timeout`` too (:func:`limits_middleware`, 408
  ``request_timeout``, connection closed).
* **How many connections** — :class:`GuardedListener` accepts at most ``max_connections``
  at once; one more is answered 503 ``too_many_connections`` and closed before any byte of
  it is read.
* **How many writes** — a token bucket per token (per peer address in loopback-only mode):
  ``write_burst`` at once, ``write_rate`` per second after that; beyond it 429
  ``rate_limited`` with ``Retry-After``.
* **Refusals are audited** (:func:`audit_refusal`) with a bounded digest of the body (its
  SHA-256, its length and its first bytes), and themselves rate-limited per source so a
  flood of refused requests cannot flood the audit log (the rest are counted in the log).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from aiohttp import web
from aiohttp.typedefs import Handler

from lifecycled.audit import AuditRecord, Decision
from lifecycled.config import is_loopback
from lifecycled.domain.access import (
    LOOPBACK_NAMES,
    SAFE_METHODS,
    Bucket,
    RateLimit,
    door_refusal,
    is_full,
    take,
)
from lifecycled.web.errors import ApiError, error_body
from lifecycled.web.inputs import body_too_large
from lifecycled.web.routes import RUNTIME_KEY

log = logging.getLogger("lifecycled.web")

#: Bytes of a refused body kept in its audit record (with the whole body's hash and length).
DIGEST_HEAD_BYTES = 32
#: Refusals audited per source: a burst, then one a second; the rest are only counted.
REFUSAL_AUDIT_LIMIT = RateLimit(rate=1.0, burst=30)
#: Callers remembered by a limiter before full buckets are forgotten.
_MAX_KEYS = 10_000


def listener_names(listen_host: str) -> frozenset[str] | None:
    """The ``Host`` names a listener on ``listen_host`` answers to; ``None`` beyond loopback."""
    host = listen_host.strip("[]").lower()
    if not is_loopback(host):
        return None
    return LOOPBACK_NAMES | {host}


class Limiter:
    """Token buckets by caller over :func:`lifecycled.domain.access.take`."""

    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self._buckets: dict[str, Bucket] = {}

    def check(self, key: str, now: float) -> int | None:
        """Spend one token of ``key``'s bucket: ``None``, or the seconds to wait."""
        bucket, wait = take(self.limit, self._buckets.get(key), now)
        self._buckets[key] = bucket
        if len(self._buckets) > _MAX_KEYS:
            self._forget(now)
        return wait

    def _forget(self, now: float) -> None:
        full = [k for k, b in self._buckets.items() if is_full(self.limit, b, now)]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) > _MAX_KEYS:  # all busy: drop the longest unchanged half
            oldest = sorted(self._buckets, key=lambda k: self._buckets[k].updated)
            for key in oldest[: len(oldest) // 2]:
                del self._buckets[key]


@attrs.define(kw_only=True)
class Guard:
    """The app's door settings and limiter state (mutable: it owns the buckets)."""

    allowed_hosts: frozenset[str] | None
    body_timeout: float
    writes: Limiter
    refusal_audits: Limiter = attrs.field(factory=lambda: Limiter(REFUSAL_AUDIT_LIMIT))
    #: Refusals answered but not audited because their source was refused too often.
    unaudited: int = 0


GUARD_KEY = web.AppKey("guard", Guard)


@attrs.frozen(kw_only=True)
class Caller:
    """An authenticated request's actor and the write-rate bucket it spends from."""

    actor: str
    bucket: str


#: Set by the auth middleware on every authenticated request.
CALLER_KEY = web.RequestKey("caller", Caller)


def body_digest(body: bytes | None) -> dict[str, Any]:
    """A bounded stand-in for a request body in an audit record: never the body itself."""
    if body is None:
        return {"body_bytes": None}
    return {
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "body_bytes": len(body),
        "body_head": body[:DIGEST_HEAD_BYTES].decode("ascii", errors="backslashreplace"),
    }


async def read_body(request: web.Request) -> bytes:
    """The request body, which must arrive within the guard's ``body_timeout`` (else 408)
    and fit ``client_max_size`` (else 413).

    aiohttp keeps what was read, so handlers reading the body later get it at once. A body
    whose every byte has arrived (a small one comes with the head) is read without arming
    a timer: there is nothing left to wait for.
    """
    guard = request.app[GUARD_KEY]
    try:
        if request.content.is_eof():
            return await request.read()
        async with asyncio.timeout(guard.body_timeout):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise body_too_large(request.client_max_size) from None
    except TimeoutError:
        raise ApiError(
            408,
            "request_timeout",
            f"the request body did not arrive within {guard.body_timeout:g} s",
            headers={"Connection": "close"},
        ) from None


async def audit_refusal(
    request: web.Request,
    *,
    actor: str,
    action: str,
    reason: str,
    vmid: int | None = None,
    node: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Audit a refused write with a bounded digest of its body (rate-limited per source)."""
    runtime = request.app[RUNTIME_KEY]
    guard = request.app[GUARD_KEY]
    now = runtime.clock.now()
    source = request.remote or "unknown"
    if guard.refusal_audits.check(source, now) is not None:
        guard.unaudited += 1
        if guard.unaudited == 1 or guard.unaudited % 100 == 0:
            log.warning(
                "http.refusal_not_audited",
                extra={"remote": source, "reason": reason, "unaudited": guard.unaudited},
            )
        return
    body: bytes | None = None
    if request.body_exists:
        try:
            body = await read_body(request)
        except ApiError:
            body = None  # too slow or too large: the digest says it was not read
    snapshot: dict[str, Any] = {
        "method": request.method,
        "route": _route(request),
        "remote": source,
        **body_digest(body),
        **(extra or {}),
    }
    await runtime.journal.append_audit(
        AuditRecord(
            at=now,
            actor=actor,
            action=action,
            decision=Decision.REFUSED,
            reason=reason,
            vmid=vmid,
            node=node,
            snapshot=snapshot,
        )
    )


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "<unmatched>"


def _is_write(request: web.Request) -> bool:
    return request.method.upper() not in SAFE_METHODS


def _local_port(request: web.Request) -> int | None:
    transport = request.transport
    if transport is None:
        return None
    sockname = transport.get_extra_info("sockname")
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        return int(sockname[1])
    return None


@web.middleware
async def door_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse a foreign ``Host``, ``Origin`` or ``Sec-Fetch-Site`` before anything else."""
    guard = request.app[GUARD_KEY]
    refusal = door_refusal(
        host=request.headers.get("Host"),
        origin=request.headers.get("Origin"),
        fetch_site=request.headers.get("Sec-Fetch-Site"),
        local_port=_local_port(request),
        allowed_hosts=guard.allowed_hosts,
        scheme=request.scheme,
    )
    if refusal is not None:
        log.warning(
            "http.door_refused",
            extra={"code": refusal.code, "method": request.method, "remote": request.remote},
        )
        if _is_write(request):
            await audit_refusal(
                request,
                actor=f"http:{request.remote or 'unknown'}",
                action="door",
                reason=f"{refusal.code}: {refusal.reason}",
                extra={
                    "host": (request.headers.get("Host") or "")[:200],
                    "origin": (request.headers.get("Origin") or "")[:200],
                },
            )
        raise ApiError(refusal.status, refusal.code, refusal.reason)
    return await handler(request)


@web.middleware
async def limits_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Writes: the caller's rate limit (429), then the whole body within the timeout (408)."""
    if not _is_write(request):
        return await handler(request)
    caller = request.get(CALLER_KEY)
    if caller is not None:
        guard = request.app[GUARD_KEY]
        now = request.app[RUNTIME_KEY].clock.now()
        wait = guard.writes.check(caller.bucket, now)
        if wait is not None:
            log.warning(
                "http.rate_limited",
                extra={"actor": caller.actor, "bucket": caller.bucket, "retry_after": wait},
            )
            await audit_refusal(
                request,
                actor=caller.actor,
                action=request.match_info.route.name or "write",
                reason=f"rate_limited: more than {guard.writes.limit.burst} writes at once "
                f"or {guard.writes.limit.rate:g} a second",
            )
            raise ApiError(
                429,
                "rate_limited",
                f"too many writes; retry in {wait} s",
                details={"retry_after": wait},
                headers={"Retry-After": str(wait)},
            )
    if request.body_exists:
        try:
            await read_body(request)
        except ApiError as exc:
            response = exc.response()
            if exc.status == 408:
                response.force_close()  # the rest of a slow body is not waited for
            return response
    return await handler(request)


# --- the listener --------------------------------------------------------------------------------


def _refusal_bytes() -> bytes:
    body = json.dumps(
        error_body(
            "too_many_connections",
            "lifecycled serves as many connections as it may; retry later",
        )
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        "Retry-After: 5\r\n"
        "Connection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


_TOO_MANY = _refusal_bytes()


class _Refused(asyncio.Protocol):
    """A connection over the cap: one 503 answer, then closed; nothing it sends is read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, asyncio.WriteTransport):
            transport.write(_TOO_MANY)
        transport.close()


class _Counted(asyncio.Protocol):
    """Passes everything to aiohttp's protocol and tells the listener when the connection ends."""

    def __init__(self, inner: asyncio.Protocol, on_lost: Callable[[], None]) -> None:
        self._inner = inner
        self._on_lost: Callable[[], None] | None = on_lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._on_lost is not None:
            self._on_lost()
            self._on_lost = None
        self._inner.connection_lost(exc)


class GuardedListener:
    """Listens for the app's runner with a cap on concurrent connections.

    aiohttp's ``AppRunner.server`` is a protocol factory (its documented low-level server);
    this listener wraps it so that every connection is counted from accept to close.
    """

    def __init__(self, runner: web.AppRunner, *, max_connections: int) -> None:
        self._runner = runner
        self.max_connections = max_connections
        self.active = 0
        self.refused = 0
        self._server: asyncio.Server | None = None

    def _protocol(self) -> asyncio.Protocol:
        server = self._runner.server
        if server is None or self.active >= self.max_connections:
            self.refused += 1
            if self.refused == 1 or self.refused % 100 == 0:
                log.warning(
                    "web.connection_refused",
                    extra={"max_connections": self.max_connections, "refused": self.refused},
                )
            return _Refused()
        self.active += 1
        return _Counted(server(), self._lost)

    def _lost(self) -> None:
        self.active -= 1

    async def start(self, host: str, port: int, **kwargs: Any) -> list[Any]:
        """Bind and listen; the bound socket addresses."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, host, port, **kwargs)
        return [sock.getsockname() for sock in self._server.sockets]

    def close(self) -> None:
        """Stop accepting (open connections are closed by the runner's cleanup)."""
        if self._server is not None:
            self._server.close()

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
