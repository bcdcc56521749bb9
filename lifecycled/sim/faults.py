"""Scripted faults: for the next K requests matching method + path, misbehave.

Kinds (combinable):

* ``status`` (+ ``reason``, ``errors``): answer this status instead of handling the request
  (``reason`` is the message: its first line goes into the status line)
  (with ``execute=True`` the request is handled first, then the fault status is answered —
  e.g. a 596 after the task was started); a status ≥ 500 other than 500 gets an empty body
  like pveproxy's 59x pseudo-statuses;
* ``delay``: wait this long before handling the request;
* ``drop``: handle the request (the task is created and runs), then close the connection
  without answering;
* ``exitstatus`` (+ ``effect``): the task the request creates ends with this exit status
  (``OK``, ``WARNINGS: 2``, any error text, ``unexpected status``); ``effect`` None applies
  the action's effect only on success, True always, False never;
* ``task_seconds``: the created task runs this long;
* ``answer``: handle the request (the task is created and runs), then answer it wrongly:
  ``truncated`` (the real answer's head, half its body, then the connection is closed),
  ``garbled`` (a complete 200 whose body is not JSON), ``fork-lock-timeout`` (HTTP 500
  ``can't lock file '/var/log/pve/tasks/.active.lock' - got timeout``, what ``fork_worker``
  answers when it cannot register a task it has already forked, reference §13.1).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs

#: What ``fork_worker`` dies with when the task registry stays locked (reference §13.1).
ACTIVE_LOCK_TIMEOUT = "can't lock file '/var/log/pve/tasks/.active.lock' - got timeout"
#: Values of :attr:`Fault.answer`.
ANSWERS = frozenset({"truncated", "garbled", "fork-lock-timeout"})


def _compile(value: str) -> re.Pattern[str]:
    return re.compile(value)


@attrs.define(kw_only=True, eq=False)
class Fault:
    """One scripted fault (see the module docstring)."""

    id: int
    method: str = "*"
    path: str = ".*"
    #: Remaining matches; None = until removed.
    count: int | None = 1
    status: int | None = None
    reason: str | None = None
    errors: dict[str, str] | None = None
    delay: float = 0.0
    drop: bool = False
    execute: bool = False
    exitstatus: str | None = None
    effect: bool | None = None
    task_seconds: float | None = None
    answer: str | None = None
    hits: int = 0
    _regex: re.Pattern[str] = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self._regex = _compile(self.path)

    def matches(self, method: str, path: str) -> bool:
        if self.count is not None and self.count <= 0:
            return False
        if self.method != "*" and self.method.upper() != method.upper():
            return False
        return self._regex.search(path) is not None

    def consume(self) -> None:
        self.hits += 1
        if self.count is not None:
            self.count -= 1

    @property
    def exhausted(self) -> bool:
        return self.count is not None and self.count <= 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "method": self.method,
            "path": self.path,
            "count": self.count,
            "status": self.status,
            "reason": self.reason,
            "errors": self.errors,
            "delay": self.delay,
            "drop": self.drop,
            "execute": self.execute,
            "exitstatus": self.exitstatus,
            "effect": self.effect,
            "task_seconds": self.task_seconds,
            "answer": self.answer,
            "hits": self.hits,
        }


FAULT_FIELDS = frozenset(
    {
        "method",
        "path",
        "count",
        "status",
        "reason",
        "errors",
        "delay",
        "drop",
        "execute",
        "exitstatus",
        "effect",
        "task_seconds",
        "answer",
    }
)


def fault_from_json(fault_id: int, body: Mapping[str, Any]) -> Fault:
    """Build a fault from a control-API JSON body; ValueError on bad input."""
    unknown = set(body) - FAULT_FIELDS
    if unknown:
        raise ValueError(f"unknown fault fields: {', '.join(sorted(unknown))}")
    kw: dict[str, Any] = dict(body)
    try:
        fault = Fault(id=fault_id, **kw)
    except (TypeError, re.error) as exc:
        raise ValueError(str(exc)) from exc
    validate(fault)
    return fault


def validate(fault: Fault) -> None:
    if fault.status is not None and not 100 <= int(fault.status) <= 999:
        raise ValueError("status must be an HTTP status code")
    if fault.delay < 0:
        raise ValueError("delay must not be negative")
    if fault.count is not None and fault.count < 0:
        raise ValueError("count must not be negative")
    if fault.answer is not None and fault.answer not in ANSWERS:
        raise ValueError(f"answer must be one of {', '.join(sorted(ANSWERS))}")
    if fault.answer is not None and (fault.status is not None or fault.drop):
        raise ValueError("answer replaces the answer: give no status and no drop with it")
