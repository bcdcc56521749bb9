"""Compare two benchmark results: ``bench/compare.py A.json B.json`` (``make bench-compare
A=… B=…``) prints each figure's change from A to B and flags every figure more than 10 %
worse (exit status 1 if any is).

A rate with an anchor is compared by its ratio to the anchor (both measured in the same run;
absolute figures drift between runs on a shared machine, ratios less), any other figure by
its median (``"compare"`` in the JSON says which). "Worse" knows the direction: a lower rate
is worse, a higher time, request count, CPU or memory figure is worse; a change within the
figure's ``tolerance`` (its measurement's resolution) never is, nor is a change of a
``reference`` figure (a peer, raw sqlite3, the poller baseline, the simulator: not
lifecycled's, shown for the anchors' sake). Pure functions over the JSON
``bench/run.py`` writes; standard library only.
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
    #: Medians, shown beside a ratio comparison.
    value_before: float = 0.0
    value_after: float = 0.0
    #: A change up to this much (absolute, on the compared basis) is never worse.
    tolerance: float = 0.0
    #: Not lifecycled's figure: shown, never flagged.
    reference: bool = False

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
        if self.reference or abs(self.after - self.before) <= self.tolerance:
            return False
        w = self.worsening
        if w is None:  # from 0: worse only if a lower-is-better figure grew
            return not self.higher_is_better and self.after > self.before
        return w > threshold


def compared(fig: FigureDoc) -> tuple[str, float]:
    """What a figure is compared by: its ratio to its anchor or its median, as its
    ``"compare"`` says (without one: the ratio whenever it has an anchor)."""
    ratio = fig.get("ratio")
    basis = fig.get("compare") or ("ratio" if fig.get("anchor") is not None else "value")
    if basis == "ratio" and ratio is not None:
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
                value_before=float(old[key]["median"]),
                value_after=float(fig["median"]),
                tolerance=float(fig.get("tolerance") or 0.0) if basis_a == "value" else 0.0,
                reference=bool(fig.get("reference")),
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
    """One line per figure: before → after, the change, and ``WORSE`` past the threshold;
    a ratio comparison also shows the medians' change."""
    lines = []
    for c in changes:
        unit = "×" if c.basis == "ratio" else " "
        flag = f"  WORSE (> {threshold:.0%})" if c.worse(threshold) else ""
        direction = "reference" if c.reference else "higher" if c.higher_is_better else "lower"
        values = ""
        if c.basis == "ratio" and c.value_before:
            change = (c.value_after - c.value_before) / abs(c.value_before)
            values = f"  [value {c.value_before:,.0f} → {c.value_after:,.0f}, {_pct(change)}]"
        lines.append(
            f"{c.name[:58]:<58} {c.before:>10,.2f}{unit} → {c.after:>10,.2f}{unit}"
            f" {_pct(c.relative):>9}  ({direction}{'' if c.reference else ' is better'})"
            f"{flag}{values}"
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
    ours = [c for c in changes if not c.reference]
    print(f"\n{len(worse)} of {len(ours)} lifecycled figures more than {THRESHOLD:.0%} worse")
    return 1 if worse else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
