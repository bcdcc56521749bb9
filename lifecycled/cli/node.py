"""``lifecycled node status|drain|undrain|decommission`` (SPEC §4 "Node lifecycle").

They work directly on the journal file, so they work while the daemon is down; a running
daemon sees the change at once (every submission reads the node's state). ``decommission``
also asks Proxmox which guests live on the node when Proxmox options are given.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import attrs
import typer

from lifecycled.cli._app import EXIT_FAILED, app, fail, handle_errors, print_json, print_table
from lifecycled.cli.options import SettingsInput, with_settings
from lifecycled.config import Scope, Settings, default_node
from lifecycled.domain.node import NodeRecord
from lifecycled.engine.services import Services, node_info
from lifecycled.journal import Journal
from lifecycled.journal.nodes import NodeChange
from lifecycled.pve.port import PveClient

T = TypeVar("T")

node_app = typer.Typer(
    help="The served node's lifecycle: status, drain, undrain, decommission.",
    no_args_is_help=True,
)
app.add_typer(node_app, name="node")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ReasonOpt = Annotated[str | None, typer.Option("--reason", help="Why (recorded in the audit log).")]
ACTOR = "cli"


def _served(given: SettingsInput) -> Settings:
    """The node to act on: as given, else the journal's only registered node, else the host's.

    A sidecar's journal serves one node; an operator running ``lifecycled node status`` on a
    host whose name differs from the ``--node`` the daemon runs with means that node.
    """
    settings = given.load()
    if given.given("node") or settings.primary_node != default_node() or not settings.db.exists():
        return settings

    async def main() -> list[str]:
        async with await Journal.open(settings.db, create=False) as journal:
            return await journal.registered_nodes()

    nodes = asyncio.run(main())
    return attrs.evolve(settings, node=nodes[0]) if len(nodes) == 1 else settings


def _with_journal(settings: Settings, work: Callable[[Journal], Awaitable[T]]) -> T:
    async def main() -> T:
        async with await Journal.open(
            settings.db, synchronous=settings.synchronous, create=False
        ) as journal:
            return await work(journal)

    return asyncio.run(main())


def _services(journal: Journal, settings: Settings, pve: PveClient | None = None) -> Services:
    return Services.offline(
        journal,
        node=settings.primary_node,
        pve=pve,
        node_min_age=settings.node_min_age,
        system_node=settings.system_node,
    )


def _record_dict(record: NodeRecord, settings: Settings) -> dict[str, Any]:
    return node_info(
        record,
        now=time.time(),
        system_node=settings.system_node,
        node_min_age=settings.node_min_age,
    )


def _print_record(record: NodeRecord, settings: Settings, title: str) -> None:
    shown = _record_dict(record, settings)
    print_table(title, ["FIELD", "VALUE"], ([k, v] for k, v in shown.items()))


def _report(change: NodeChange, settings: Settings, as_json: bool, **extra: Any) -> None:
    """Print the outcome; a refusal is one error line and exit code 1."""
    if change.refusal is not None:
        if as_json:
            print_json(
                {
                    "error": {
                        "code": change.refusal.code,
                        "message": change.refusal.reason,
                        "details": {"state": str(change.record.state), **extra},
                    }
                }
            )
        fail(f"{change.refusal.code}: {change.refusal.reason}", EXIT_FAILED)
    if as_json:
        print_json(
            {
                "node": _record_dict(change.record, settings),
                "previous": str(change.previous),
                "changed": change.changed,
                **extra,
            }
        )
        return
    record = change.record
    if change.changed:
        typer.echo(f"node {record.node}: {change.previous} → {record.state}")
    else:
        typer.echo(f"node {record.node}: already {record.state}, nothing changed")
    warning = extra.get("proxmox_warning")
    if warning:
        typer.echo(f"warning: {warning}; only the journal's managed guests were counted")


@node_app.command("status")
@handle_errors
@with_settings(Scope.JOURNAL, Scope.NODE)
def status(
    given: SettingsInput,
    as_json: JsonOpt = False,
) -> None:
    """Show the served node's lifecycle state."""
    settings = _served(given)

    async def work(journal: Journal) -> NodeRecord | None:
        return await _services(journal, settings).node_status()

    record = _with_journal(settings, work)
    if record is None:
        if as_json:
            print_json({"node": settings.primary_node, "state": None})
        else:
            typer.echo(
                f"node {settings.primary_node}: not registered yet (lifecycled never ran for it)"
            )
        return
    if as_json:
        print_json(_record_dict(record, settings))
    else:
        _print_record(record, settings, f"node {record.node}")


@node_app.command("drain")
@handle_errors
@with_settings(Scope.JOURNAL, Scope.NODE)
def drain(
    given: SettingsInput,
    reason: ReasonOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Drain the node: new start/create/clone and inbound migrate are refused (503)."""
    _change("drain", reason, as_json, given)


@node_app.command("undrain")
@handle_errors
@with_settings(Scope.JOURNAL, Scope.NODE)
def undrain(
    given: SettingsInput,
    reason: ReasonOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Undrain a draining node: it takes new guests again (→ active)."""
    _change("undrain", reason, as_json, given)


def _change(
    verb: str,
    reason: str | None,
    as_json: bool,
    given: SettingsInput,
) -> None:
    """Drain or undrain the served node (:class:`Services`) and report the change."""
    settings = _served(given)

    async def work(journal: Journal) -> NodeChange:
        services = _services(journal, settings)
        step = services.drain if verb == "drain" else services.undrain
        return await step(actor=ACTOR, reason=reason)

    _report(_with_journal(settings, work), settings, as_json)


def _pve_or_none(settings: Settings) -> PveClient | None:
    """A Proxmox client when Proxmox options were given, else ``None``."""
    from lifecycled.engine.runtime import build_pve_client
    from lifecycled.metrics import Metrics

    given = (
        settings.pve_token_file is not None
        or settings.pve_user is not None
        or settings.pve_backend == "proxmoxer-local"
    )
    return build_pve_client(settings, Metrics()) if given else None


@node_app.command("decommission")
@handle_errors
@with_settings(Scope.JOURNAL, Scope.NODE, Scope.NODE_LIFECYCLE, Scope.PROXMOX)
def decommission(
    given: SettingsInput,
    reason: ReasonOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Decommission a drained node (final). Refused for a system node, a node younger than
    --node-min-age, or while guests remain (journal's managed guests, and Proxmox's when the
    Proxmox options are given)."""
    settings = _served(given)

    async def work(journal: Journal) -> tuple[NodeChange, str | None]:
        pve = _pve_or_none(settings)
        try:
            return await _services(journal, settings, pve).decommission(actor=ACTOR, reason=reason)
        finally:
            if pve is not None:
                await pve.close()

    change, unread = _with_journal(settings, work)
    extra: dict[str, Any] = {"proxmox_checked": unread is None, "guests": list(change.guests)}
    if unread is not None:
        extra["proxmox_warning"] = unread
    _report(change, settings, as_json, **extra)
