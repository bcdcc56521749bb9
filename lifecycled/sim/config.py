"""Settings of the Proxmox VE API simulator (one frozen record) and token parsing."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

import attrs

from lifecycled.domain.tags import ORDERINGS, stored_tags
from lifecycled.domain.userid import TOKENID_PATTERN, USERID_PATTERN, is_userid

#: ``USER@REALM!TOKENID=SECRET`` (pve-access-control token syntax; the user part may hold ``@``).
_TOKEN_RE = re.compile(
    rf"^(?P<user>{USERID_PATTERN})!(?P<tokenid>{TOKENID_PATTERN})=(?P<secret>\S+)$"
)
_NODE_RE = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?$")

#: Worker types that end "almost at once" whatever ``task_seconds`` says (reference §1.3).
HA_WORKER_TYPES = frozenset({"hastart", "hastop", "hamigrate"})
_HA_TASK_SECONDS = 0.02


class SimConfigError(ValueError):
    """A simulator setting is invalid; the message says which and why."""


@attrs.frozen(kw_only=True)
class ApiToken:
    """A parsed API token: ``user@realm!tokenid`` plus its secret."""

    user: str
    tokenid: str
    secret: str

    @property
    def full_user(self) -> str:
        """The token user as Proxmox writes it into UPIDs (``root@pam!lifecycled``)."""
        return f"{self.user}!{self.tokenid}"

    @classmethod
    def parse(cls, text: str) -> ApiToken:
        m = _TOKEN_RE.fullmatch(text.strip())
        if m is None:
            raise SimConfigError("token must look like USER@REALM!TOKENID=SECRET")
        return cls(user=m["user"], tokenid=m["tokenid"], secret=m["secret"])

    def __repr__(self) -> str:  # never show the secret
        return f"ApiToken(user={self.user!r}, tokenid={self.tokenid!r}, secret='***')"


def _freeze_durations(value: Mapping[str, float] | None) -> Mapping[str, float]:
    return MappingProxyType(dict(value or {}))


def _freeze_users(value: Mapping[str, str] | None) -> Mapping[str, str]:
    return MappingProxyType(dict(value or {}))


def _check_users(_inst: Any, _attr: Any, value: Mapping[str, str]) -> None:
    for userid, password in value.items():
        if not is_userid(userid):
            raise SimConfigError(f"invalid user id {userid!r}: expected USER@REALM")
        if not password:
            raise SimConfigError(f"user {userid} needs a password")


def _to_tuple(value: Iterable[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _check_nodes(_inst: Any, _attr: Any, value: tuple[str, ...]) -> None:
    if not value:
        raise SimConfigError("at least one node is needed")
    for node in value:
        if not _NODE_RE.fullmatch(node):
            raise SimConfigError(f"invalid node name {node!r}")
    if len(set(value)) != len(value):
        raise SimConfigError("node names must be unique")


def _non_negative(_inst: Any, attr: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise SimConfigError(f"{attr.name} must not be negative")


def _privileges(value: Iterable[str] | None) -> frozenset[str] | None:
    return None if value is None else frozenset(value)


def _check_ordering(_inst: Any, _attr: Any, value: str) -> None:
    if value not in ORDERINGS:
        raise SimConfigError(f"tag_ordering must be one of {', '.join(ORDERINGS)}")


def _check_token(_inst: Any, _attr: Any, value: str) -> None:
    ApiToken.parse(value)


@attrs.frozen(kw_only=True)
class SimConfig:
    """Everything that shapes one simulated cluster. All durations are seconds."""

    nodes: tuple[str, ...] = attrs.field(
        default=("pve1",), converter=_to_tuple, validator=_check_nodes
    )
    #: Number of seeded guests (vmids from 100; every 4th is a container).
    guests: int = attrs.field(default=20, validator=_non_negative)
    #: The API token the simulator accepts (``USER@REALM!TOKENID=SECRET``).
    token: str = attrs.field(
        default="root@pam!lifecycled=lifecycled-sim", validator=_check_token, repr=False
    )
    #: How long a task runs (0 = it finishes on the next loop iteration).
    task_seconds: float = attrs.field(default=0.2, validator=_non_negative)
    #: Per-worker-type overrides of ``task_seconds`` (e.g. ``{"qmclone": 2.0}``).
    task_durations: Mapping[str, float] = attrs.field(
        factory=dict, converter=_freeze_durations, eq=False
    )
    seed: int = 1
    #: Wait for a guest's lock file before ``can't lock file … got timeout`` (PVE: 10 s).
    lock_timeout: float = attrs.field(default=10.0, validator=_non_negative)
    #: Delay of every 401 answer (PVE: about 3 s).
    auth_delay: float = attrs.field(default=3.0, validator=_non_negative)
    #: Finished tasks kept per node before the oldest are rotated away (``no such task``).
    archive_max: int = attrs.field(default=1000, validator=_non_negative)
    #: pvestatd's loop: how often finished tasks are archived and ``/cluster/tasks`` refreshed.
    archive_interval: float = attrs.field(default=10.0, validator=_non_negative)
    #: pvestatd's status push (RRD): ``/cluster/resources`` shows each guest's power state
    #: as last sampled, up to this many seconds old (reference §13.10; 0 = live).
    resources_lag: float = attrs.field(default=10.0, validator=_non_negative)
    #: Delay between an HA request (``hastart`` …) and the guest's state change.
    ha_delay: float = attrs.field(default=2.0, validator=_non_negative)
    #: Serve HTTPS with a generated self-signed certificate.
    tls: bool = False
    #: Password of ``root@pam`` for ticket logins (``POST /access/ticket``); None disables it.
    password: str | None = attrs.field(default=None, repr=False)
    #: More users who may log in with a password (``{"john@corp.com@ad": "secret"}``).
    users: Mapping[str, str] = attrs.field(
        factory=dict, converter=_freeze_users, validator=_check_users, eq=False, repr=False
    )
    #: Realms configured with ``case-sensitive 0`` (AD, LDAP): a login's user part is matched
    #: without regard to case, and the ticket and UPIDs carry the user id as configured.
    case_insensitive_realms: tuple[str, ...] = attrs.field(default=(), converter=_to_tuple)
    #: Lifetime of a login ticket (PVE: 2 h).
    ticket_lifetime: float = attrs.field(default=7200.0, validator=_non_negative)
    #: Privileges of the API token on ``/`` (``GET /access/permissions``); None = all of them,
    #: like a ``root@pam`` token without privilege separation.
    token_privileges: frozenset[str] | None = attrs.field(default=None, converter=_privileges)
    #: Seconds the nodes' clocks run ahead of this host's (``GET /nodes/{node}/time``).
    clock_offset: float = 0.0
    #: Requests kept in the request log (the oldest are dropped beyond this).
    request_log_max: int = attrs.field(default=100_000, validator=_non_negative)
    #: datacenter.cfg ``tag-style``: ``ordering`` (``alphabetical``: every write of ``tags``
    #: stores them sorted; ``config``: as given) and ``case-sensitive`` (off: lower-cased).
    tag_ordering: str = attrs.field(default="alphabetical", validator=_check_ordering)
    tags_case_sensitive: bool = False

    @property
    def api_token(self) -> ApiToken:
        return ApiToken.parse(self.token)

    def duration(self, worker_type: str) -> float:
        """How long a task of ``worker_type`` runs."""
        if worker_type in self.task_durations:
            return float(self.task_durations[worker_type])
        if worker_type in HA_WORKER_TYPES:
            return min(self.task_seconds, _HA_TASK_SECONDS)
        return self.task_seconds

    def stored_tags(self, value: object) -> str:
        """The ``tags`` a config write of ``value`` stores (``get_unique_tags``)."""
        return stored_tags(
            str(value), ordering=self.tag_ordering, case_sensitive=self.tags_case_sensitive
        )

    def lock_wait(self, cap: float | None = None) -> float:
        """The lock-file wait, capped (create waits at most 5 s and clone 1 s in PVE)."""
        return self.lock_timeout if cap is None else min(self.lock_timeout, cap)
