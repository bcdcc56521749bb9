"""Helpers shared by the commands that work directly on the journal file."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from lifecycled.cli._app import EXIT_USAGE, fail, print_json, print_table
from lifecycled.cli.options import CONFIG_KEY, ConfigOpt, option_info
from lifecycled.config import OPTIONS, config_file_for, load_settings
from lifecycled.domain.durations import parse_duration
from lifecycled.domain.op import HistoryEntry, Op
from lifecycled.domain.serialize import op_to_dict, rfc3339
from lifecycled.engine.submit import VMID_MAX, VMID_MIN
from lifecycled.errors import ConfigError
from lifecycled.journal import Journal, OpPage

__all__ = ["ConfigOpt"]

T = TypeVar("T")

DEFAULT_DB: Path = OPTIONS["db"].default


def _resolve_db(ctx: typer.Context, param: typer.CallbackParam, value: Path) -> Path:
    """``--db`` or ``LIFECYCLED_DB`` as given, else the ``db`` of the config in force.

    The config in force is ``--config``, ``LIFECYCLED_CONFIG`` or /etc/lifecycled/lifecycled.toml
    (the same file the daemon reads), so ``lifecycled dlq list`` on a node needs no flags.
    """
    source = ctx.get_parameter_source(param.name or "db")
    if source is None or source.name not in ("DEFAULT", "DEFAULT_MAP"):
        return value  # given with --db or LIFECYCLED_DB
    config = config_file_for(ctx.meta.get(CONFIG_KEY), os.environ)
    if config is None:
        return value
    try:
        return load_settings({}, env=os.environ, config_file=config).db
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)


#: ``--db`` of the commands that work on the journal file alone: the ``db`` setting's flag,
#: resolved at once (so the body gets the path in force, from the config file if need be).
DbOpt = Annotated[
    Path,
    option_info(
        OPTIONS["db"],
        callback=_resolve_db,
        show_default=f"db of the config file, else {OPTIONS['db'].default}",
    ),
]

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
LimitOpt = Annotated[int, typer.Option("--limit", min=1, max=1000, help="Page size.")]
#: Ids are SQLite integers (64-bit); a larger number is a usage error, not an overflow.
MAX_ID = 2**63 - 1
CursorOpt = Annotated[
    int | None,
    typer.Option("--cursor", min=1, max=MAX_ID, help="Last id of the previous page (next page)."),
]
VmidFilterOpt = Annotated[
    int | None,
    typer.Option("--vmid", min=VMID_MIN, max=VMID_MAX, help="Only this guest."),
]
ActionOpt = Annotated[str | None, typer.Option("--action", help="Only ops of this action.")]


def with_journal(db: Path, work: Callable[[Journal], Awaitable[T]], *, create: bool = False) -> T:
    """Open the journal, run ``work`` on it, close it; one ``asyncio.run`` per command."""

    async def main() -> T:
        async with await Journal.open(db, create=create) as journal:
            return await work(journal)

    return asyncio.run(main())


def duration_option(text: str, option: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        fail(f"{option}: {exc}", EXIT_USAGE)


def error_text(op: Op) -> str:
    return f"{op.error.error_class}: {op.error.message}" if op.error is not None else ""


def print_ops(page: OpPage, as_json: bool, title: str) -> None:
    if as_json:
        print_json([op_to_dict(op) for op in page.items])
    else:
        print_table(
            title,
            ["ID", "ACTION", "GUEST", "STATE", "ATTEMPTS", "UPDATED", "ERROR"],
            (
                [
                    op.id,
                    op.action,
                    f"{op.guest.node}/{op.guest.kind}/{op.guest.vmid}",
                    op.state,
                    op.attempts,
                    rfc3339(op.updated_at),
                    error_text(op),
                ]
                for op in page.items
            ),
        )
    if page.next_cursor is not None:
        hint = f"more: --cursor {page.next_cursor}"
        if as_json:
            typer.echo(hint, err=True)
        else:
            typer.echo(hint)


def print_op(op: Op, history: Iterable[HistoryEntry], as_json: bool) -> None:
    entries = list(history)
    if as_json:
        print_json(op_to_dict(op, history=entries))
        return
    shown = op_to_dict(op)
    shown["guest"] = f"{op.guest.node}/{op.guest.kind}/{op.guest.vmid}"
    shown["error"] = error_text(op) or None
    shown["params"] = json.dumps(op.params, sort_keys=True)
    print_table(f"op {op.id}", ["FIELD", "VALUE"], shown.items())
    print_table(
        "history",
        ["AT", "FROM", "TO", "ATTEMPT", "REASON", "UPID"],
        ([rfc3339(h.at), h.from_state, h.to_state, h.attempt, h.reason, h.upid] for h in entries),
    )


# -- db ------------------------------------------------------------------------------------
