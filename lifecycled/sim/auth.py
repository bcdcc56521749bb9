"""API-token and ticket authentication (reference §6).

* ``Authorization: PVEAPIToken=USER@REALM!TOKENID=SECRET`` (``=`` or a space after the key);
  stateless, no CSRF token needed; the effective user is ``user@realm!tokenid``.
* ``POST /access/ticket`` (``username``, ``password``) → ticket + ``CSRFPreventionToken``; the
  ticket goes in the ``PVEAuthCookie`` cookie (or the ``Authorization`` header under that
  name); every non-GET call also needs the ``CSRFPreventionToken`` header. Tickets live
  ``ticket_lifetime`` seconds (2 h) and are renewed by posting the ticket as the password.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from typing import Any

from lifecycled.sim.config import SimConfig

ROOT = "root@pam"
NO_TICKET = "No ticket"
AUTH_FAILED = "Authentication failed!"
LOGIN_FAILED = "authentication failure"
BAD_CSRF = "Permission denied - invalid csrf token"


class AuthError(Exception):
    """A 401; the text is the reason phrase."""


class Authenticator:
    """Checks credentials; tickets are HMAC-signed, so no ticket store is needed."""

    def __init__(self, cfg: SimConfig) -> None:
        self._cfg = cfg
        self._token = cfg.api_token
        self._key = secrets.token_bytes(32)

    # --- tickets ---------------------------------------------------------------------------

    def _sign(self, text: str) -> str:
        digest = hmac.new(self._key, text.encode(), hashlib.sha256).digest()
        return base64.b64encode(digest).decode().rstrip("=")

    def _issue(self, user: str) -> dict[str, Any]:
        stamp = f"{int(time.time()):08X}"
        plain = f"PVE:{user}:{stamp}"
        return {
            "username": user,
            "ticket": f"{plain}::{self._sign(plain)}",
            "CSRFPreventionToken": f"{stamp}:{self._sign(f'{stamp}:{user}')}",
            "cap": {"vms": {}, "nodes": {}, "access": {}, "dc": {}, "storage": {}, "sdn": {}},
        }

    def _fresh(self, stamp: str) -> bool:
        try:
            issued = int(stamp, 16)
        except ValueError:
            return False
        return 0 <= time.time() - issued < self._cfg.ticket_lifetime

    def ticket_user(self, ticket: str) -> str | None:
        """The user of a valid, unexpired ticket."""
        plain, sep, sig = ticket.rpartition("::")
        parts = plain.split(":")
        if not sep or len(parts) != 3 or parts[0] != "PVE":
            return None
        if not _same(self._sign(plain), sig) or not self._fresh(parts[2]):
            return None
        return parts[1]

    def csrf_ok(self, user: str, token: str | None) -> bool:
        if not token:
            return False
        stamp, _, sig = token.partition(":")
        return self._fresh(stamp) and _same(self._sign(f"{stamp}:{user}"), sig)

    def _passwords(self) -> dict[str, str]:
        known = dict(self._cfg.users)
        if self._cfg.password is not None:
            known[ROOT] = self._cfg.password
        return known

    def canonical(self, username: str) -> str:
        """The user id as configured: in a case-insensitive realm the user part is matched
        without regard to case (pve-access-control ``lookup_username``, reference §13.8)."""
        known = self._passwords()
        if username in known:
            return username
        user, _, realm = username.rpartition("@")
        if realm in self._cfg.case_insensitive_realms:
            for userid in known:
                known_user, _, known_realm = userid.rpartition("@")
                if known_realm == realm and known_user.lower() == user.lower():
                    return userid
        return username

    def login(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /access/ticket``; raises :class:`AuthError` on bad credentials. The answer's
        ``username`` is the canonical user id, which the ticket and UPIDs carry."""
        username = self.canonical(str(params.get("username", "")))
        password = str(params.get("password", ""))
        if username and self.ticket_user(password) == username:
            return self._issue(username)  # renewal: the current ticket as the password
        expected = self._passwords().get(username)
        if expected is not None and _same(password, expected):
            return self._issue(username)
        raise AuthError(LOGIN_FAILED)

    # --- requests --------------------------------------------------------------------------

    def authenticate(
        self, method: str, authorization: str | None, cookie: str | None, csrf: str | None
    ) -> str:
        """The effective user of a request, or :class:`AuthError` with PVE's reason."""
        header = (authorization or "").strip()
        if header.startswith("PVEAPIToken"):
            value = header[len("PVEAPIToken") :]
            if not value or value[0] not in "= ":
                raise AuthError(AUTH_FAILED)
            return self._check_token(value[1:].strip())
        if header.startswith("PVEAuthCookie"):
            value = header[len("PVEAuthCookie") :]
            cookie = value[1:].strip() if value and value[0] in "= " else ""
        if not cookie:
            raise AuthError(NO_TICKET)
        user = self.ticket_user(cookie)
        if user is None:
            raise AuthError(AUTH_FAILED)
        if method != "GET" and not self.csrf_ok(user, csrf):
            raise AuthError(BAD_CSRF)
        return user

    def _check_token(self, value: str) -> str:
        ident, sep, secret = value.partition("=")
        token = self._token
        if sep and ident == token.full_user and _same(secret, token.secret):
            return token.full_user
        raise AuthError(AUTH_FAILED)


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison that also copes with non-ASCII input."""
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8"))
