"""Proxmox task ids (UPIDs), parsed and formatted exactly as pve-common ``UPID.pm`` does.

Layout: ``UPID:{node}:{pid:08X}:{pstart:08X}:{starttime:08X}:{type}:{id}:{user}:`` with a
trailing colon. ``pstart`` may have 9 hex digits (long uptimes); ``id`` may be empty; ``user``
may be a token user ``user@realm!tokenid``.
"""

from __future__ import annotations

import functools
import re

import attrs

from lifecycled.domain import userid

# Always used with ``fullmatch``: a ``$`` would also accept a trailing newline, which is not
# part of any UPID (the task log file name would not match).
_UPID_RE = re.compile(
    r"UPID:(?P<node>[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?):"
    r"(?P<pid>[0-9A-Fa-f]{8}):(?P<pstart>[0-9A-Fa-f]{8,9}):(?P<starttime>[0-9A-Fa-f]{8}):"
    r"(?P<type>[^:\s/]+):(?P<id>[^:\s/]*):(?P<user>[^:\s/]+):"
)


class UpidError(ValueError):
    """The text is not a valid UPID."""


@attrs.frozen(kw_only=True)
class Upid:
    """One Proxmox task id.

    Constructing one with field values that would not format to a parseable UPID (a pid
    beyond 8 hex digits, a node name with ``_``, a ``:`` in a field, …) raises
    :class:`UpidError`, so ``Upid.parse(str(upid)) == upid`` always holds.
    """

    node: str
    pid: int
    pstart: int
    starttime: int
    type: str
    id: str
    user: str
    #: The canonical text, formatted once (``str()`` of a UPID is asked for on every look).
    _text: str = attrs.field(init=False, repr=False, eq=False, hash=False)

    def __attrs_post_init__(self) -> None:
        text = (
            f"UPID:{self.node}:{self.pid:08X}:{self.pstart:08X}:{self.starttime:08X}:"
            f"{self.type}:{self.id}:{self.user}:"
        )
        if _UPID_RE.fullmatch(text) is None:
            raise UpidError(f"fields do not form a valid UPID: {self!r}")
        object.__setattr__(self, "_text", text)  # frozen: set once, here

    @classmethod
    def parse(cls, text: str) -> Upid:
        """Parse ``text`` or raise :class:`UpidError` with Proxmox's own wording (the same
        text parses once per process: task lists and journal rows repeat the same UPIDs)."""
        return _parse(text)

    def __str__(self) -> str:
        return self._text

    @property
    def bare_user(self) -> str:
        """The user without the token id (``root@pam`` for ``root@pam!ci``; the user part
        may contain ``@``: ``john@corp.com@ad`` for ``john@corp.com@ad!ci``)."""
        return userid.bare_user(self.user)

    @property
    def tokenid(self) -> str | None:
        """The token id, when the task was started by an API token."""
        return userid.tokenid(self.user)

    @property
    def log_bucket(self) -> str:
        """The task-log directory: the last hex digit of ``starttime`` (``0``-``F``)."""
        return f"{self.starttime:08X}"[-1]


@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> Upid:
    # A Upid is immutable, so every caller may share one; a text that fails is not kept.
    m = _UPID_RE.fullmatch(text)
    if m is None:
        raise UpidError(f"unable to parse worker upid '{text}'")
    return Upid(
        node=m["node"],
        pid=int(m["pid"], 16),
        pstart=int(m["pstart"], 16),
        starttime=int(m["starttime"], 16),
        type=m["type"],
        id=m["id"],
        user=m["user"],
    )


def is_upid(text: str) -> bool:
    """Whether ``text`` is a well-formed UPID."""
    return _UPID_RE.fullmatch(text) is not None


def upids_in(text: str) -> list[str]:
    """Every well-formed UPID in free text (command output), in order of appearance.

    The one parser for UPIDs found in text: proxmoxer's own pattern accepts only 8 hex
    digits of ``pstart`` (reference §13.14), this one also the 9 of a long uptime.
    """
    return [m[0] for m in _UPID_RE.finditer(text)]
