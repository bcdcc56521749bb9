"""bench/compare.py: which figures count as more than 10 % worse, and issue 15's targets rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.compare import compare, main, missing, targets


def _fig(
    key: str,
    median: float,
    *,
    unit: str = "/s",
    higher: bool = True,
    anchor: str | None = None,
    ratio: float | None = None,
    goal: list[Any] | None = None,
    target: str | None = None,
    compare: str | None = None,
    tolerance: float = 0.0,
    reference: bool = False,
) -> dict[str, Any]:
    return {
        "compare": compare,
        "tolerance": tolerance,
        "reference": reference,
        "key": key,
        "name": key,
        "unit": unit,
        "median": median,
        "higher_is_better": higher,
        "anchor": anchor,
        "ratio": ratio,
        "goal": goal,
        "target": target,
    }


def _results(*figures: dict[str, Any]) -> dict[str, Any]:
    return {"figures": list(figures)}


def _worse(before: dict[str, Any], after: dict[str, Any]) -> dict[str, bool]:
    return {c.key: c.worse() for c in compare(_results(before), _results(after))}


def test_a_rate_more_than_ten_percent_lower_is_worse() -> None:
    """A higher-is-better figure 11 % down is flagged; 9 % down is not."""
    assert _worse(_fig("rate", 1000), _fig("rate", 890)) == {"rate": True}
    assert _worse(_fig("rate", 1000), _fig("rate", 910)) == {"rate": False}


def test_a_cost_more_than_ten_percent_higher_is_worse() -> None:
    """A lower-is-better figure (requests per op) 11 % up is flagged; going down never is."""
    before = _fig("req", 5.0, unit="req/op", higher=False)
    assert _worse(before, _fig("req", 5.55, unit="req/op", higher=False)) == {"req": True}
    assert _worse(before, _fig("req", 5.45, unit="req/op", higher=False)) == {"req": False}
    assert _worse(before, _fig("req", 1.0, unit="req/op", higher=False)) == {"req": False}


def test_a_rate_going_up_is_never_worse() -> None:
    """Direction matters: a rate that doubled is an improvement, not a +100 % change to flag."""
    (change,) = compare(_results(_fig("rate", 100)), _results(_fig("rate", 200)))
    assert change.relative == pytest.approx(1.0)
    assert not change.worse()


def test_anchored_figures_compare_by_their_ratio() -> None:
    """A slower machine (value −30 %, same ratio to the anchor) is not a regression; a ratio
    down 20 % is, even though the value went up."""
    before = _fig("http", 1000, anchor="pq", ratio=0.40)
    slower_machine = _fig("http", 700, anchor="pq", ratio=0.40)
    worse_ratio = _fig("http", 1100, anchor="pq", ratio=0.32)
    assert _worse(before, slower_machine) == {"http": False}
    assert _worse(before, worse_ratio) == {"http": True}
    (change,) = compare(_results(before), _results(worse_ratio))
    assert (change.basis, change.before, change.after) == ("ratio", 0.40, 0.32)


def test_counts_with_an_anchor_compare_by_value_when_the_results_say_so() -> None:
    """Requests per op are compared by value: the poller anchor's own noise (3.65 → 3.00)
    does not turn an unchanged count into a regression."""
    before = _fig("req", 5.83, unit="req/op", higher=False, anchor="poller", ratio=5.83 / 3.65)
    same = _fig("req", 5.80, unit="req/op", higher=False, anchor="poller", ratio=5.80 / 3.00)
    assert _worse(before, same) == {"req": True}  # an old file: by ratio, +21 %
    as_values = {**same, "compare": "value"}
    assert _worse(before, as_values) == {"req": False}  # bases differ: both by value


def test_changes_within_the_tolerance_are_never_worse() -> None:
    """Idle CPU 0.13 % → 0.17 % (+31 %, one clock tick) is within its 0.1 tolerance; 0.30 % is not."""
    before = _fig("idle", 0.13, unit="%", higher=False, tolerance=0.1)
    assert _worse(before, _fig("idle", 0.17, unit="%", higher=False, tolerance=0.1)) == {
        "idle": False
    }
    assert _worse(before, _fig("idle", 0.30, unit="%", higher=False, tolerance=0.1)) == {
        "idle": True
    }


def test_reference_figures_are_shown_but_never_flagged() -> None:
    """A peer's rate (persist-queue, fsync-bound) down 65 % is not lifecycled's regression."""
    before = _fig("pq", 5300, reference=True)
    (change,) = compare(_results(before), _results(_fig("pq", 1860, reference=True)))
    assert change.relative == pytest.approx(1860 / 5300 - 1)
    assert not change.worse()


def test_a_ratio_missing_on_one_side_falls_back_to_the_value() -> None:
    """Figures are compared on one basis: the medians when only one run has the ratio."""
    (change,) = compare(
        _results(_fig("x", 100, anchor="a", ratio=None)),
        _results(_fig("x", 80, anchor="a", ratio=0.9)),
    )
    assert (change.basis, change.before, change.after, change.worse()) == ("value", 100, 80, True)


def test_from_zero_a_cost_that_appears_is_worse() -> None:
    """A lower-is-better figure that was 0 and is not any more is flagged (no division by 0)."""
    before = _fig("cpu", 0.0, unit="%", higher=False)
    assert _worse(before, _fig("cpu", 0.5, unit="%", higher=False)) == {"cpu": True}
    assert _worse(before, _fig("cpu", 0.0, unit="%", higher=False)) == {"cpu": False}


def test_figures_only_on_one_side_are_listed_not_compared() -> None:
    """A figure dropped or added between the runs is named, never compared."""
    before, after = (
        _results(_fig("old", 1), _fig("both", 1)),
        _results(_fig("both", 1), _fig("new", 1)),
    )
    assert [c.key for c in compare(before, after)] == ["both"]
    assert missing(before, after) == (["old"], ["new"])


def test_targets_rows_show_before_now_and_whether_met() -> None:
    """Targets rows: a ratio goal shows the ratio, a max goal the value with its unit."""
    now = _results(
        _fig("j", 5000, anchor="raw", ratio=0.55, goal=[0.5, "ratio"], target="journal"),
        _fig("r", 6.0, unit="req/op", higher=False, goal=[3.0, "max"], target="requests"),
        _fig("plain", 1.0),
    )
    before = _results(_fig("j", 5000, anchor="raw", ratio=0.35, goal=[0.5, "ratio"]))
    rows = targets(now, before)
    assert [(r.target, r.before, r.now, r.goal, r.met) for r in rows] == [
        ("journal", "0.35×", "0.55×", "≥ 0.5×", True),
        ("requests", "—", "6.00 req/op", "≤ 3 req/op", False),
    ]


def test_main_fails_when_a_figure_is_worse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command exits 1 and prints WORSE when a figure is more than 10 % worse, else 0."""
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(json.dumps(_results(_fig("rate", 1000))))
    b.write_text(json.dumps(_results(_fig("rate", 800))))
    c.write_text(json.dumps(_results(_fig("rate", 990))))
    assert main([str(a), str(b)]) == 1
    assert "WORSE" in capsys.readouterr().out
    assert main([str(a), str(c)]) == 0
    assert main([str(a), str(tmp_path / "absent.json")]) == 2
