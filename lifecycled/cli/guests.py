"""``lifecycled guests …``, ``audit list`` and ``reconcile --dry-run``.

``guests manage|adopt`` read Proxmox (they capture the guest's config, status and identity)
and so take the Proxmox options; every other guests/audit command works on the journal file
directly, so it works while the daemon is down. ``reconcile --dry-run`` reads Proxmox and the
journal and changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from lifecycled.cli._app import EXIT_USAGE, app, fail, handle_errors, print_json, print_table
from lifecycled.cli._journal import DEFAULT_DB, MAX_ID, DbOpt, VmidFilterOpt
from lifecycled.cli.options import ConfigOpt, SettingsInput, with_settings
from lifecycled.config import Scope, Settings, default_node
from lifecycled.domain.guests import (
    GuestOrigin,
    GuestRecord,
    ObservedState,
    guest_to_dict,
)
from lifecycled.domain.ownership import view_origin
from lifecycled.domain.serialize import parse_rfc3339, rfc3339
from lifecycled.engine.clock import SystemClock
from lifecycled.engine.services import Services
from lifecycled.engine.submit import VMID_MAX, VMID_MIN
from lifecycled.journal import Journal
from lifecycled.journal.guests import GuestPage, Ownership

T = TypeVar("T")

guests_app = typer.Typer(
    help="Guests lifecycled knows: list, show, manage, adopt, release, desired.",
    no_args_is_help=True,
)
audit_app = typer.Typer(help="The audit log of destructive decisions.", no_args_is_help=True)
app.add_typer(guests_app, name="guests")
app.add_typer(audit_app, name="audit")

#: Who the CLI's changes are recorded as (history reasons, audit).
ACTOR = "cli"

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
LimitOpt = Annotated[int, typer.Option("--limit", min=1, max=1000, help="Page size.")]
VmidArg = Annotated[int, typer.Argument(help="The guest's VMID.", min=VMID_MIN, max=VMID_MAX)]


def _with_journal(db: Path, work: Callable[[Journal], Awaitable[T]], *, create: bool = False) -> T:
    async def main() -> T:
        async with await Journal.open(db, create=create) as journal:
            return await work(journal)

    return asyncio.run(main())


def _services(journal: Journal, settings: Settings | None = None) -> Services:
    """The CLI's services: journal only, or (``settings``) with Proxmox and the guests'
    shared record — the same rules as the daemon: placement (wrong_node) and the tags."""
    from lifecycled.engine.cluster import Cluster
    from lifecycled.engine.guests import GuestService
    from lifecycled.engine.runtime import build_pve_client
    from lifecycled.metrics import Metrics

    if settings is None:
        return Services.offline(journal, node=default_node())
    pve = build_pve_client(settings, Metrics())
    clock = SystemClock()
    guests = GuestService(
        journal=journal,
        pve=pve,
        clock=clock,
        protected_vmids=settings.protected_vmids,
        cluster=Cluster(pve=pve, journal=journal, served=settings.nodes),
    )
    return Services(
        journal=journal, clock=clock, guests=guests, node=settings.primary_node, pve=pve
    )


def _state(guest: GuestRecord) -> str:
    observed = str(guest.observed_state or "-")
    return f"{observed} (drifted)" if guest.drifted else observed


def _print_guests(page: GuestPage, as_json: bool) -> None:
    if as_json:
        print_json([guest_to_dict(g) for g in page.items])
    else:
        print_table(
            "guests",
            ["VMID", "NODE", "KIND", "NAME", "ORIGIN", "DESIRED", "OBSERVED", "LOCK", "HA"],
            (
                [
                    g.vmid,
                    g.node,
                    g.kind,
                    g.name,
                    g.origin,
                    g.desired_state or "-",
                    _state(g),
                    g.lock or "",
                    "yes" if g.ha_managed else "",
                ]
                for g in page.items
            ),
        )
    if page.next_cursor is not None:
        typer.echo(f"more: --cursor {page.next_cursor}", err=as_json)


def _print_ownership(result: Ownership, verb: str, as_json: bool) -> None:
    if as_json:
        print_json({"guest": guest_to_dict(result.guest), "changed": result.changed})
        return
    g = result.guest
    what = verb if result.changed else f"already {g.origin}; nothing changed"
    typer.echo(f"guest {g.vmid} ({g.kind} on {g.node}): {what} — origin {g.origin}")


# -- guests ----------------------------------------------------------------------------------


@guests_app.command("list")
@handle_errors
@with_settings(Scope.PROXMOX)
def guests_list(
    given: SettingsInput,
    origin: Annotated[
        str | None, typer.Option("--origin", help="native, adopted, discovered or released.")
    ] = None,
    observed: Annotated[
        str | None,
        typer.Option(
            "--observed", help="running, stopped, paused, suspended, unknown, missing, LOST."
        ),
    ] = None,
    drifted: Annotated[
        bool | None,
        typer.Option("--drifted/--not-drifted", help="Only guests whose config drifted (or not)."),
    ] = None,
    node: Annotated[str | None, typer.Option("--node", help="Only guests on this node.")] = None,
    cluster: Annotated[
        bool,
        typer.Option(
            "--cluster",
            help="Every guest of the cluster, from the ownership records in the Proxmox tags "
            "(reads Proxmox; needs the --pve-* options or the config file).",
        ),
    ] = False,
    limit: LimitOpt = 100,
    cursor: Annotated[
        int | None,
        typer.Option("--cursor", min=1, max=VMID_MAX, help="Last vmid of the previous page."),
    ] = None,
    db: DbOpt = DEFAULT_DB,
    as_json: JsonOpt = False,
) -> None:
    """List the guests in the journal (managed, discovered, released), in vmid order;
    ``--cluster``: every guest of the cluster with its shared ownership record."""
    try:
        origin_v = GuestOrigin(origin) if origin is not None else None
        observed_v = ObservedState(observed) if observed is not None else None
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    if cluster:
        _print_cluster(given.load(), node, origin, as_json)
        return

    async def work(journal: Journal) -> GuestPage:
        return await journal.list_guests(
            origin=origin_v,
            observed=observed_v,
            drifted=drifted,
            node=node,
            limit=limit,
            cursor=cursor,
        )

    _print_guests(_with_journal(db, work, create=False), as_json)


def _print_cluster(settings: Settings, node: str | None, origin: str | None, as_json: bool) -> None:
    from lifecycled.engine.cluster import Cluster
    from lifecycled.engine.runtime import build_pve_client
    from lifecycled.metrics import Metrics

    async def main() -> list[dict[str, Any]]:
        pve = build_pve_client(settings, Metrics())
        try:
            return await Cluster(pve=pve, journal=None, served=settings.nodes).view(node=node)
        finally:
            await pve.close()

    items = asyncio.run(main())
    if origin is not None:
        items = [i for i in items if view_origin(i) == origin]
    if as_json:
        print_json(items)
        return
    print_table(
        "cluster guests",
        ["VMID", "NODE", "KIND", "NAME", "ORIGIN", "DESIRED", "GEN", "STATUS", "LOCK", "HERE"],
        (
            [
                i["vmid"],
                i["node"],
                i["kind"],
                i["name"],
                i["origin"] or "-",
                i["desired_state"] or "-",
                "" if i["generation"] is None else i["generation"],
                i["status"],
                i["lock"] or "",
                "yes" if i["served_here"] else "",
            ]
            for i in items
        ),
    )


@guests_app.command("show")
@handle_errors
def guests_show(
    vmid: VmidArg, db: DbOpt = DEFAULT_DB, config: ConfigOpt = None, as_json: JsonOpt = False
) -> None:
    """One guest with its identity, config snapshot and drift."""

    async def work(journal: Journal) -> GuestRecord:
        return await journal.get_guest(vmid)

    guest = _with_journal(db, work)
    shown = guest_to_dict(guest, detail=True)
    if as_json:
        print_json(shown)
        return
    snapshot = shown.pop("config_snapshot")
    for key in ("fingerprint", "resources"):
        shown[key] = json.dumps(shown[key], sort_keys=True)
    print_table(f"guest {vmid}", ["FIELD", "VALUE"], shown.items())
    if snapshot:
        print_table("config snapshot", ["KEY", "VALUE"], sorted(snapshot.items()))


def _take(vmid: int, origin: GuestOrigin, given: SettingsInput, as_json: bool) -> None:
    settings = given.load()

    async def main() -> Ownership:
        async with await Journal.open(settings.db, synchronous=settings.synchronous) as journal:
            services = _services(journal, settings)
            try:
                return await services.take(vmid, origin, actor=ACTOR)
            finally:
                assert services.pve is not None
                await services.pve.close()

    verb = "now managed (native)" if origin is GuestOrigin.NATIVE else "adopted"
    _print_ownership(asyncio.run(main()), verb, as_json)


@guests_app.command("manage")
@handle_errors
@with_settings(Scope.JOURNAL, Scope.NODE, Scope.PROXMOX)
def guests_manage(
    given: SettingsInput,
    vmid: VmidArg,
    as_json: JsonOpt = False,
) -> None:
    """Take a guest under full management (native: destroy included); reads Proxmox, writes the record to its tags; only for a guest on a node this lifecycled serves (--node)."""
    _take(vmid, GuestOrigin.NATIVE, given, as_json)


@guests_app.command("adopt")
@handle_errors
@with_settings(Scope.JOURNAL, Scope.NODE, Scope.PROXMOX)
def guests_adopt(
    given: SettingsInput,
    vmid: VmidArg,
    as_json: JsonOpt = False,
) -> None:
    """Adopt a pre-existing guest (managed; terminate only releases it); reads Proxmox, writes the record to its tags; only for a guest on a node this lifecycled serves (--node)."""
    _take(vmid, GuestOrigin.ADOPTED, given, as_json)


@guests_app.command("release")
@handle_errors
def guests_release(
    vmid: VmidArg, db: DbOpt = DEFAULT_DB, config: ConfigOpt = None, as_json: JsonOpt = False
) -> None:
    """Release a managed guest: kept as released, observed only, untouched in Proxmox."""

    async def work(journal: Journal) -> Ownership:
        return await _services(journal).release(vmid, actor=ACTOR)

    _print_ownership(_with_journal(db, work), "released", as_json)


@guests_app.command("desired")
@handle_errors
def guests_desired(
    vmid: VmidArg,
    state: Annotated[str, typer.Argument(help="running or stopped.")],
    db: DbOpt = DEFAULT_DB,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set a managed guest's desired power state; reconcile then holds it."""

    async def work(journal: Journal) -> GuestRecord:
        return await _services(journal).set_desired(vmid, state, actor=ACTOR)

    guest = _with_journal(db, work)
    if as_json:
        print_json(guest_to_dict(guest))
    else:
        typer.echo(
            f"guest {vmid}: desired {guest.desired_state} "
            f"(generation {guest.desired_generation}); observed {guest.observed_state or '-'}"
        )


# -- audit -----------------------------------------------------------------------------------


def _time(text: str | None, option: str) -> float | None:
    if text is None:
        return None
    try:
        return parse_rfc3339(text)
    except ValueError:
        fail(f"{option}: expected an RFC 3339 timestamp such as 2026-01-31T12:00:00Z", EXIT_USAGE)


@audit_app.command("list")
@handle_errors
def audit_list(
    vmid: VmidFilterOpt = None,
    action: Annotated[str | None, typer.Option("--action", help="Only this action.")] = None,
    decision: Annotated[
        str | None,
        typer.Option("--decision", help="allowed, refused, soft_deleted, lost, found, …"),
    ] = None,
    since: Annotated[str | None, typer.Option("--since", help="At or after (RFC 3339).")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Before (RFC 3339).")] = None,
    limit: LimitOpt = 50,
    cursor: Annotated[
        int | None, typer.Option("--cursor", min=1, max=MAX_ID, help="Next page.")
    ] = None,
    db: DbOpt = DEFAULT_DB,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The audit log, newest first."""
    start, end = _time(since, "--since"), _time(until, "--until")

    async def work(journal: Journal) -> Any:
        return await journal.list_audit(
            vmid=vmid,
            action=action,
            decision=decision,
            since=start,
            until=end,
            limit=limit,
            cursor=cursor,
        )

    page = _with_journal(db, work, create=False)
    if as_json:
        print_json([r.to_dict() for r in page.items])
    else:
        print_table(
            "audit",
            ["ID", "AT", "ACTOR", "ACTION", "DECISION", "VMID", "REASON"],
            (
                [r.id, rfc3339(r.at), r.actor, r.action, r.decision, r.vmid, r.reason]
                for r in page.items
            ),
        )
    if page.next_cursor is not None:
        typer.echo(f"more: --cursor {page.next_cursor}", err=as_json)


@audit_app.command("prune")
@handle_errors
def audit_prune(
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than", help="Delete records older than this (at least 1d), e.g. 90d."
        ),
    ] = "90d",
    db: DbOpt = DEFAULT_DB,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete audit records older than --older-than; the prune is itself audited."""
    from lifecycled.audit import AuditRecord, prune_cutoff
    from lifecycled.cli._journal import duration_option

    retention = duration_option(older_than, "--older-than")
    try:
        prune_cutoff(time.time(), retention)  # a usage error, before the journal is opened
    except ValueError as exc:
        fail(f"--older-than: {exc}", EXIT_USAGE)

    async def work(journal: Journal) -> tuple[AuditRecord, float]:
        return await _services(journal).prune_audit(older_than=retention, actor=ACTOR)

    record, before = _with_journal(db, work, create=False)
    assert record.snapshot is not None
    pruned = record.snapshot["pruned"]
    if as_json:
        print_json({"pruned": pruned, "before": rfc3339(before), "audit_id": record.id})
    else:
        typer.echo(f"pruned {pruned} audit records older than {rfc3339(before)}")


# -- reconcile ---------------------------------------------------------------------------------


@app.command()
@handle_errors
@with_settings(Scope.JOURNAL, Scope.NODE, Scope.PROXMOX)
def reconcile(
    given: SettingsInput,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan; change nothing.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show what the next reconcile pass would do (reads Proxmox and the journal only)."""
    if not dry_run:
        fail("only --dry-run is supported here: the daemon reconciles by itself", EXIT_USAGE)
    settings = given.load()
    report = asyncio.run(_reconcile_plan(settings))
    if report["outcome"] != "ok":
        fail(f"reconcile plan failed: {report['error']}")
    if as_json:
        print_json(report)
        return
    typer.echo(f"reconcile plan for node {settings.primary_node} (dry run: nothing was changed)")
    print_table(
        "would enqueue",
        ["VMID", "ACTION", "KEY", "WHY"],
        ([c["vmid"], c["action"], c["idempotency_key"], c["reason"]] for c in report["enqueued"]),
    )
    print_table(
        "would skip", ["VMID", "WHY"], ([s["vmid"], s["reason"]] for s in report["skipped"])
    )
    for label in ("cancelled", "lost", "found", "missing", "discovered", "managed", "drifted"):
        if report[label]:
            typer.echo(f"{label}: {', '.join(str(v) for v in report[label])}")


async def _reconcile_plan(settings: Settings) -> dict[str, Any]:
    from lifecycled.engine.runtime import Runtime

    runtime = await Runtime.build(settings)
    try:
        report = await runtime.reconciler.pass_once(dry_run=True)
        return report.to_dict()
    finally:
        await runtime.close()
