"""Serving the simulator over HTTP(S): :class:`SimServer` (an aiohttp ``AppRunner``)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
import ssl
from types import TracebackType

from aiohttp import web

from lifecycled.sim import control
from lifecycled.sim.config import SimConfig
from lifecycled.sim.pipeline import ApiPipeline
from lifecycled.sim.simulator import Simulator
from lifecycled.sim.tlscert import SelfSigned, make_self_signed

logger = logging.getLogger("lifecycled.sim")

_MAX_BODY = 512 * 1024


def fingerprint_of(der: bytes) -> str:
    """SHA-256 fingerprint as Proxmox shows it (``AA:BB:…``)."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


class SimServer:
    """A running simulator: ``async with SimServer(cfg) as server: server.url …``."""

    def __init__(
        self,
        cfg: SimConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.cfg = cfg if cfg is not None else SimConfig()
        self.host = host
        self.port = port
        self.sim = Simulator(self.cfg)
        self.fingerprint: str | None = None
        self.cert_pem: str | None = None
        self._ssl = ssl_context
        self._pipeline = ApiPipeline(self.sim)
        self._runner: web.AppRunner | None = None

    @property
    def tls(self) -> bool:
        return self._ssl is not None

    @property
    def url(self) -> str:
        """``http(s)://HOST:PORT``; the API is at ``url + "/api2/json"``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def api_url(self) -> str:
        return self.url + "/api2/json"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/_sim" or request.path.startswith("/_sim/"):
            return await control.dispatch(self.sim, request)
        return await self._pipeline.handle(request)

    async def start(self) -> SimServer:
        """Bind, start serving and start the simulator's background work."""
        if self._runner is not None:
            return self
        if self._ssl is None and self.cfg.tls:
            cert: SelfSigned = await asyncio.to_thread(make_self_signed, self.cfg.nodes)
            self._ssl = cert.context
            self.cert_pem = cert.cert_pem
            self.fingerprint = fingerprint_of(cert.der)
        app = web.Application(client_max_size=_MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        try:
            sock = _bind(self.host, self.port)
            self.port = sock.getsockname()[1]
            try:
                site = web.SockSite(runner, sock, ssl_context=self._ssl)
                await site.start()
            except BaseException:
                sock.close()
                raise
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        await self.sim.start()
        if self._ssl is not None and self.fingerprint is None:
            self.fingerprint = await self._peer_fingerprint()
        logger.info(
            "sim.listening",
            extra={
                "url": self.url,
                "nodes": ",".join(self.cfg.nodes),
                "guests": len(self.sim.guests),
            },
        )
        return self

    async def _peer_fingerprint(self) -> str | None:
        """The served certificate's fingerprint, read over a TLS handshake with ourselves."""
        probe = ssl.create_default_context()
        probe.check_hostname = False
        probe.verify_mode = ssl.CERT_NONE
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host  # noqa: S104
        host = "::1" if host == "::" else host
        reader, writer = await asyncio.open_connection(host, self.port, ssl=probe)
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
        del reader
        return fingerprint_of(der) if der else None

    async def stop(self) -> None:
        """Stop serving and stop every task (running ones die without a final log line)."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        await self.sim.close()
        await runner.cleanup()
        logger.info("sim.stopped", extra={"url": self.url})

    async def __aenter__(self) -> SimServer:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
