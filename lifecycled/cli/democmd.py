"""``lifecycled demo``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from lifecycled.cli._app import app, handle_errors


@app.command()
@handle_errors
def demo(
    workdir: Annotated[
        Path | None, typer.Option("--workdir", help="Keep the journal and logs here.")
    ] = None,
) -> None:
    """Start the simulator and the daemon, submit a mixed batch, SIGKILL, recover, verify."""
    from lifecycled.demo.scenario import run_demo

    console = Console()
    if not console.is_terminal:
        console = Console(width=140)  # a log or CI: room for the whole table
    code = asyncio.run(run_demo(console, workdir))
    raise typer.Exit(code)


@app.command("demo-cluster")
@handle_errors
def demo_cluster(
    workdir: Annotated[
        Path | None, typer.Option("--workdir", help="Keep the journals and logs here.")
    ] = None,
) -> None:
    """Three sidecars on a three-node simulator: placement, hand-off, a node crash, LOST once,
    a drain, one key one run (SPEC §7)."""
    from lifecycled.demo.cluster import run_cluster_demo

    console = Console()
    if not console.is_terminal:
        console = Console(width=140)
    code = asyncio.run(run_cluster_demo(console, workdir))
    raise typer.Exit(code)
