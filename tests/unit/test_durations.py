"""Parsing durations like 10s, 5m, 1h30m and 30d."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lifecycled.domain.durations import UNITS, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10s", 10.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("30d", 2_592_000.0),
        ("1w", 604_800.0),
        ("250ms", 0.25),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("90", 90.0),
        ("2.5", 2.5),
        (" 10S ", 10.0),
        ("0s", 0.0),
    ],
)
def test_accepted_forms(text: str, seconds: float) -> None:
    """Numbers with units, compound forms and bare seconds parse to seconds."""
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", " ", "x", "5 m", "1h 30m", "10y", "ms", "s10", "1..2s", "-5s"]
)
def test_rejected_forms_say_what_is_accepted(text: str) -> None:
    """Malformed durations raise ValueError quoting the text and the accepted forms."""
    with pytest.raises(ValueError, match="invalid duration") as info:
        parse_duration(text)
    assert repr(text) in str(info.value)


def test_negative_durations_are_refused_clearly() -> None:
    """A negative duration says so."""
    with pytest.raises(ValueError, match="cannot be negative"):
        parse_duration("-5m")


def test_huge_values_are_refused() -> None:
    """A duration that overflows a float is an error, not infinity."""
    with pytest.raises(ValueError, match="too large"):
        parse_duration("9" * 400 + "d")


@given(st.integers(min_value=0, max_value=10**9), st.sampled_from(sorted(UNITS)))
def test_number_and_unit(n: int, unit: str) -> None:
    """N<unit> is N times the unit's seconds."""
    assert parse_duration(f"{n}{unit}") == pytest.approx(n * UNITS[unit])


@given(st.integers(min_value=0, max_value=10**8))
def test_format_round_trips(seconds: int) -> None:
    """format_duration's output parses back to the same number of seconds."""
    assert parse_duration(format_duration(seconds)) == seconds
