"""Retry backoff: ``min(max_backoff, retry_backoff × 2^(attempt-1))`` with full jitter (SPEC §2)."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lifecycled.domain.backoff import backoff_ceiling, backoff_delay

# Attempts: small ones where the exponent matters, and huge ones that must not overflow.
attempts = st.integers(min_value=1, max_value=200) | st.integers(min_value=1, max_value=2**80)
# Wide ranges on purpose: a tiny base under a huge cap needs more than 62 doublings.
bases = st.floats(min_value=1e-12, max_value=1e6, allow_nan=False, allow_infinity=False)
maxima = st.floats(min_value=1e-12, max_value=1e12, allow_nan=False, allow_infinity=False)
rands = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


def _spec_ceiling(attempt: int, base: float, maximum: float) -> Fraction:
    """The SPEC formula in exact arithmetic (2^2000 × 1e-12 exceeds every float maximum)."""
    if attempt - 1 > 2000:
        return Fraction(maximum)
    return min(Fraction(maximum), Fraction(base) * (1 << (attempt - 1)))


@settings(max_examples=300, database=None)
@given(attempt=attempts, base=bases, maximum=maxima, r=rands)
def test_delay_is_within_zero_and_ceiling(
    attempt: int, base: float, maximum: float, r: float
) -> None:
    """Full jitter: ``0 <= delay <= min(maximum, base·2^(attempt-1))`` for any attempt ≥ 1."""
    delay = backoff_delay(attempt, base=base, maximum=maximum, rand=lambda: r)
    assert 0 <= Fraction(delay) <= _spec_ceiling(attempt, base, maximum)


@settings(max_examples=300, database=None)
@given(attempt=attempts, base=bases, maximum=maxima)
def test_ceiling_is_the_spec_formula(attempt: int, base: float, maximum: float) -> None:
    """The ceiling equals ``min(maximum, base·2^(attempt-1))`` exactly, even for huge attempts."""
    assert backoff_ceiling(attempt, base=base, maximum=maximum) == float(
        _spec_ceiling(attempt, base, maximum)
    )


@settings(max_examples=300, database=None)
@given(attempt=attempts, base=bases, maximum=maxima)
def test_ceiling_is_monotonic_in_attempt(attempt: int, base: float, maximum: float) -> None:
    """A later retry never waits less at worst than an earlier one."""
    here = backoff_ceiling(attempt, base=base, maximum=maximum)
    assert here <= backoff_ceiling(attempt + 1, base=base, maximum=maximum)
    assert here <= maximum


@pytest.mark.parametrize(
    ("attempt", "r", "expected"),
    [
        pytest.param(1, 0.5, 5.0, id="first-retry-half"),
        pytest.param(2, 0.5, 10.0, id="second-retry-half"),
        pytest.param(3, 0.5, 20.0, id="third-retry-half"),
        pytest.param(5, 0.5, 80.0, id="fifth-retry-half"),
        pytest.param(6, 0.5, 150.0, id="capped-at-max-backoff"),
        pytest.param(10**9, 0.5, 150.0, id="huge-attempt-capped"),
        pytest.param(1, 0.0, 0.0, id="zero-jitter"),
        pytest.param(3, 0.25, 10.0, id="quarter"),
    ],
)
def test_injected_rand_gives_exact_delay(attempt: int, r: float, expected: float) -> None:
    """With the SPEC defaults (10 s base, 5 min cap) an injected ``rand`` fixes the delay."""
    assert backoff_delay(attempt, base=10.0, maximum=300.0, rand=lambda: r) == expected


def test_tiny_base_reaches_a_huge_cap() -> None:
    """No hidden exponent limit: 1e-10 s doubled 69 times exceeds a 1e10 s cap, so it is the cap."""
    assert backoff_ceiling(70, base=1e-10, maximum=1e10) == 1e10


def test_default_rand_stays_within_bounds() -> None:
    """Without an injected ``rand`` the delay is still within ``[0, ceiling]``."""
    for attempt in (1, 4, 50):
        ceiling = backoff_ceiling(attempt, base=10.0, maximum=300.0)
        assert 0.0 <= backoff_delay(attempt, base=10.0, maximum=300.0) <= ceiling


def test_ceiling_is_a_float_even_for_integer_inputs() -> None:
    """Integer settings still yield float delays (the journal stores seconds as REAL)."""
    assert isinstance(backoff_ceiling(1, base=10, maximum=300), float)
    assert isinstance(backoff_ceiling(99, base=10, maximum=300), float)


@pytest.mark.parametrize(
    ("attempt", "base", "maximum"),
    [
        pytest.param(0, 10.0, 300.0, id="attempt-zero"),
        pytest.param(-1, 10.0, 300.0, id="attempt-negative"),
        pytest.param(1, 0.0, 300.0, id="base-zero"),
        pytest.param(1, -1.0, 300.0, id="base-negative"),
        pytest.param(1, float("nan"), 300.0, id="base-nan"),
        pytest.param(1, float("inf"), 300.0, id="base-inf"),
        pytest.param(1, 10.0, 0.0, id="maximum-zero"),
        pytest.param(1, 10.0, -5.0, id="maximum-negative"),
        pytest.param(1, 10.0, float("nan"), id="maximum-nan"),
        pytest.param(1, 10.0, float("inf"), id="maximum-inf"),
    ],
)
def test_invalid_settings_raise(attempt: int, base: float, maximum: float) -> None:
    """Nonsense inputs raise ``ValueError`` instead of producing a nonsense delay."""
    with pytest.raises(ValueError):
        backoff_ceiling(attempt, base=base, maximum=maximum)
    with pytest.raises(ValueError):
        backoff_delay(attempt, base=base, maximum=maximum, rand=lambda: 0.5)


@pytest.mark.parametrize(
    "r",
    [
        pytest.param(-0.1, id="negative"),
        pytest.param(1.5, id="above-one"),
        pytest.param(float("nan"), id="nan"),
    ],
)
def test_rand_outside_unit_interval_raises(r: float) -> None:
    """A broken ``rand`` is refused rather than yielding a negative or NaN delay."""
    with pytest.raises(ValueError):
        backoff_delay(1, base=10.0, maximum=300.0, rand=lambda: r)
