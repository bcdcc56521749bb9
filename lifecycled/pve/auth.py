"""Proxmox credentials: API tokens (the default) and password tickets (reference §6).

The records hold secrets, so their ``repr`` hides them; nothing in this package logs them or
puts them into an exception text.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import attrs

from lifecycled.config import read_secret_text
from lifecycled.domain.userid import (
    TOKENID_PATTERN,
    USERID_PATTERN,
    is_userid,
    split_token_user,
)
from lifecycled.errors import ConfigError

logger = logging.getLogger(__name__)

#: ``USER@REALM!TOKENID=SECRET`` — one line of a token file (the user part may hold ``@``).
_TOKEN_LINE_RE = re.compile(rf"^(?P<user>{USERID_PATTERN}!{TOKENID_PATTERN})=(?P<secret>\S+)$")

#: Tickets live 2 h (``$ticket_lifetime``); renew well before, as proxmoxer does after 1 h.
TICKET_RENEW_AFTER = 3600.0


def _validate_token_user(_inst: object, _attr: attrs.Attribute[str], value: str) -> None:
    if split_token_user(value) is None:
        raise ConfigError(
            f"invalid Proxmox token user {value!r}: expected USER@REALM!TOKENID "
            "(e.g. root@pam!lifecycled)"
        )


def _validate_secret(_inst: object, _attr: attrs.Attribute[str], value: str) -> None:
    if not value or any(c.isspace() for c in value):
        raise ConfigError("invalid Proxmox token secret: it must be non-empty, without spaces")


@attrs.frozen(kw_only=True)
class TokenAuth:
    """An API token: header ``Authorization: PVEAPIToken=USER@REALM!TOKENID=SECRET``.

    Stateless, and no CSRF token is needed even for writes (reference §6).
    """

    user: str = attrs.field(validator=_validate_token_user)
    secret: str = attrs.field(repr=False, validator=_validate_secret)

    def header(self) -> str:
        """The ``Authorization`` header value."""
        return f"PVEAPIToken={self.user}={self.secret}"

    @property
    def user_name(self) -> str:
        """``user@realm`` without the token id."""
        split = split_token_user(self.user)
        assert split is not None  # validated
        return split[0]

    @property
    def token_name(self) -> str:
        """The token id (the part after ``!``)."""
        split = split_token_user(self.user)
        assert split is not None  # validated
        return split[1]


def _validate_user(_inst: object, _attr: attrs.Attribute[str], value: str) -> None:
    if not is_userid(value):
        raise ConfigError(f"invalid Proxmox user {value!r}: expected USER@REALM (e.g. root@pam)")


def _validate_password(_inst: object, _attr: attrs.Attribute[str], value: str) -> None:
    if not value:
        raise ConfigError("the Proxmox password is empty")


@attrs.frozen(kw_only=True)
class TicketAuth:
    """A user name and password, exchanged for a ticket at ``POST /access/ticket``.

    The ticket goes out as cookie ``PVEAuthCookie``, writes also carry the
    ``CSRFPreventionToken`` header; the ticket is renewed (by posting it as the password) once
    it is older than ``renew_after`` seconds, well before its 2 h lifetime ends.
    """

    username: str = attrs.field(validator=_validate_user)
    password: str = attrs.field(repr=False, validator=_validate_password)
    renew_after: float = TICKET_RENEW_AFTER


def load_token_file(path: str | os.PathLike[str]) -> TokenAuth:
    """Read a token file: one line ``USER@REALM!TOKENID=SECRET``.

    Raises :class:`ConfigError` saying what is wrong with the file; the secret never appears
    in the message.
    """
    shown = os.fspath(path)
    text = read_secret_text(Path(path), "Proxmox token", max_bytes=64 * 1024)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise ConfigError(
            f"Proxmox token file {shown} is empty: expected one line USER@REALM!TOKENID=SECRET"
        )
    if len(lines) > 1:
        raise ConfigError(
            f"Proxmox token file {shown} has {len(lines)} lines: expected exactly one line "
            "USER@REALM!TOKENID=SECRET"
        )
    m = _TOKEN_LINE_RE.fullmatch(lines[0])
    if m is None:
        raise ConfigError(
            f"Proxmox token file {shown} is malformed: expected one line "
            "USER@REALM!TOKENID=SECRET (e.g. root@pam!lifecycled=<uuid>)"
        )
    return TokenAuth(user=m["user"], secret=m["secret"])
