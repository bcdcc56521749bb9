"""``lifecycled dlq``: dead letters, on the journal file (works while the daemon is down)."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import typer

from lifecycled.cli._app import EXIT_USAGE, app, fail, handle_errors, print_json
from lifecycled.cli._journal import (
    DEFAULT_DB,
    MAX_ID,
    ActionOpt,
    CursorOpt,
    DbOpt,
    JsonOpt,
    LimitOpt,
    duration_option,
    print_op,
    print_ops,
    with_journal,
)
from lifecycled.cli.options import ConfigOpt, SettingsInput, with_settings
from lifecycled.config import Scope, Settings, default_node
from lifecycled.domain.op import HistoryEntry, Op
from lifecycled.domain.serialize import op_to_dict
from lifecycled.domain.upid import Upid, UpidError
from lifecycled.engine.services import Services
from lifecycled.errors import LifecycledError, NotFound
from lifecycled.journal import Journal, OpPage

#: Who the CLI's changes are recorded as (history reasons, audit).
ACTOR = "cli"

dlq_app = typer.Typer(help="Dead letters: list, show, retry, discard, purge.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")


@dlq_app.command("list")
@handle_errors
def dlq_list(
    action: ActionOpt = None,
    limit: LimitOpt = 50,
    cursor: CursorOpt = None,
    db: DbOpt = DEFAULT_DB,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List dead letters (not discarded), newest first."""

    async def work(journal: Journal) -> OpPage:
        return await journal.list_dead_letters(action=action, limit=limit, cursor=cursor)

    page = with_journal(db, work, create=False)
    print_ops(page, as_json, "dead letters")


@dlq_app.command("show")
@handle_errors
@with_settings(Scope.PROXMOX)
def dlq_show(
    given: SettingsInput,
    op_id: Annotated[
        int, typer.Argument(metavar="ID", min=1, max=MAX_ID, help="Dead letter (op) id.")
    ],
    db: DbOpt = DEFAULT_DB,
    as_json: JsonOpt = False,
    log_lines: Annotated[
        int, typer.Option("--log-lines", min=1, max=1000, help="Task-log lines to show.")
    ] = 20,
) -> None:
    """Show one dead letter: the op, its full history, its last error and UPID, and — when
    Proxmox is reachable (a --pve-token-file, flag/env/config) — the tail of its task log."""

    async def work(journal: Journal) -> tuple[Op, list[HistoryEntry]]:
        return await journal.get_dead_letter(op_id), await journal.history(op_id)

    op, history = with_journal(db, work)
    upid = op.upid_text or next((h.upid for h in reversed(history) if h.upid), None)
    settings = given.load(db=db)
    log, why = (
        (None, "the op never got a task (no UPID)")
        if upid is None
        else _task_log(settings, upid, log_lines)
    )
    if as_json:
        out = op_to_dict(op, history=history)
        out["last_upid"] = upid
        out["task_log"] = log
        out["task_log_unavailable"] = why
        print_json(out)
        return
    print_op(op, history, as_json=False)
    if log is not None:
        typer.echo(f"task log of {upid} (last {len(log)} lines):")
        for line in log:
            typer.echo(f"  {line}")
    else:
        typer.echo(f"task log: {why}")


def _task_log(settings: Settings, upid: str, lines: int) -> tuple[list[str] | None, str | None]:
    """The tail of a task log, or why it could not be read (never fails the command)."""
    if settings.pve_token_file is None and not (settings.pve_user and settings.pve_password_file):
        return None, "give --pve-token-file (or set it in the config) to fetch it from Proxmox"

    async def fetch() -> list[str]:
        from lifecycled.engine.runtime import build_pve_client
        from lifecycled.metrics import Metrics

        client = build_pve_client(settings, Metrics())
        try:
            async with asyncio.timeout(15):
                return (await client.task_log(Upid.parse(upid), start=0, limit=5000))[-lines:]
        finally:
            await client.close()

    try:
        return asyncio.run(fetch()), None
    except (LifecycledError, UpidError, TimeoutError) as exc:
        return None, f"Proxmox could not be read: {exc}"


async def _all_dead_letters(journal: Journal, action: str | None) -> list[int]:
    ids: list[int] = []
    cursor: int | None = None
    while True:
        page = await journal.list_dead_letters(action=action, limit=1000, cursor=cursor)
        ids.extend(op.id for op in page.items)
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor


def _report(results: list[dict[str, Any]], as_json: bool) -> None:
    """Print per-op outcomes; exit 1 if any of them is an error."""
    if as_json:
        print_json(results)
    errors = [r for r in results if r["outcome"] == "error"]
    if not as_json:
        for r in results:
            if r["outcome"] != "error":
                typer.echo(r["message"])
    for r in errors[:-1]:
        typer.echo(f"lifecycled: error: {r['message']}", err=True)
    if errors:
        fail(errors[-1]["message"])


def _result(op_id: int, outcome: str, message: str, op: Op | None) -> dict[str, Any]:
    return {
        "id": op_id,
        "outcome": outcome,
        "message": message,
        "op": op_to_dict(op) if op else None,
    }


def _check_selection(ids: list[int] | None, all_: bool, action: str | None) -> None:
    if ids and all_:
        fail("give op ids or --all, not both", EXIT_USAGE)
    if not ids and not all_:
        fail("give one or more op ids, or --all", EXIT_USAGE)
    if action is not None and not all_:
        fail("--action only applies with --all", EXIT_USAGE)


IdsArg = Annotated[
    list[int] | None, typer.Argument(metavar="[ID]...", min=1, max=MAX_ID, help="Op ids.")
]
AllOpt = Annotated[bool, typer.Option("--all", help="Every dead letter (see --action).")]


@dlq_app.command("retry")
@handle_errors
def dlq_retry(
    ids: IdsArg = None,
    all_: AllOpt = False,
    action: ActionOpt = None,
    db: DbOpt = DEFAULT_DB,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-queue dead letters as new attempt series (fresh attempt count). Idempotent: a
    dead letter already retried is reported unchanged. A discarded dead letter, a failed or
    a cancelled op is not retried, exit 1 (the HTTP API's rule too); resubmit a failed or
    cancelled op's idempotency key to run it again."""
    _check_selection(ids, all_, action)

    async def work(journal: Journal) -> list[dict[str, Any]]:
        services = Services.offline(journal, node=default_node())
        targets = ids or await _all_dead_letters(journal, action)
        results = []
        for op_id in targets:
            try:
                change = await services.retry(op_id, actor=ACTOR)
            except NotFound as exc:
                results.append(_result(op_id, "error", str(exc), None))
                continue
            op = change.op
            if change.changed:
                results.append(_result(op_id, "retried", f"op {op_id} re-queued (pending)", op))
            else:
                results.append(_result(op_id, "unchanged", f"op {op_id} is already {op.state}", op))
        return results

    results = with_journal(db, work)
    if not results and not as_json:
        typer.echo("no dead letters to retry")
    _report(results, as_json)


@dlq_app.command("discard")
@handle_errors
def dlq_discard(
    ids: Annotated[
        list[int], typer.Argument(metavar="ID...", min=1, max=MAX_ID, help="Dead letter ids.")
    ],
    db: DbOpt = DEFAULT_DB,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Discard dead letters: they leave the listing (kept until `dlq purge`), and cannot be
    retried any more. Idempotent."""

    async def work(journal: Journal) -> list[dict[str, Any]]:
        services = Services.offline(journal, node=default_node())
        results = []
        for op_id in ids:
            try:
                change = await services.discard(op_id, actor=ACTOR)
            except NotFound as exc:
                results.append(_result(op_id, "error", str(exc), None))
                continue
            if change.changed:
                results.append(_result(op_id, "discarded", f"op {op_id} discarded", change.op))
            else:
                results.append(
                    _result(op_id, "unchanged", f"op {op_id} is already discarded", change.op)
                )
        return results

    _report(with_journal(db, work), as_json)


@dlq_app.command("purge")
@handle_errors
def dlq_purge(
    older_than: Annotated[
        str | None,
        typer.Option("--older-than", help="Only dead letters discarded longer ago, e.g. 7d."),
    ] = None,
    db: DbOpt = DEFAULT_DB,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete discarded dead letters (and their history) for good."""
    before = (
        None if older_than is None else time.time() - duration_option(older_than, "--older-than")
    )

    async def work(journal: Journal) -> int:
        return await journal.purge_discarded(before=before)

    count = with_journal(db, work)
    if as_json:
        print_json({"purged": count})
    else:
        typer.echo(f"purged {count} discarded dead letters")
