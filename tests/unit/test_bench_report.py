"""bench/report.py: issue 15's targets table as the terminal shows it."""

from __future__ import annotations

from bench.common import Figure
from bench.report import figure_docs, render_targets


def _figures(p95: float) -> list[Figure]:
    return [
        Figure(
            key="s6.latency_p95",
            section="6",
            name="p95",
            unit="s",
            runs=(p95,),
            goal=(2.0, "max"),
            target="p95 task end → terminal",
        )
    ]


def test_targets_show_before_now_and_warn_when_sizes_differ() -> None:
    """A quick run against a full baseline says the sizes differ; same sizes say nothing."""
    before = {"quick": False, "figures": figure_docs(_figures(8.91))}
    quick = render_targets(_figures(1.5), before, before_label="base", quick=True)
    row = next(line for line in quick.splitlines() if "p95 task end" in line)
    assert row.split() == [
        "p95",
        "task",
        "end",
        "→",
        "terminal",
        "8.91",
        "s",
        "1.50",
        "s",
        "≤",
        "2",
        "s",
        "met",
    ]
    assert "sizes differ" in quick
    assert "sizes differ" not in render_targets(
        _figures(1.5), before, before_label="b", quick=False
    )
