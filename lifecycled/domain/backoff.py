"""Retry delays: ``min(max_backoff, base × 2^(attempt-1))`` with full jitter."""

from __future__ import annotations

import math
import random
from collections.abc import Callable


def backoff_ceiling(attempt: int, *, base: float, maximum: float) -> float:
    """The upper bound of the delay before retry number ``attempt`` (1-based)."""
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    if not (math.isfinite(base) and base > 0 and math.isfinite(maximum) and maximum > 0):
        raise ValueError("base and maximum must be positive finite numbers")
    try:
        # ldexp is exact (base × 2^n) and raises instead of overflowing for huge attempts.
        raw = math.ldexp(base, attempt - 1)
    except OverflowError:
        return float(maximum)
    return float(min(maximum, raw))


def backoff_delay(
    attempt: int,
    *,
    base: float,
    maximum: float,
    rand: Callable[[], float] = random.random,
) -> float:
    """A full-jitter delay in ``[0, ceiling]``; ``rand`` returns a float in ``[0, 1)``."""
    ceiling = backoff_ceiling(attempt, base=base, maximum=maximum)
    r = rand()
    if not 0.0 <= r <= 1.0:  # also refuses NaN, which would make the delay NaN
        raise ValueError(f"rand() must return a number in [0, 1), got {r!r}")
    return ceiling * r
