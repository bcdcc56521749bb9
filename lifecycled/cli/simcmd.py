"""``lifecycled sim``: serve the Proxmox VE API simulator until SIGTERM/SIGINT.

When listening it prints exactly one line to stdout,
``lifecycled sim listening on http://HOST:PORT``, and writes the URL into ``--ready-file``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lifecycled.cli._app import EXIT_USAGE, app, fail
from lifecycled.domain.durations import parse_duration
from lifecycled.logs import configure_logging

if TYPE_CHECKING:
    from lifecycled.sim import SimConfig

logger = logging.getLogger("lifecycled.sim")

DEFAULT_TOKEN = "root@pam!lifecycled=lifecycled-sim"  # noqa: S105 - the simulator's demo token


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        fail(f"--listen must be HOST:PORT, got {text!r}", EXIT_USAGE)
    return host, int(port)


def _seconds(option: str, text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        fail(f"{option}: {exc}", EXIT_USAGE)


def _count(option: str, text: str) -> int:
    if not text.strip().isdigit():
        fail(f"{option} must be a whole number >= 0, got {text!r}", EXIT_USAGE)
    return int(text)


def _read_secret(option: str, path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8").strip().splitlines()
    except OSError as exc:
        fail(f"{option}: cannot read {path}: {exc.strerror or exc}", EXIT_USAGE)
    if not lines:
        fail(f"{option}: {path} is empty", EXIT_USAGE)
    return lines[0].strip()


def _write_ready(path: Path, url: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(url + "\n", encoding="utf-8")
    os.replace(tmp, path)


@app.command("sim")
def sim_command(
    listen: Annotated[str, typer.Option("--listen", help="HOST:PORT (port 0 = any).")] = (
        "127.0.0.1:8006"
    ),
    nodes: Annotated[str, typer.Option("--nodes", help="Comma-separated node names.")] = "pve1",
    guests: Annotated[str, typer.Option("--guests", help="Seeded guests (vmids from 100).")] = "20",
    token: Annotated[
        str | None, typer.Option("--token", help="Accepted API token USER@REALM!TOKENID=SECRET.")
    ] = None,
    token_file: Annotated[
        Path | None, typer.Option("--token-file", help="File whose first line is the token.")
    ] = None,
    password_file: Annotated[
        Path | None,
        typer.Option("--password-file", help="root@pam password for ticket logins (file)."),
    ] = None,
    task_seconds: Annotated[
        str, typer.Option("--task-seconds", help="How long each task runs.")
    ] = "0.2",
    seed: Annotated[str, typer.Option("--seed", help="Seed of the generated cluster.")] = "1",
    tls: Annotated[bool, typer.Option("--tls", help="Serve HTTPS (self-signed).")] = False,
    lock_timeout: Annotated[
        str, typer.Option("--lock-timeout", help="Lock-file wait before 'got timeout'.")
    ] = "10",
    auth_delay: Annotated[str, typer.Option("--auth-delay", help="Delay of every 401.")] = "3",
    ha_delay: Annotated[
        str, typer.Option("--ha-delay", help="Delay before HA requests take effect.")
    ] = "2",
    archive_max: Annotated[
        str, typer.Option("--archive-max", help="Finished tasks kept per node.")
    ] = "1000",
    archive_interval: Annotated[
        str, typer.Option("--archive-interval", help="Task archiver period.")
    ] = "10",
    resources_lag: Annotated[
        str,
        typer.Option(
            "--resources-lag",
            help="How stale /cluster/resources power states are (pvestatd; 0 = live).",
        ),
    ] = "10",
    ready_file: Annotated[
        Path | None, typer.Option("--ready-file", help="Write the URL here once listening.")
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug|info|warning.")] = "info",
    log_format: Annotated[str, typer.Option("--log-format", help="text|json.")] = "text",
) -> None:
    """Serve the Proxmox VE API simulator (control API under /_sim/) until SIGTERM."""
    # Imported here: every other command (the daemon's start among them) would otherwise pay
    # for loading the simulator and its TLS certificate code.
    from lifecycled.sim import SimConfig, SimConfigError
    from lifecycled.sim.config import ApiToken

    host, port = _listen(listen)
    if token is not None and token_file is not None:
        fail("give --token or --token-file, not both", EXIT_USAGE)
    token_text = _read_secret("--token-file", token_file) if token_file else token
    token_text = token_text or DEFAULT_TOKEN
    try:
        ApiToken.parse(token_text)
    except SimConfigError as exc:
        fail(f"--token: {exc}", EXIT_USAGE)
    if log_format not in ("text", "json"):
        fail("--log-format must be text or json", EXIT_USAGE)
    if log_level.lower() not in ("debug", "info", "warning", "error"):
        fail("--log-level must be debug, info, warning or error", EXIT_USAGE)
    try:
        cfg = SimConfig(
            nodes=tuple(n.strip() for n in nodes.split(",") if n.strip()),
            guests=_count("--guests", guests),
            token=token_text,
            task_seconds=_seconds("--task-seconds", task_seconds),
            seed=_count("--seed", seed),
            lock_timeout=_seconds("--lock-timeout", lock_timeout),
            auth_delay=_seconds("--auth-delay", auth_delay),
            ha_delay=_seconds("--ha-delay", ha_delay),
            archive_max=_count("--archive-max", archive_max),
            archive_interval=_seconds("--archive-interval", archive_interval),
            resources_lag=_seconds("--resources-lag", resources_lag),
            tls=tls,
            password=_read_secret("--password-file", password_file) if password_file else None,
        )
    except SimConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    configure_logging(log_format, log_level)
    from lifecycled import eventloop

    try:
        eventloop.run(_serve(cfg, host, port, ready_file))
    except OSError as exc:
        fail(f"cannot listen on {listen}: {exc.strerror or exc}")


async def _serve(cfg: SimConfig, host: str, port: int, ready_file: Path | None) -> None:
    from lifecycled.sim import SimServer

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        async with SimServer(cfg, host=host, port=port) as server:
            if server.fingerprint:
                logger.info("sim.tls", extra={"fingerprint": server.fingerprint})
            if ready_file is not None:
                await asyncio.to_thread(_write_ready, ready_file, server.url)
            sys.stdout.write(f"lifecycled sim listening on {server.url}\n")
            sys.stdout.flush()
            await stop.wait()
            logger.info("sim.stopping")
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
