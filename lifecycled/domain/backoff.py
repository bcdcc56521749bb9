"""Retry delays: ``min(max_backoff, base × 2^(attempt-1))`` with full jitter."""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_ceiling(attempt: int, *, base: float, maximum: float) -> float:
    """The upper bound of the delay before retry number ``attempt`` (1-based)."""
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    if base <= 0 or maximum <= 0:
        raise ValueError("base and maximum must be positive")
    # Cap the exponent so huge attempt counts cannot overflow a float.
    exp = min(attempt - 1, 62)
    return min(maximum, base * (2.0**exp))


def backoff_delay(
    attempt: int,
    *,
    base: float,
    maximum: float,
    rand: Callable[[], float] = random.random,
) -> float:
    """A full-jitter delay in ``[0, ceiling]``; ``rand`` returns a float in ``[0, 1)``."""
    ceiling = backoff_ceiling(attempt, base=base, maximum=maximum)
    return ceiling * min(max(rand(), 0.0), 1.0)
