"""Admin commands that work directly on the journal file: ``db``, ``ops`` and ``dlq``.

They open the journal themselves (no daemon needed, and safe while it runs: every write is
one ``BEGIN IMMEDIATE`` transaction). Listings create and migrate a missing journal (an
empty journal lists nothing); every other command refuses a missing file.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from lifecycled.cli._app import EXIT_USAGE, app, fail, handle_errors, print_json, print_table
from lifecycled.domain.durations import parse_duration
from lifecycled.domain.op import HistoryEntry, Op
from lifecycled.domain.serialize import op_to_dict, rfc3339
from lifecycled.domain.states import OpState
from lifecycled.errors import InvalidTransition, NotFound
from lifecycled.journal import Journal, OpPage

T = TypeVar("T")

DEFAULT_DB = Path("data/lifecycled.sqlite3")

db_app = typer.Typer(help="The journal file: migrate, check, back up, prune.", no_args_is_help=True)
ops_app = typer.Typer(help="Ops in the journal: list, show, cancel.", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead letters: list, show, retry, discard, purge.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(ops_app, name="ops")
app.add_typer(dlq_app, name="dlq")

DbOpt = Annotated[
    Path, typer.Option("--db", envvar="LIFECYCLED_DB", help="Journal file.", show_default=True)
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
LimitOpt = Annotated[int, typer.Option("--limit", min=1, max=1000, help="Page size.")]
CursorOpt = Annotated[
    int | None, typer.Option("--cursor", help="Last id of the previous page (next page).")
]
ActionOpt = Annotated[str | None, typer.Option("--action", help="Only ops of this action.")]


def _with_journal(db: Path, work: Callable[[Journal], Awaitable[T]], *, create: bool = False) -> T:
    """Open the journal, run ``work`` on it, close it; one ``asyncio.run`` per command."""

    async def main() -> T:
        async with await Journal.open(db, create=create) as journal:
            return await work(journal)

    return asyncio.run(main())


def _listing_may_create(db: Path) -> bool:
    # An empty journal lists nothing: create it, but never invent the folder it lives in.
    return db.parent.is_dir()


def _duration(text: str, option: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        fail(f"{option}: {exc}", EXIT_USAGE)


def _error_text(op: Op) -> str:
    return f"{op.error.error_class}: {op.error.message}" if op.error is not None else ""


def _print_ops(page: OpPage, as_json: bool, title: str) -> None:
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
                    _error_text(op),
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


def _print_op(op: Op, history: Iterable[HistoryEntry], as_json: bool) -> None:
    entries = list(history)
    if as_json:
        print_json(op_to_dict(op, history=entries))
        return
    shown = op_to_dict(op)
    shown["guest"] = f"{op.guest.node}/{op.guest.kind}/{op.guest.vmid}"
    shown["error"] = _error_text(op) or None
    shown["params"] = json.dumps(op.params, sort_keys=True)
    print_table(f"op {op.id}", ["FIELD", "VALUE"], shown.items())
    print_table(
        "history",
        ["AT", "FROM", "TO", "ATTEMPT", "REASON", "UPID"],
        ([rfc3339(h.at), h.from_state, h.to_state, h.attempt, h.reason, h.upid] for h in entries),
    )


# -- db ------------------------------------------------------------------------------------


@db_app.command("migrate")
@handle_errors
def db_migrate(db: DbOpt = DEFAULT_DB, as_json: JsonOpt = False) -> None:
    """Create the journal if needed and bring its schema up to date."""

    async def work(journal: Journal) -> tuple[int, tuple[str, ...]]:
        return journal.schema_version, journal.applied_migrations

    version, applied = _with_journal(db, work, create=True)
    if as_json:
        print_json({"db": str(db), "schema_version": version, "applied": list(applied)})
    elif applied:
        typer.echo(f"journal {db}: schema version {version} (applied {', '.join(applied)})")
    else:
        typer.echo(f"journal {db}: schema version {version}, up to date")


@db_app.command("check")
@handle_errors
def db_check(db: DbOpt = DEFAULT_DB, as_json: JsonOpt = False) -> None:
    """Run SQLite's integrity check on the journal; exit 1 if it finds problems."""

    async def work(journal: Journal) -> tuple[int, list[str]]:
        return journal.schema_version, await journal.integrity_check()

    version, problems = _with_journal(db, work)
    ok = problems == ["ok"]
    if as_json:
        print_json({"db": str(db), "schema_version": version, "ok": ok, "integrity": problems})
    elif ok:
        typer.echo(f"journal {db}: ok (schema version {version})")
    else:
        for line in problems:
            typer.echo(line)
    if not ok:
        fail(f"journal {db} failed the integrity check ({len(problems)} problems)")


@db_app.command("backup")
@handle_errors
def db_backup(
    dest: Annotated[Path, typer.Argument(help="New file to write (never overwritten).")],
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Copy the journal online (safe while the daemon runs) to DEST, mode 0600."""

    async def work(journal: Journal) -> None:
        await journal.backup(dest)

    _with_journal(db, work)
    typer.echo(f"journal {db} backed up to {dest}")


@db_app.command("prune")
@handle_errors
def db_prune(
    older_than: Annotated[
        str, typer.Option("--older-than", help="Age of finished ops to delete, e.g. 30d.")
    ] = "30d",
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Delete finished ops (and their history) older than --older-than; keeps dead letters."""
    before = time.time() - _duration(older_than, "--older-than")

    async def work(journal: Journal) -> int:
        return await journal.prune(before=before)

    count = _with_journal(db, work)
    typer.echo(f"pruned {count} ops finished before {rfc3339(before)}")


# -- ops -----------------------------------------------------------------------------------


@ops_app.command("list")
@handle_errors
def ops_list(
    state: Annotated[
        OpState | None, typer.Option("--state", help="Only ops in this state.")
    ] = None,
    vmid: Annotated[int | None, typer.Option("--vmid", help="Only ops on this guest.")] = None,
    action: ActionOpt = None,
    limit: LimitOpt = 50,
    cursor: CursorOpt = None,
    db: DbOpt = DEFAULT_DB,
    as_json: JsonOpt = False,
) -> None:
    """List ops, newest first."""

    async def work(journal: Journal) -> OpPage:
        return await journal.list_ops(
            state=state, vmid=vmid, action=action, limit=limit, cursor=cursor
        )

    page = _with_journal(db, work, create=_listing_may_create(db))
    _print_ops(page, as_json, "ops")


@ops_app.command("show")
@handle_errors
def ops_show(
    op_id: Annotated[int, typer.Argument(metavar="ID", help="Op id.")],
    db: DbOpt = DEFAULT_DB,
    as_json: JsonOpt = False,
) -> None:
    """Show one op with its history."""

    async def work(journal: Journal) -> tuple[Op, list[HistoryEntry]]:
        return await journal.get(op_id), await journal.history(op_id)

    op, history = _with_journal(db, work)
    _print_op(op, history, as_json)


@ops_app.command("cancel")
@handle_errors
def ops_cancel(
    op_id: Annotated[int, typer.Argument(metavar="ID", help="Op id (must be pending).")],
    db: DbOpt = DEFAULT_DB,
    as_json: JsonOpt = False,
) -> None:
    """Cancel a pending op."""

    async def work(journal: Journal) -> Op:
        return await journal.cancel(op_id, now=time.time(), reason="cancelled by operator (cli)")

    op = _with_journal(db, work)
    if as_json:
        print_json(op_to_dict(op))
    else:
        typer.echo(f"op {op.id} cancelled")


# -- dlq -----------------------------------------------------------------------------------


@dlq_app.command("list")
@handle_errors
def dlq_list(
    action: ActionOpt = None,
    limit: LimitOpt = 50,
    cursor: CursorOpt = None,
    db: DbOpt = DEFAULT_DB,
    as_json: JsonOpt = False,
) -> None:
    """List dead letters (not discarded), newest first."""

    async def work(journal: Journal) -> OpPage:
        return await journal.list_dead_letters(action=action, limit=limit, cursor=cursor)

    page = _with_journal(db, work, create=_listing_may_create(db))
    _print_ops(page, as_json, "dead letters")


@dlq_app.command("show")
@handle_errors
def dlq_show(
    op_id: Annotated[int, typer.Argument(metavar="ID", help="Dead letter (op) id.")],
    db: DbOpt = DEFAULT_DB,
    as_json: JsonOpt = False,
) -> None:
    """Show one dead letter with its history."""

    async def work(journal: Journal) -> tuple[Op, list[HistoryEntry]]:
        return await journal.get_dead_letter(op_id), await journal.history(op_id)

    op, history = _with_journal(db, work)
    _print_op(op, history, as_json)


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


IdsArg = Annotated[list[int] | None, typer.Argument(metavar="[ID]...", help="Op ids.")]
AllOpt = Annotated[bool, typer.Option("--all", help="Every dead letter (see --action).")]


@dlq_app.command("retry")
@handle_errors
def dlq_retry(
    ids: IdsArg = None,
    all_: AllOpt = False,
    action: ActionOpt = None,
    db: DbOpt = DEFAULT_DB,
    as_json: JsonOpt = False,
) -> None:
    """Re-queue dead letters (or failed/cancelled ops) as new attempt series. Idempotent."""
    _check_selection(ids, all_, action)

    async def one(journal: Journal, op_id: int) -> dict[str, Any]:
        try:
            op = await journal.get(op_id)
            if op.state.is_open:
                return _result(op_id, "unchanged", f"op {op_id} is already {op.state}", op)
            op = await journal.retry(op_id, now=time.time(), reason="retried by operator (cli)")
            return _result(op_id, "retried", f"op {op_id} re-queued (pending)", op)
        except (NotFound, InvalidTransition) as exc:
            return _result(op_id, "error", str(exc), None)

    async def work(journal: Journal) -> list[dict[str, Any]]:
        targets = ids or await _all_dead_letters(journal, action)
        return [await one(journal, op_id) for op_id in targets]

    results = _with_journal(db, work)
    if not results and not as_json:
        typer.echo("no dead letters to retry")
    _report(results, as_json)


@dlq_app.command("discard")
@handle_errors
def dlq_discard(
    ids: Annotated[list[int], typer.Argument(metavar="ID...", help="Dead letter ids.")],
    db: DbOpt = DEFAULT_DB,
    as_json: JsonOpt = False,
) -> None:
    """Discard dead letters: they leave the listing (kept until `dlq purge`). Idempotent."""

    async def one(journal: Journal, op_id: int) -> dict[str, Any]:
        try:
            op = await journal.get(op_id)
            if op.state is OpState.DEAD_LETTERED and await journal.discarded_at(op_id) is not None:
                return _result(op_id, "unchanged", f"op {op_id} is already discarded", op)
            op = await journal.discard(op_id, now=time.time(), reason="discarded by operator (cli)")
            return _result(op_id, "discarded", f"op {op_id} discarded", op)
        except (NotFound, InvalidTransition) as exc:
            return _result(op_id, "error", str(exc), None)

    async def work(journal: Journal) -> list[dict[str, Any]]:
        return [await one(journal, op_id) for op_id in ids]

    _report(_with_journal(db, work), as_json)


@dlq_app.command("purge")
@handle_errors
def dlq_purge(
    older_than: Annotated[
        str | None,
        typer.Option("--older-than", help="Only dead letters discarded longer ago, e.g. 7d."),
    ] = None,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Delete discarded dead letters (and their history) for good."""
    before = None if older_than is None else time.time() - _duration(older_than, "--older-than")

    async def work(journal: Journal) -> int:
        return await journal.purge_discarded(before=before)

    count = _with_journal(db, work)
    typer.echo(f"purged {count} discarded dead letters")
