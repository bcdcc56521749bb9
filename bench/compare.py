"""Compare two benchmark results: ``bench/compare.py A.json B.json`` (``make bench-compare
A=… B=…``) prints each figure's change from A to B and flags every figure more than 10 %
worse (exit status 1 if any is).

A figure with an anchor is compared by its ratio to the anchor (both measured in the same
run; absolute figures drift ~25 % between runs on this machine, ratios much less), any other
by its median. "Worse" knows the direction: a lower rate is worse, a higher time, request
count, CPU or memory figure is worse. Pure functions over the JSON ``bench/run.py`` writes;
standard library only.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: A figure more than this much worse than before is flagged (issue 12: "no figure more than
#: 10 % worse").
THRESHOLD = 0.10

Results = Mapping[str, Any]
FigureDoc = Mapping[str, Any]


@dataclass(frozen=True)
class Change:
    key: str
    name: str
    #: "ratio" (to the figure's anchor, in its own run) or "value" (the median).
    basis: str
    before: float
    after: float
    higher_is_better: bool

    @property
    def relative(self) -> float | None:
        """(after − before) / before; None when before is 0."""
        if self.before == 0:
            return None
        return (self.after - self.before) / abs(self.before)

    @property
    def worsening(self) -> float | None:
        """How much worse, as a fraction (negative: better); None when before is 0."""
        rel = self.relative
        if rel is None:
            return None
        return -rel if self.higher_is_better else rel

    def worse(self, threshold: float = THRESHOLD) -> bool:
        w = self.worsening
        if w is None:  # from 0: worse only if a lower-is-better figure grew
            return not self.higher_is_better and self.after > self.before
        return w > threshold


def compared(fig: FigureDoc) -> tuple[str, float]:
    """What a figure is compared by: its ratio to its anchor if it has one, else its median."""
    ratio = fig.get("ratio")
    if fig.get("anchor") is not None and ratio is not None:
        return "ratio", float(ratio)
    return "value", float(fig["median"])


def _by_key(results: Results) -> dict[str, FigureDoc]:
    return {str(f["key"]): f for f in results["figures"]}


def compare(before: Results, after: Results) -> list[Change]:
    """The change of every figure present in both results (in ``after``'s order), compared
    on the same basis: a ratio only when both runs have it."""
    old = _by_key(before)
    changes = []
    for key, fig in _by_key(after).items():
        if key not in old:
            continue
        basis_a, value_a = compared(fig)
        basis_b, value_b = compared(old[key])
        if basis_a != basis_b:
            basis_a, value_a = "value", float(fig["median"])
            value_b = float(old[key]["median"])
        changes.append(
            Change(
                key=key,
                name=str(fig["name"]),
                basis=basis_a,
                before=value_b,
                after=value_a,
                higher_is_better=bool(fig["higher_is_better"]),
            )
        )
    return changes


def missing(before: Results, after: Results) -> tuple[list[str], list[str]]:
    """Keys only in ``before`` (dropped) and only in ``after`` (new)."""
    old, new = _by_key(before), _by_key(after)
    return [k for k in old if k not in new], [k for k in new if k not in old]


def target_value(fig: FigureDoc) -> float | None:
    """The figure a target is about: the ratio for a ratio goal, else the median."""
    goal = fig.get("goal")
    if goal is not None and goal[1] == "ratio":
        ratio = fig.get("ratio")
        return None if ratio is None else float(ratio)
    return float(fig["median"])


def goal_met(fig: FigureDoc) -> bool | None:
    """Whether the figure meets its goal (None: no goal, or no value to judge)."""
    goal = fig.get("goal")
    value = target_value(fig)
    if goal is None or value is None:
        return None
    target, kind = float(goal[0]), str(goal[1])
    if kind == "max":
        return value <= target
    return value >= target  # "ratio" and "min"


def goal_text(fig: FigureDoc) -> str:
    goal = fig.get("goal")
    if goal is None:
        return ""
    target, kind = float(goal[0]), str(goal[1])
    if kind == "ratio":
        return f"≥ {target:g}×"
    sign = "≤" if kind == "max" else "≥"
    return f"{sign} {target:g} {fig['unit']}"


def shown(fig: FigureDoc | None) -> str:
    """A target figure as the targets table shows it (ratio ``0.35×`` or ``6.00 req/op``)."""
    if fig is None:
        return "—"
    value = target_value(fig)
    if value is None:
        return "—"
    goal = fig.get("goal")
    if goal is not None and goal[1] == "ratio":
        return f"{value:.2f}×"
    return f"{value:,.2f} {fig['unit']}"


@dataclass(frozen=True)
class TargetRow:
    target: str
    before: str
    now: str
    goal: str
    met: bool | None


def targets(now: Results, before: Results | None) -> list[TargetRow]:
    """Issue 15's targets table: every figure of ``now`` that answers a target row."""
    old = _by_key(before) if before is not None else {}
    return [
        TargetRow(
            target=str(fig["target"]),
            before=shown(old.get(str(fig["key"]))),
            now=shown(fig),
            goal=goal_text(fig),
            met=goal_met(fig),
        )
        for fig in now["figures"]
        if fig.get("target")
    ]


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:+.1f} %"


def render(changes: Sequence[Change], threshold: float = THRESHOLD) -> str:
    """One line per figure: before → after, the change, and ``WORSE`` past the threshold."""
    lines = []
    for c in changes:
        unit = "×" if c.basis == "ratio" else ""
        flag = f"  WORSE (> {threshold:.0%})" if c.worse(threshold) else ""
        direction = "higher" if c.higher_is_better else "lower"
        lines.append(
            f"{c.name[:60]:<60} {c.before:>10,.2f}{unit} → {c.after:>10,.2f}{unit}"
            f"  {_pct(c.relative):>9}  ({direction} is better){flag}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m bench.compare BEFORE.json AFTER.json", file=sys.stderr)
        return 2
    try:
        before, after = (json.loads(Path(p).read_text()) for p in argv)
    except (OSError, ValueError) as exc:
        print(f"cannot read the results: {exc}", file=sys.stderr)
        return 2
    changes = compare(before, after)
    print(f"{argv[0]} → {argv[1]}")
    print(render(changes))
    dropped, new = missing(before, after)
    if dropped:
        print(f"only in {argv[0]}: {', '.join(dropped)}")
    if new:
        print(f"only in {argv[1]}: {', '.join(new)}")
    worse = [c for c in changes if c.worse()]
    print(f"\n{len(worse)} of {len(changes)} figures more than {THRESHOLD:.0%} worse")
    return 1 if worse else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
