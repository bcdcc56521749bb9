"""Who may ask for what, from where — pure decisions of the HTTP door (docs/SECURITY.md).

Three rules, each written once and called by the web middlewares:

* **Roles** — every API token has a :class:`Role`: ``read`` (GET only), ``operate``
  (non-destructive submissions, cancel), ``admin`` (destructive submissions, ownership,
  node lifecycle, dead letters, audit prune). :func:`required_role` says what a request
  needs; :func:`allows` whether a role covers it.
* **Same origin** — a browser on the node can reach a loopback listener: a ``Host`` that is
  not one of the listener's own names (DNS rebinding), an ``Origin`` that is not the one the
  request was sent to, or ``Sec-Fetch-Site`` other than same-origin/none (a cross-site page)
  is refused by :func:`door_refusal`. No CORS header is ever sent, so no page elsewhere can
  read an answer either.
* **Write rate** — a token bucket per caller (:func:`take`): ``burst`` writes at once, then
  ``rate`` per second; a refusal says how many seconds to wait.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Collection
from urllib.parse import urlsplit

import attrs


class Role(enum.StrEnum):
    """An API token's authority, each covering the ones before it."""

    READ = "read"
    OPERATE = "operate"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANKS[self]


_RANKS = {Role.READ: 0, Role.OPERATE: 1, Role.ADMIN: 2}

#: Methods that change nothing: a ``read`` token may use them.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def allows(have: Role, need: Role) -> bool:
    """Whether a token of role ``have`` may do what needs ``need``."""
    return have.rank >= need.rank


def required_role(method: str, declared: Role | None, *, destructive: bool = False) -> Role:
    """The role a request needs.

    ``declared`` is the route's own requirement (``None``: ``read`` for safe methods and
    ``admin`` for any other, so a new write route is admin-only until it says otherwise);
    a destructive submission always needs ``admin``.
    """
    if destructive:
        return Role.ADMIN
    if declared is not None:
        return declared
    return Role.READ if method.upper() in SAFE_METHODS else Role.ADMIN


# --- same origin -------------------------------------------------------------------------------

#: Names a loopback listener answers to, whatever its configured address.
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})

_DEFAULT_PORTS = {"http": 80, "https": 443}


@attrs.frozen(kw_only=True)
class DoorRefusal:
    """Why a request is refused at the door: HTTP status, stable code, one-line reason."""

    status: int
    code: str
    reason: str


def split_authority(value: str) -> tuple[str, int | None] | None:
    """``(host, port)`` of a ``Host`` header or URL authority (``[::1]:80``); ``None`` if bad."""
    text = value.strip().lower()
    if not text:
        return None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    elif ":" in text:
        return None  # a bare IPv6 address must be bracketed
    else:
        host, port_text = text, ""
    if not host:
        return None
    if not port_text:
        return host, None
    if not port_text.isdigit() or len(port_text) > 5 or int(port_text) > 65535:
        return None
    return host, int(port_text)


def _origin_authority(origin: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of an ``Origin`` header; ``None`` for ``null`` or junk."""
    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or parts.path not in ("", "/") or parts.query:
        return None
    authority = split_authority(parts.netloc)
    if authority is None:
        return None
    host, port = authority
    return scheme, host, port if port is not None else _DEFAULT_PORTS[scheme]


def door_refusal(
    *,
    host: str | None,
    origin: str | None,
    fetch_site: str | None,
    local_port: int | None,
    allowed_hosts: Collection[str] | None,
    scheme: str = "http",
) -> DoorRefusal | None:
    """Whether a request is refused before anyone looks at who sent it.

    ``allowed_hosts``: the names the listener answers to (lower case), or ``None`` when it
    listens beyond loopback and any name may reach it. ``local_port`` is the port the
    connection arrived on. A missing ``Host`` (HTTP/1.0, not a browser) passes the host check.
    """
    authority = split_authority(host) if host is not None else None
    if host is not None and authority is None:
        return DoorRefusal(status=400, code="bad_host", reason="the Host header is malformed")
    if allowed_hosts is not None and authority is not None:
        name, port = authority
        if name not in allowed_hosts or (port is not None and port != local_port):
            return DoorRefusal(
                status=421,
                code="host_not_allowed",
                reason="this listener answers to its own loopback names only "
                f"({', '.join(sorted(allowed_hosts))}); the Host header names another",
            )
    if fetch_site is not None and fetch_site.strip().lower() not in ("same-origin", "none"):
        return DoorRefusal(
            status=403,
            code="cross_origin",
            reason="requests from another site's pages are refused (Sec-Fetch-Site)",
        )
    if origin is not None:
        own = _origin_authority(origin)
        if own is None or authority is None:
            return DoorRefusal(
                status=403, code="cross_origin", reason="requests from other origins are refused"
            )
        o_scheme, o_host, o_port = own
        h_host, h_port = authority
        h_port = h_port if h_port is not None else _DEFAULT_PORTS.get(scheme, 80)
        if (o_scheme, o_host, o_port) != (scheme, h_host, h_port):
            return DoorRefusal(
                status=403, code="cross_origin", reason="requests from other origins are refused"
            )
    return None


# --- write rate ----------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class RateLimit:
    """``burst`` writes at once, refilled at ``rate`` per second."""

    rate: float
    burst: int


@attrs.frozen(kw_only=True)
class Bucket:
    """A caller's bucket: tokens left at ``updated``."""

    tokens: float
    updated: float


def take(limit: RateLimit, bucket: Bucket | None, now: float) -> tuple[Bucket, int | None]:
    """Spend one token: the new bucket and ``None``, or the unchanged bucket and the whole
    seconds to wait before a token is there (``Retry-After``)."""
    if bucket is None:
        tokens = float(limit.burst)
    else:
        elapsed = max(0.0, now - bucket.updated)
        tokens = min(float(limit.burst), bucket.tokens + elapsed * limit.rate)
    if tokens >= 1.0:
        return Bucket(tokens=tokens - 1.0, updated=now), None
    wait = (1.0 - tokens) / limit.rate
    return Bucket(tokens=tokens, updated=now), max(1, math.ceil(wait))


def is_full(limit: RateLimit, bucket: Bucket, now: float) -> bool:
    """Whether a bucket has refilled completely (and may be forgotten)."""
    return bucket.tokens + max(0.0, now - bucket.updated) * limit.rate >= limit.burst
