"""Proxmox user ids and API-token ids, parsed as pve-access-control does (reference §6, §13.8).

* a user id is ``USER@REALM``: the user part is ``[^\\s:/]+`` — it may itself contain ``@``
  (``john@corp.com@ad``), so the realm is what follows the *last* ``@``; the realm is
  ``[A-Za-z][A-Za-z0-9.\\-_]+``;
* a token user is ``USER@REALM!TOKENID`` with the token id ``[A-Za-z][A-Za-z0-9.\\-_]+``;
  it is what a token's UPIDs carry in their ``user`` field;
* a login ticket is ``PVE:USER@REALM:HEXTIME::SIGNATURE``: it names the user id the server
  settled on, which for a realm with ``case-sensitive 0`` is the canonical spelling.

Every part of lifecycled (and its simulator) that reads one of these uses this module.
"""

from __future__ import annotations

import re

USERID_PATTERN = r"[^\s:/]+?@[A-Za-z][A-Za-z0-9.\-_]+"
TOKENID_PATTERN = r"[A-Za-z][A-Za-z0-9.\-_]+"

_USERID_RE = re.compile(USERID_PATTERN)
_TOKEN_USER_RE = re.compile(rf"(?P<userid>{USERID_PATTERN})!(?P<tokenid>{TOKENID_PATTERN})")
_TICKET_RE = re.compile(rf"PVE:(?P<userid>{USERID_PATTERN}):[0-9A-Fa-f]{{8}}::\S+")


def is_userid(text: str) -> bool:
    """Whether ``text`` is a user id ``USER@REALM`` (the user part may contain ``@``)."""
    return _USERID_RE.fullmatch(text) is not None


def split_token_user(text: str) -> tuple[str, str] | None:
    """``(user id, token id)`` of a token user ``USER@REALM!TOKENID``, else ``None``."""
    m = _TOKEN_USER_RE.fullmatch(text)
    return (m["userid"], m["tokenid"]) if m is not None else None


def bare_user(user: str) -> str:
    """The user id without a token id: ``john@corp.com@ad`` for ``john@corp.com@ad!ci``.

    Text that is no well-formed token user is cut at its first ``!`` (a UPID's user field
    is not checked by Proxmox beyond ``[^:\\s]+``)."""
    split = split_token_user(user)
    return split[0] if split is not None else user.partition("!")[0]


def tokenid(user: str) -> str | None:
    """The token id of a token user, else ``None`` (cut like :func:`bare_user`)."""
    split = split_token_user(user)
    if split is not None:
        return split[1]
    _, sep, token = user.partition("!")
    return token if sep else None


def user_part(userid: str) -> str:
    """The part before the realm: ``john@corp.com`` for ``john@corp.com@ad``."""
    return userid.rpartition("@")[0] or userid


def ticket_userid(ticket: str) -> str | None:
    """The user id a login ticket was issued to, or ``None`` when it is not a PVE ticket."""
    m = _TICKET_RE.fullmatch(ticket)
    return m["userid"] if m is not None else None
