"""The composition root: one function builds the whole object graph from :class:`Settings`.

The CLI, the HTTP server and the tests all build through :meth:`Runtime.build`; nothing else
creates sessions, connections or registries. :meth:`Runtime.run` owns one root TaskGroup
with named tasks (tracker, dispatchers, janitor, gauges, web) and the one ``stopping``
Event every loop waits on (through :meth:`Clock.wait_or_stop`). What the daemon reports
about itself (gauges, ``/v1/status``) is :mod:`lifecycled.engine.status`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable

import attrs
from prometheus_async import aio

from lifecycled.config import Settings, read_secret_file, read_secret_text
from lifecycled.domain.outcome import RetryBudget
from lifecycled.domain.webhooks import parse_secret
from lifecycled.engine.clock import Clock, SystemClock
from lifecycled.engine.cluster import Cluster
from lifecycled.engine.dispatcher import Dispatcher
from lifecycled.engine.executor import Executor, internal_text
from lifecycled.engine.gate import Policy
from lifecycled.engine.guests import GuestService
from lifecycled.engine.health import PveHealth
from lifecycled.engine.node import activate as activate_node
from lifecycled.engine.reconcile import Reconciler, first_delay
from lifecycled.engine.recover import Recoverer
from lifecycled.engine.sdnotify import Notifier
from lifecycled.engine.services import Services
from lifecycled.engine.status import Gauges, status_line
from lifecycled.engine.submit import Submission
from lifecycled.engine.tracker import Tracker
from lifecycled.errors import ConfigError, JournalError, JournalUnavailable, LifecycledError
from lifecycled.eventloop import running_loop_name
from lifecycled.journal import Journal, SubmitResult
from lifecycled.metrics import Metrics
from lifecycled.pve.port import PveClient, RequestHook

log = logging.getLogger("lifecycled.runtime")

#: Seconds without any Proxmox request after which the health probe (``GET /version``) runs.
PROBE_IDLE = 15.0

#: A web slot: started with the runtime, returns a coroutine function that stops it.
WebStarter = Callable[["Runtime"], Awaitable[Callable[[], Awaitable[None]]]]


def build_pve_client(
    settings: Settings, metrics: Metrics, *, also: RequestHook | None = None
) -> PveClient:
    """The Proxmox adapter the settings ask for (aiohttp by default).

    Every request is reported to the metrics and, when given, to ``also`` (the health record).
    """
    hook: RequestHook = metrics.pve_request
    if also is not None:
        extra = also

        def hook(method: str, endpoint: str, code: str, seconds: float) -> None:
            metrics.pve_request(method, endpoint, code, seconds)
            extra(method, endpoint, code, seconds)

    from lifecycled.pve.auth import TicketAuth, TokenAuth, load_token_file
    from lifecycled.pve.tls import TlsOptions

    token: TokenAuth | None = None
    if settings.pve_token_file is not None:
        token = load_token_file(settings.pve_token_file)
    password = (
        read_secret_file(settings.pve_password_file, "Proxmox password")
        if settings.pve_password_file is not None
        else None
    )
    tls = TlsOptions(
        ca_file=str(settings.pve_ca_file) if settings.pve_ca_file else None,
        fingerprint=settings.pve_fingerprint,
        insecure=settings.pve_insecure,
    )
    if settings.pve_backend == "http":
        from lifecycled.pve.http import HttpPveClient

        auth: TokenAuth | TicketAuth
        if token is not None:
            auth = token
        elif settings.pve_user and password is not None:
            auth = TicketAuth(username=settings.pve_user, password=password)
        else:
            raise ConfigError(
                "no Proxmox credentials: give --pve-token-file (USER@REALM!TOKENID=SECRET), "
                "or --pve-user with --pve-password-file"
            )
        return HttpPveClient(settings.pve_url, auth=auth, tls=tls, on_request=hook)

    from urllib.parse import urlsplit

    from lifecycled.pve.proxmoxer_backend import build_proxmoxer_client

    backend = settings.pve_backend.removeprefix("proxmoxer-")
    backend = {"ssh": "ssh_paramiko"}.get(backend, backend)
    host = urlsplit(settings.pve_url).netloc or None
    return build_proxmoxer_client(
        backend,
        None if backend == "local" else host,
        user=settings.pve_user,
        password=password,
        token=token,
        tls=tls if backend == "https" else None,
        on_request=hook,
    )


@attrs.define(kw_only=True)
class Runtime:
    """Everything a running lifecycled holds."""

    settings: Settings
    journal: Journal
    pve: PveClient
    metrics: Metrics
    clock: Clock
    executor: Executor
    tracker: Tracker
    dispatcher: Dispatcher
    recoverer: Recoverer
    guests: GuestService
    reconciler: Reconciler
    health: PveHealth
    gauges: Gauges
    #: The one stop signal: every loop (tracker, dispatchers, janitor, …) waits on it.
    stopping: asyncio.Event
    #: What the HTTP API offers (the CLI builds its own, on the journal file).
    services: Services
    #: systemd notifications (READY, STATUS, WATCHDOG, STOPPING); a no-op outside systemd.
    notifier: Notifier = attrs.field(factory=Notifier)
    #: What SIGHUP re-reads (the web app registers its API tokens and trusted keys).
    reloaders: list[Callable[[], Awaitable[str]]] = attrs.field(factory=list)
    rand: Callable[[], float] = random.random
    #: Seconds without a Proxmox request after which the health probe runs.
    probe_idle: float = PROBE_IDLE
    ready: asyncio.Event = attrs.field(factory=asyncio.Event)
    started_at: float = 0.0
    web_url: str | None = None

    @classmethod
    async def build(
        cls,
        settings: Settings,
        *,
        pve: PveClient | None = None,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
        rand: Callable[[], float] = random.random,
    ) -> Runtime:
        """Open the journal and build every component; the caller must ``await close()``."""
        metrics = metrics or Metrics()
        clock = clock or SystemClock()
        journal = await Journal.open(
            settings.db, synchronous=settings.synchronous, on_commit=metrics.journal_committed
        )
        health = PveHealth(now=clock.now, on_change=lambda up: metrics.pve_up.set(int(up)))
        try:
            pve = pve or build_pve_client(settings, metrics, also=health.on_request)
        except BaseException:
            await journal.close()
            raise
        budget = RetryBudget(
            max_retries=settings.max_retries,
            base=settings.retry_backoff,
            maximum=settings.max_backoff,
            lock_wait_max=settings.lock_wait_max,
        )
        executor = Executor(
            journal=journal,
            pve=pve,
            clock=clock,
            metrics=metrics,
            budget=budget,
            task_search_skew=settings.task_search_skew,
            rand=rand,
        )
        stopping = asyncio.Event()
        tracker = Tracker(
            executor=executor,
            clock=clock,
            poll_interval=settings.poll_interval,
            stopping=stopping,
        )
        dispatcher = Dispatcher(
            journal=journal,
            executor=executor,
            tracker=tracker,
            policy=Policy(journal=journal, clock=clock, protected_vmids=settings.protected_vmids),
            clock=clock,
            node_cap=settings.node_cap,
            idle_poll=min(1.0, settings.poll_interval),
            stopping=stopping,
            terminate_stop_timeout=settings.terminate_stop_timeout,
        )
        cluster = Cluster(pve=pve, journal=journal, served=settings.nodes, clock=clock)
        guests = GuestService(
            journal=journal,
            pve=pve,
            clock=clock,
            protected_vmids=settings.protected_vmids,
            cluster=cluster,
        )
        dispatcher.cluster = cluster
        reconciler = Reconciler(
            journal=journal,
            pve=pve,
            guests=guests,
            clock=clock,
            metrics=metrics,
            node=settings.primary_node,
            served=settings.nodes,
            cluster=cluster,
            max_commands=settings.reconcile_max_commands,
            manage_discovered=settings.manage_discovered,
            notify=dispatcher.notify,
        )
        recoverer = Recoverer(
            journal=journal, executor=executor, tracker=tracker, clock=clock, metrics=metrics
        )
        return cls(
            settings=settings,
            journal=journal,
            pve=pve,
            metrics=metrics,
            clock=clock,
            executor=executor,
            tracker=tracker,
            dispatcher=dispatcher,
            recoverer=recoverer,
            guests=guests,
            reconciler=reconciler,
            health=health,
            gauges=Gauges(
                journal=journal,
                metrics=metrics,
                reconciler=reconciler,
                node=settings.primary_node,
            ),
            stopping=stopping,
            services=Services(
                journal=journal,
                clock=clock,
                guests=guests,
                node=settings.primary_node,
                pve=pve,
                node_min_age=settings.node_min_age,
                system_node=settings.system_node,
                notify=dispatcher.notify,
            ),
            rand=rand,
        )

    async def close(self) -> None:
        try:
            await self.pve.close()
        finally:
            await self.journal.close()

    # --- running ----------------------------------------------------------------------

    def request_stop(self) -> None:
        """Graceful stop: stop claiming; dispatches in progress journal their UPID first."""
        if not self.stopping.is_set():
            log.info("runtime.stopping")
            self.notifier.stopping()
        self.stopping.set()

    async def run(self, *, web: WebStarter | None = None) -> None:
        """Recover, then serve until :meth:`request_stop`."""
        self.started_at = self.clock.now()
        assert self.guests.cluster is not None
        await self.guests.cluster.check_nodes()  # ConfigError: --node names no cluster node
        # The outbox is written only while push is configured (before anything can change).
        await self.journal.set_push(enabled=self.settings.notify_url is not None)
        stop_web: Callable[[], Awaitable[None]] | None = None
        if web is not None:
            stop_web = await web(self)
        try:
            # Every served node has its lifecycle row (drain, unhealthy, decommission each).
            for node in self.settings.nodes:
                record = await activate_node(
                    self.journal, node, system=self.settings.system_node, now=self.started_at
                )
                if node == self.settings.primary_node:
                    self.gauges.node_record = record
            await self.tracker.learn()  # how long tasks take, before anything is tracked
            report = await aio.time(self.metrics.recover_duration, self.recoverer.recover())
            log.info(
                "runtime.ready",
                extra={
                    "recovered": report.counts.get("examined", 0),
                    "event_loop": running_loop_name(),
                },
            )
            self.ready.set()
            self.notifier.ready(status_line(self.gauges, self.health))
            if self.stopping.is_set():
                return
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._resilient("tracker", self.tracker.run), name="tracker")
                for i in range(self.settings.workers):
                    worker = functools.partial(self.dispatcher.worker, i)
                    tg.create_task(
                        self._resilient(f"dispatcher-{i}", worker), name=f"dispatcher-{i}"
                    )
                tg.create_task(self._resilient("janitor", self._janitor), name="janitor")
                gauges = functools.partial(
                    self.gauges.run, self.stopping, self.clock, refreshed=self._status_changed
                )
                tg.create_task(self._resilient("gauges", gauges), name="gauges")
                tg.create_task(self._resilient("reconcile", self._reconcile), name="reconcile")
                tg.create_task(self._resilient("pve-probe", self._probe), name="pve-probe")
                interval = self.notifier.watchdog_interval
                if interval is not None:
                    tg.create_task(self._watchdog(interval), name="watchdog")
                if self.settings.notify_url:
                    push = functools.partial(self._push, self.settings.notify_url)
                    tg.create_task(self._resilient("push", push), name="push")
        finally:
            self.ready.clear()
            if stop_web is not None:
                await stop_web()

    async def _resilient(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run one of the daemon's loops; when the journal cannot write (full or read-only
        disk), or the loop fails on something unexpected, log it, wait and start the loop
        again instead of taking the daemon down.

        Meanwhile the HTTP API answers 503 and reads keep working; an op whose write failed
        stays where it was journaled, and the janitor/Recover rules pick it up (as after a
        crash at that point).
        """
        delay = 0.5
        while True:
            try:
                await loop()
                return
            except JournalUnavailable as exc:
                log.error("runtime.journal_unavailable", extra={"task": name, "error": str(exc)})
            except Exception as exc:  # last net: ops are contained where they are handled
                log.exception(
                    "runtime.loop_failed", extra={"task": name, "error": internal_text(exc)}
                )
            if await self.clock.wait_or_stop(self.stopping, delay):
                return
            delay = min(delay * 2, 10.0)

    async def _janitor(self) -> None:
        interval = max(1.0, min(60.0, self.settings.stale_after / 4))
        while not await self.clock.wait_or_stop(self.stopping, interval):
            counts = await self.recoverer.janitor_pass(
                stale_after=self.settings.stale_after, busy=self.dispatcher.busy
            )
            if counts:
                log.warning("janitor.pass", extra=counts)

    async def _reconcile(self) -> None:
        settings = self.settings
        start = (
            first_delay(settings.startup_jitter, self.rand) if settings.reconcile_on_start else None
        )
        await self.reconciler.run(
            self.stopping, interval=settings.reconcile_interval, first_delay=start
        )

    def _status_changed(self) -> None:
        self.notifier.status(status_line(self.gauges, self.health))

    async def _watchdog(self, interval: float) -> None:
        """``WATCHDOG=1`` from the event loop: a loop that stops turning stops the pings."""
        while True:
            self.notifier.watchdog()
            if await self.clock.wait_or_stop(self.stopping, interval):
                return

    async def _probe(self) -> None:
        """Keep the Proxmox health verdict fresh while the daemon is idle (``GET /version``)."""
        from lifecycled.errors import PveError

        while not await self.clock.wait_or_stop(self.stopping, min(1.0, self.probe_idle / 3)):
            if self.health.idle_for() < self.probe_idle:
                continue
            try:
                await self.pve.version()
            except PveError as err:
                self.health.record(err.status is not None, err.text)
            else:
                self.health.record(True)

    async def reload(self, *, log_level: str | None = None, actor: str = "signal:SIGHUP") -> bool:
        """Re-read the API tokens and trusted keys and apply ``log_level`` (SIGHUP), without
        touching in-flight work; audited. A file that fails to load leaves what is in force
        for it and is reported (the daemon keeps running). True when everything loaded."""
        from lifecycled.audit import AuditRecord, Decision

        self.notifier.notify(RELOADING="1", MONOTONIC_USEC=str(time.monotonic_ns() // 1000))
        done: list[str] = []
        failed: list[str] = []
        if log_level is not None:
            logging.getLogger("lifecycled").setLevel(log_level.upper())
            done.append(f"log level: {log_level}")
        for reload in self.reloaders:
            try:
                done.append(await reload())
            except (LifecycledError, OSError, ValueError) as exc:
                failed.append(str(exc))
        ok = not failed
        reason = "; ".join(done + [f"FAILED: {f}" for f in failed])
        (log.info if ok else log.error)("runtime.reloaded", extra={"ok": ok, "what": reason})
        try:
            await self.journal.append_audit(
                AuditRecord(
                    at=self.clock.now(),
                    actor=actor,
                    action="reload",
                    decision=Decision.ALLOWED if ok else Decision.REFUSED,
                    reason=reason,
                    node=self.settings.primary_node,
                )
            )
        except JournalError as exc:
            log.warning("runtime.reload_unaudited", extra={"error": str(exc)})
        self.notifier.notify(READY="1", STATUS=status_line(self.gauges, self.health))
        return ok

    async def _push(self, url: str) -> None:
        from lifecycled.engine.push import Pusher

        token = (
            read_secret_file(self.settings.notify_token_file, "notify token")
            if self.settings.notify_token_file is not None
            else None
        )
        secret = (
            parse_secret(read_secret_text(self.settings.push_secret_file, "push secret"))
            if self.settings.push_secret_file is not None
            else None
        )
        pusher = Pusher(
            journal=self.journal,
            url=url,
            node=self.settings.primary_node,
            clock=self.clock,
            state_hash=self.observed_state_hash,
            token=token,
            secret=secret,
            heartbeat=self.settings.notify_heartbeat,
        )
        await pusher.run(self.stopping)

    async def observed_state_hash(self) -> str:
        """The observed-state hash sent in push heartbeats (``domain.guests.observed_hash``)."""
        observed, _ = await self.journal.guest_hashes()
        return observed

    # --- services used by the CLI and the HTTP API --------------------------------------

    async def submit(self, sub: Submission) -> SubmitResult:
        """A submission through the services (tests and the bench call it here)."""
        return await self.services.submit(sub)
