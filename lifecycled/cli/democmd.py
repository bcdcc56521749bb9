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
