"""Small records shared by the simulator's modules."""

from __future__ import annotations

from typing import Any

import attrs

ROOT = "root@pam"


@attrs.define(kw_only=True, eq=False)
class Caller:
    """Who makes a request and what a matching fault wants from the task it creates."""

    user: str
    exitstatus: str | None = None
    effect: bool | None = None
    task_seconds: float | None = None
    upids: list[str] = attrs.field(factory=list)

    @property
    def is_root(self) -> bool:
        """Only the literal ``root@pam`` (never a token) may use root-only options (§1.1)."""
        return self.user == ROOT


@attrs.define(kw_only=True, eq=False)
class RequestRecord:
    """One API request as the simulator saw it (never the credentials)."""

    seq: int
    time: float
    method: str
    path: str
    params: dict[str, Any]
    user: str | None = None
    status: int | None = None
    reason: str | None = None
    upid: str | None = None
    fault: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.define(kw_only=True, eq=False)
class FlockSpec:
    """A lock file a task takes before its body runs."""

    kind: str
    vmid: int
    wait: float
    held: bool = False  # already taken by the HTTP handler, handed over to the task
