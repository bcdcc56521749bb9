"""What text lifecycled accepts from a client: one rule for every string at the door.

A string a client sends (a param key or value, a node, a kind, an idempotency key, a reason, a
name) is refused when it holds a NUL, a lone surrogate (not encodable as UTF-8, so it could
never reach SQLite or Proxmox), a control character, or a line or paragraph separator. Free
text (a guest's ``description``) may hold ``\\n`` and ``\\t``. Lengths are bounded; numbers are
bounded to what SQLite and Proxmox store (64-bit integers, finite floats).
"""

from __future__ import annotations

import math
import re

#: SQLite's INTEGER and Proxmox's (Perl IV) range.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

#: Characters no single-line string may hold: C0 and C1 controls, DEL, line/paragraph separators.
_SINGLE_LINE_BAD = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
#: Free text may also hold a newline and a tab.
_FREE_TEXT_BAD = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
#: JSON Schema (ECMA-262) spellings of the two rules, for the OpenAPI document.
SINGLE_LINE_PATTERN = "^[^\\u0000-\\u001f\\u007f-\\u009f\\u2028\\u2029]*$"
FREE_TEXT_PATTERN = "^[^\\u0000-\\u0008\\u000b-\\u001f\\u007f-\\u009f\\u2028\\u2029]*$"


def text_problem(value: str, *, max_length: int, free_text: bool = False) -> str | None:
    """Why ``value`` is not acceptable text, or ``None`` when it is."""
    if len(value) > max_length:
        return f"at most {max_length} characters"
    bad = (_FREE_TEXT_BAD if free_text else _SINGLE_LINE_BAD).search(value)
    if bad is None:
        return None
    char = bad.group()
    if "\ud800" <= char <= "\udfff":
        return "must not contain a lone surrogate (not valid UTF-8)"
    return f"must not contain the control character U+{ord(char):04X}"


def float_problem(value: float) -> str | None:
    """Why ``value`` cannot be stored or sent (NaN, ±infinity), or ``None``."""
    if not math.isfinite(value):
        return "must be a finite number"
    return None


def shown(value: str, limit: int = 40) -> str:
    """``value`` made safe to echo in an error message: escaped and shortened."""
    text = value if len(value) <= limit else value[:limit] + "…"
    return ascii(text)[1:-1]
