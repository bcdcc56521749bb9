"""Durations as operators write them: ``10s``, ``5m``, ``1h30m``, ``30d``, ``250ms``.

Pure: used by the configuration loader and the admin CLI (``prune --older-than 30d``).
"""

from __future__ import annotations

import math
import re

#: Seconds per unit.
UNITS: dict[str, float] = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}

_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h|d|w)")
_NUMBER = re.compile(r"\d+(?:\.\d+)?|\.\d+")


def parse_duration(text: str) -> float:
    """``text`` as seconds; ValueError with a message naming the accepted forms.

    Accepts a number with a unit (``ms``, ``s``, ``m``, ``h``, ``d``, ``w``), several such
    parts in a row (``1h30m``), or a bare number of seconds (``90``, ``2.5``).
    """
    raw = text.strip().lower()
    if raw.startswith("-"):
        raise ValueError(f"invalid duration {text!r}: a duration cannot be negative")
    if _NUMBER.fullmatch(raw):
        return _finite(float(raw), text)
    pos = 0
    total = 0.0
    for match in _PART.finditer(raw):
        if match.start() != pos:
            break
        total += float(match[1]) * UNITS[match[2]]
        pos = match.end()
    if not raw or pos != len(raw):
        raise ValueError(
            f"invalid duration {text!r}: use a number with a unit, e.g. 10s, 5m, 2h, 30d "
            "(units: ms, s, m, h, d, w)"
        )
    return _finite(total, text)


def _finite(value: float, text: str) -> float:
    if not math.isfinite(value):
        raise ValueError(f"invalid duration {text!r}: too large")
    return value


def format_duration(seconds: float) -> str:
    """A short human form (``90`` → ``1m30s``) that :func:`parse_duration` reads back."""
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if seconds != int(seconds):
        return f"{seconds:g}s"
    rest = int(seconds)
    if rest == 0:
        return "0s"
    out = []
    for unit in ("w", "d", "h", "m", "s"):
        size = int(UNITS[unit])
        count, rest = divmod(rest, size)
        if count:
            out.append(f"{count}{unit}")
    return "".join(out)
