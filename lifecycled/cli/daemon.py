"""``lifecycled run``, ``submit`` and ``recover --dry-run``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Annotated, Any

import typer

from lifecycled.cli._app import EXIT_FAILED, app, fail, handle_errors, print_json, print_table
from lifecycled.cli.options import SettingsInput, with_settings
from lifecycled.config import Scope, Settings
from lifecycled.domain.op import Origin
from lifecycled.domain.serialize import op_to_dict
from lifecycled.engine.submit import VMID_MAX, VMID_MIN
from lifecycled.errors import LifecycledError
from lifecycled.logs import configure_logging

log = logging.getLogger("lifecycled.cli")

#: Seconds a thread may hold the GIL while another waits for it (CPython default: 0.005).
_GIL_SWITCH_INTERVAL = 0.001


@app.command()
@handle_errors
@with_settings(*Scope)
def run(given: SettingsInput) -> None:
    """Run the daemon: Recover, then dispatch, track and serve HTTP until SIGTERM."""
    settings = given.load()
    configure_logging(settings.log_format, settings.log_level)
    _preflight(settings)
    # The journal's SQLite thread releases the GIL around every statement and must get it
    # back while the event loop is busy; with the default 5 ms switch interval it can wait
    # that long per statement. 1 ms measured ~30 % more journal throughput under load.
    sys.setswitchinterval(_GIL_SWITCH_INTERVAL)
    from lifecycled import eventloop
    from lifecycled.journal.daemonlock import DaemonLock

    # One daemon per journal, held from before the journal is opened (migrations, Recover)
    # until the process ends; a second `run` exits 1 at once naming the holder's pid.
    with DaemonLock(settings.db):
        _warn_plain_http(settings)
        eventloop.run(_run_daemon(settings, reread=given.load), settings.event_loop)


def _preflight(settings: Settings) -> None:
    """Read and check every file the daemon will use, now: a bad secret file, TLS
    certificate or key is one line and exit 2 at start, never an error later at run time."""
    from lifecycled.config import read_secret_file, read_secret_text
    from lifecycled.domain.signing import parse_trusted_keys
    from lifecycled.domain.webhooks import parse_secret
    from lifecycled.pve.auth import load_token_file
    from lifecycled.web.auth import parse_token_file
    from lifecycled.web.tls import server_tls_context

    if settings.pve_token_file is not None:
        load_token_file(settings.pve_token_file)
    for path, what in (
        (settings.pve_password_file, "Proxmox password"),
        (settings.notify_token_file, "notify token"),
    ):
        if path is not None:
            read_secret_file(path, what)
    if settings.api_token_file is not None:
        parse_token_file(
            read_secret_text(settings.api_token_file, "API token"), str(settings.api_token_file)
        )
    if settings.trusted_keys_file is not None:
        keys = settings.trusted_keys_file
        parse_trusted_keys(read_secret_text(keys, "trusted keys"), str(keys))
    if settings.push_secret_file is not None:
        parse_secret(read_secret_text(settings.push_secret_file, "push secret"))
    server_tls_context(settings)


def _warn_plain_http(settings: Settings) -> None:
    """Plain http:// to Proxmox is allowed for a loopback host only (config) — and said."""
    if settings.pve_url.startswith("http://"):
        log.warning(
            "config.pve_plain_http",
            extra={
                "url": settings.pve_url,
                "hint": "plain HTTP to a loopback Proxmox API (the simulator): no TLS",
            },
        )


async def _run_daemon(settings: Settings, *, reread: Callable[[], Settings] | None = None) -> None:
    from lifecycled.engine.runtime import Runtime
    from lifecycled.engine.sdnotify import Notifier
    from lifecycled.web.app import start_web

    runtime = await Runtime.build(settings)
    runtime.notifier = Notifier.from_env(os.environ, pid=os.getpid())
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            runtime.request_stop()
        elif main is not None:
            main.cancel()  # a second signal forces the exit; durable writes still finish

    reloads: set[asyncio.Task[bool]] = set()

    def on_hangup() -> None:
        """SIGHUP: API tokens, trusted keys and the log level, read again (audited)."""
        level: str | None = None
        if reread is not None:
            try:
                level = reread().log_level
            except LifecycledError as exc:  # a broken config: keep everything in force
                log.error("runtime.reload_config_invalid", extra={"error": str(exc)})
        task = loop.create_task(runtime.reload(log_level=level), name="reload")
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    try:
        await runtime.run(web=start_web)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await runtime.close()


def _parse_param(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise typer.BadParameter(f"{text!r}: expected KEY=VALUE")
    value: Any = raw
    with contextlib.suppress(ValueError):
        parsed = json.loads(raw)
        if isinstance(parsed, int | float | bool | list):
            value = parsed
    return key, value


@app.command()
@handle_errors
@with_settings(Scope.JOURNAL, Scope.NODE, Scope.PROXMOX)
def submit(
    given: SettingsInput,
    action: Annotated[
        str,
        typer.Argument(
            help="start, stop, shutdown, reboot, reset, suspend, resume, resize, configure, migrate, terminate, create, clone."
        ),
    ],
    vmid: Annotated[
        int,
        typer.Argument(
            min=VMID_MIN,
            max=VMID_MAX,
            help="The guest's VMID (the new VMID for create and clone).",
        ),
    ],
    kind: Annotated[
        str | None, typer.Option("--kind", help="qemu or lxc (resolved from Proxmox if omitted).")
    ] = None,
    guest_node: Annotated[
        str | None,
        typer.Option("--guest-node", help="The guest's node (resolved from Proxmox if omitted)."),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="Action parameter KEY=VALUE (repeatable)."),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option("--key", help="Idempotency key (resubmitting it never runs the op twice)."),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait until the op is terminal (needs a running daemon).")
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.0, max=86400.0, help="Seconds to wait with --wait.")
    ] = 300.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Journal an op directly (works while the daemon is down; it runs when the daemon does)."""
    settings = given.load()
    params = dict(_parse_param(p) for p in (param or []))
    out = asyncio.run(_submit(settings, action, vmid, kind, guest_node, params, key, wait, timeout))
    if as_json:
        print_json(out)
    else:
        verb = "deduplicated" if out.get("deduplicated") else "accepted"
        typer.echo(
            f"op {out['id']} {verb}: {out['action']} {out['guest']['kind']}/{out['guest']['vmid']} "
            f"on {out['guest']['node']} — {out['state']}"
        )
    if wait and out["state"] in ("failed", "dead_lettered", "cancelled"):
        raise typer.Exit(EXIT_FAILED)


async def _submit(
    settings: Settings,
    action: str,
    vmid: int,
    kind: str | None,
    guest_node: str | None,
    params: dict[str, Any],
    key: str | None,
    wait: bool,
    wait_seconds: float,
) -> dict[str, Any]:
    from lifecycled.engine.runtime import build_pve_client
    from lifecycled.engine.services import Services
    from lifecycled.engine.submit import Submission
    from lifecycled.journal import Journal
    from lifecycled.metrics import Metrics

    sub = Submission(
        action=action,
        vmid=vmid,
        kind=kind,
        node=guest_node,
        params=params,
        idempotency_key=key,
        origin=Origin.CLI,
        actor="cli",
    )
    pve = None
    if kind is None or (guest_node is None and action != "create"):
        pve = build_pve_client(settings, Metrics())
    async with await Journal.open(settings.db, synchronous=settings.synchronous) as journal:
        try:
            services = Services.offline(journal, node=settings.primary_node, pve=pve)
            result = await services.submit(sub)
        finally:
            if pve is not None:
                await pve.close()
        op = result.op
        deadline = time.monotonic() + wait_seconds
        while wait and not op.state.is_terminal and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            op = await journal.get(op.id)
        if wait and not op.state.is_terminal:
            fail(f"op {op.id} is still {op.state} after {wait_seconds:g}s")
        return op_to_dict(op, deduplicated=result.deduplicated)


@app.command()
@handle_errors
@with_settings(Scope.JOURNAL, Scope.NODE, Scope.PROXMOX)
def recover(
    given: SettingsInput,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what Recover would do; change nothing.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show how Recover would resolve the in-flight ops (the daemon runs it at start)."""
    if not dry_run:
        fail("only --dry-run is supported here: the daemon runs Recover itself at start", 2)
    settings = given.load()
    rows = asyncio.run(_recover_plan(settings))
    if as_json:
        print_json(rows)
        return
    if not rows:
        typer.echo("nothing in flight: Recover has nothing to do")
        return
    print_table(
        "Recover plan (dry run)",
        ["op", "action", "vmid", "state", "upid", "result", "why"],
        [
            [
                r["op_id"],
                r["action"],
                r["vmid"],
                r["state"],
                r["upid"] or "-",
                r["result"],
                r["reason"],
            ]
            for r in rows
        ],
    )


async def _recover_plan(settings: Settings) -> list[dict[str, Any]]:
    from lifecycled.engine.runtime import Runtime

    runtime = await Runtime.build(settings)
    try:
        rows = []
        for op in await runtime.journal.in_flight():
            label, decision = await runtime.recoverer.plan(op)
            rows.append(
                {
                    "op_id": op.id,
                    "action": op.action,
                    "vmid": op.guest.vmid,
                    "state": str(op.state),
                    "upid": op.upid_text,
                    "result": label,
                    "reason": decision.reason
                    if decision is not None
                    else (
                        "task still running: tracking resumes"
                        if label == "resumed"
                        else "Proxmox unreadable"
                    ),
                }
            )
        return rows
    finally:
        await runtime.close()
