"""Admin commands that work directly on the journal file: ``db`` and ``ops`` (``dlq`` is in
``dlq.py``).

They open the journal themselves (no daemon needed, and safe while it runs: every write is
one ``BEGIN IMMEDIATE`` transaction). Listings create and migrate a missing journal (an
empty journal lists nothing); every other command refuses a missing file.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from lifecycled.cli._app import app, fail, handle_errors, print_json
from lifecycled.cli._journal import (
    DEFAULT_DB,
    MAX_ID,
    ActionOpt,
    ConfigOpt,
    CursorOpt,
    DbOpt,
    JsonOpt,
    LimitOpt,
    VmidFilterOpt,
    duration_option,
    print_op,
    print_ops,
    with_journal,
)
from lifecycled.config import default_node
from lifecycled.domain.op import HistoryEntry, Op
from lifecycled.domain.serialize import op_to_dict, rfc3339
from lifecycled.domain.states import OpState
from lifecycled.engine.services import OpChange, Services
from lifecycled.journal import Journal, OpPage

db_app = typer.Typer(help="The journal file: migrate, check, back up, prune.", no_args_is_help=True)
ops_app = typer.Typer(help="Ops in the journal: list, show, cancel.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(ops_app, name="ops")


@db_app.command("migrate")
@handle_errors
def db_migrate(db: DbOpt = DEFAULT_DB, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Create the journal if needed and bring its schema up to date."""

    async def work(journal: Journal) -> tuple[int, tuple[str, ...]]:
        return journal.schema_version, journal.applied_migrations

    version, applied = with_journal(db, work, create=True)
    if as_json:
        print_json({"db": str(db), "schema_version": version, "applied": list(applied)})
    elif applied:
        typer.echo(f"journal {db}: schema version {version} (applied {', '.join(applied)})")
    else:
        typer.echo(f"journal {db}: schema version {version}, up to date")


@db_app.command("check")
@handle_errors
def db_check(db: DbOpt = DEFAULT_DB, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Run SQLite's integrity check on the journal; exit 1 if it finds problems."""

    async def work(journal: Journal) -> tuple[int, list[str]]:
        return journal.schema_version, await journal.integrity_check()

    version, problems = with_journal(db, work)
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
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Copy the journal online (safe while the daemon runs) to DEST, mode 0600."""

    async def work(journal: Journal) -> None:
        await journal.backup(dest)

    with_journal(db, work)
    if as_json:
        print_json({"journal": str(db), "backup": str(dest), "bytes": dest.stat().st_size})
    else:
        typer.echo(f"journal {db} backed up to {dest}")


@db_app.command("prune")
@handle_errors
def db_prune(
    older_than: Annotated[
        str, typer.Option("--older-than", help="Age of finished ops to delete, e.g. 30d.")
    ] = "30d",
    db: DbOpt = DEFAULT_DB,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete finished ops (and their history) older than --older-than; keeps dead letters."""
    before = time.time() - duration_option(older_than, "--older-than")

    async def work(journal: Journal) -> int:
        return await journal.prune(before=before)

    count = with_journal(db, work)
    if as_json:
        print_json({"pruned": count, "finished_before": rfc3339(before)})
    else:
        typer.echo(f"pruned {count} ops finished before {rfc3339(before)}")


# -- ops -----------------------------------------------------------------------------------


@ops_app.command("list")
@handle_errors
def ops_list(
    state: Annotated[
        OpState | None, typer.Option("--state", help="Only ops in this state.")
    ] = None,
    vmid: VmidFilterOpt = None,
    action: ActionOpt = None,
    limit: LimitOpt = 50,
    cursor: CursorOpt = None,
    db: DbOpt = DEFAULT_DB,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List ops, newest first."""

    async def work(journal: Journal) -> OpPage:
        return await journal.list_ops(
            state=state, vmid=vmid, action=action, limit=limit, cursor=cursor
        )

    page = with_journal(db, work, create=False)
    print_ops(page, as_json, "ops")


@ops_app.command("show")
@handle_errors
def ops_show(
    op_id: Annotated[int, typer.Argument(metavar="ID", min=1, max=MAX_ID, help="Op id.")],
    db: DbOpt = DEFAULT_DB,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one op with its history."""

    async def work(journal: Journal) -> tuple[Op, list[HistoryEntry]]:
        return await journal.get(op_id), await journal.history(op_id)

    op, history = with_journal(db, work)
    print_op(op, history, as_json)


@ops_app.command("cancel")
@handle_errors
def ops_cancel(
    op_id: Annotated[
        int, typer.Argument(metavar="ID", min=1, max=MAX_ID, help="Op id (must be pending).")
    ],
    db: DbOpt = DEFAULT_DB,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Cancel a pending op (cancelling a cancelled op changes nothing; exit 0)."""

    async def work(journal: Journal) -> OpChange:
        return await Services.offline(journal, node=default_node()).cancel(op_id, actor="cli")

    change = with_journal(db, work)
    op = change.op
    if as_json:
        print_json(op_to_dict(op))
    elif change.changed:
        typer.echo(f"op {op.id} cancelled")
    else:
        typer.echo(f"op {op.id} is already cancelled; nothing changed")


# -- dlq -----------------------------------------------------------------------------------
