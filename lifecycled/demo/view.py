"""How the demo shows itself: one live table of ops and a final summary (rich)."""

from __future__ import annotations

from collections.abc import Sequence

import attrs
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from lifecycled.domain.op import Op

STATE_STYLE = {
    "pending": "white",
    "dispatching": "yellow",
    "running": "cyan",
    "succeeded": "green",
    "failed": "red",
    "dead_lettered": "magenta",
    "cancelled": "dim",
}


@attrs.frozen(kw_only=True)
class Planned:
    """One op of the demo batch and what it shows."""

    label: str
    body: dict[str, object]
    expect: str
    note: str


def _short_upid(op: Op) -> str:
    if op.upid is not None:
        return f"{op.upid.type}@{op.upid.node}"
    return op.upid_text[:24] if op.upid_text else "-"


def ops_table(
    title: str, planned: Sequence[Planned], ops: dict[str, Op], tasks: dict[int, int]
) -> Table:
    """The live table: one row per planned op, keyed by idempotency key."""
    table = Table(title=title, title_justify="left", expand=False, header_style="bold")
    for col in ("op", "what", "guest", "state", "tries", "tasks", "task", "detail"):
        table.add_column(col, no_wrap=col not in ("detail",))
    for p in planned:
        op = ops.get(str(p.body["idempotency_key"]))
        if op is None:
            table.add_row(
                "-", p.label, str(p.body["vmid"]), Text("not yet", "dim"), "", "", "", p.note
            )
            continue
        state = str(op.state)
        detail = p.note
        if op.error is not None and op.state.is_terminal:
            detail = f"{op.error.error_class}: {op.error.message}"[:70]
        elif op.exitstatus and op.exitstatus != "OK":
            detail = f"exit {op.exitstatus}"
        table.add_row(
            str(op.id),
            p.label,
            f"{op.guest.kind}/{op.guest.vmid}@{op.guest.node}",
            Text(state, STATE_STYLE.get(state, "white")),
            str(op.attempts),
            str(tasks.get(op.id, 0)),
            _short_upid(op),
            detail,
        )
    return table


def screen(phase: str, events: Sequence[str], table: Table) -> Group:
    """Phase banner, the recent events, and the table."""
    log = Text("\n".join(events[-6:]) or " ", style="dim")
    return Group(Panel(Text(phase, style="bold"), expand=False), log, table)


def summary_table(rows: Sequence[tuple[str, str, bool]]) -> Table:
    """The checks at the end: what was verified and whether it held."""
    table = Table(title="What the demo verified", title_justify="left", header_style="bold")
    table.add_column("check")
    table.add_column("observed")
    table.add_column("ok")
    for check, observed, ok in rows:
        table.add_row(check, observed, Text("yes", "green") if ok else Text("NO", "bold red"))
    return table
