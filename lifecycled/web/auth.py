"""Bearer-token authentication and roles of ``/v1/*`` (SPEC §5 "HTTP"; docs/SECURITY.md).

The token file (``--api-token-file``) holds one token per line, ``name:role:token`` with a
role of :class:`~lifecycled.domain.access.Role` (``read``, ``operate``, ``admin``); blank lines
and ``#`` comments are ignored. The older forms ``name:token`` and a bare ``token`` still load
as ``admin`` (warned about once at start). A token shorter than :data:`MIN_TOKEN_LENGTH`
characters stops the start. A request's ``Authorization: Bearer <token>`` is compared in
constant time with every token; the matching token's name (``token-N`` for an unnamed N-th
token) becomes the actor ``api:<name>`` and its role bounds what the request may do (403
``insufficient_scope`` otherwise). Without a token file, ``/v1/*`` serves loopback clients
only, with no token, as ``admin``: loopback is the trust boundary there, and the door checks
of :mod:`lifecycled.web.guard` keep a local browser's pages out. Tokens never reach a log line
or an error text.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import attrs
from aiohttp import web
from aiohttp.typedefs import Handler

from lifecycled.config import is_loopback, read_secret_text
from lifecycled.domain.access import Role, allows, required_role
from lifecycled.errors import ConfigError
from lifecycled.web.errors import ApiError
from lifecycled.web.guard import CALLER_KEY, Caller, audit_refusal

log = logging.getLogger("lifecycled.web")

#: Paths under this prefix need a token (or, without a token file, a loopback client).
PROTECTED_PREFIX = "/v1/"
#: The actor of a request served in loopback-only mode.
LOOPBACK_ACTOR = "api:loopback"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$")
#: Shorter tokens can be guessed; they stop the start.
MIN_TOKEN_LENGTH = 16
_ROLES = ", ".join(str(r) for r in Role)


@attrs.frozen(kw_only=True)
class ApiToken:
    """One accepted bearer token and the name it acts under."""

    name: str
    secret: bytes = attrs.field(repr=False)
    role: Role = Role.ADMIN
    #: Written in an older form without a role (``name:token`` or a bare token): admin.
    legacy: bool = False

    @property
    def actor(self) -> str:
        return f"api:{self.name}"


def parse_token_file(text: str, source: str) -> tuple[ApiToken, ...]:
    """The tokens of a token file's text; :class:`ConfigError` names the bad line, not its text."""
    tokens: list[ApiToken] = []
    names: set[str] = set()
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"API token file {source}, line {lineno}"
        parts = line.split(":", 2)
        role = Role.ADMIN
        if len(parts) == 1:
            name, secret = f"token-{len(tokens) + 1}", line
        elif len(parts) == 2:
            name, secret = parts
        else:
            name, role_text, secret = parts
            try:
                role = Role(role_text)
            except ValueError:
                raise ConfigError(
                    f"{where}: the role must be one of {_ROLES} (name:role:token)"
                ) from None
        if len(parts) > 1 and not _NAME_RE.fullmatch(name):
            raise ConfigError(
                f"{where}: the name before ':' must be 1-64 letters, digits, '.', '_' or '-'"
            )
        if not secret or any(c.isspace() for c in secret):
            raise ConfigError(f"{where}: the token must be non-empty and without spaces")
        if len(secret) < MIN_TOKEN_LENGTH:
            raise ConfigError(
                f"{where}: the token is shorter than {MIN_TOKEN_LENGTH} characters "
                "(make one with: openssl rand -hex 32)"
            )
        if name in names:
            raise ConfigError(f"{where}: duplicate name {name!r}")
        names.add(name)
        tokens.append(
            ApiToken(name=name, secret=secret.encode("utf-8"), role=role, legacy=len(parts) < 3)
        )
    if not tokens:
        raise ConfigError(
            f"API token file {source} holds no token: one per line, name:role:token (role {_ROLES})"
        )
    return tuple(tokens)


async def load_token_file(path: Path) -> tuple[ApiToken, ...]:
    """Read (off the event loop) and parse the token file; like every secret file it must be
    owner-only (:func:`lifecycled.config.read_secret_text`)."""
    text = await asyncio.to_thread(read_secret_text, path, "API token")
    return parse_token_file(text, str(path))


def client_is_loopback(remote: str | None) -> bool:
    """Whether a peer address is loopback (IPv4-mapped IPv6 included); unknown → no."""
    if not remote:
        return False
    try:
        addr = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return is_loopback(str(addr))


def bearer_token(header: str | None) -> bytes | None:
    """The token of an ``Authorization: Bearer <token>`` header; ``None`` if absent/other."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip().encode("utf-8", errors="surrogateescape")


def match_token(tokens: Sequence[ApiToken], presented: bytes) -> ApiToken | None:
    """The token equal to ``presented``, compared in constant time against every token."""
    found: ApiToken | None = None
    for token in tokens:
        # No early exit: the time taken does not depend on which token (if any) matched.
        if hmac.compare_digest(token.secret, presented) and found is None:
            found = token
    return found


_UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Bearer realm="lifecycled"'}


@attrs.frozen(kw_only=True)
class Identity:
    """Who a request acts as and what it may do."""

    actor: str
    role: Role


#: Loopback-only mode: loopback is the trust boundary, so a loopback client is admin.
LOOPBACK_IDENTITY = Identity(actor=LOOPBACK_ACTOR, role=Role.ADMIN)


@attrs.frozen(kw_only=True)
class Authenticator:
    """Decides who a request acts as; ``tokens`` is ``None`` in loopback-only mode."""

    tokens: tuple[ApiToken, ...] | None

    def identify(self, authorization: str | None, remote: str | None) -> Identity:
        """The identity of a ``/v1/*`` request, or raise a 401/403 :class:`ApiError`."""
        if self.tokens is None:
            if client_is_loopback(remote):
                return LOOPBACK_IDENTITY
            raise ApiError(
                403,
                "loopback_only",
                "no API token file is configured: /v1/* serves loopback clients only "
                "(start lifecycled with --api-token-file to serve remote clients)",
            )
        presented = bearer_token(authorization)
        if presented is None:
            raise ApiError(
                401,
                "unauthorized",
                "missing bearer token: send Authorization: Bearer <token>",
                headers=_UNAUTHORIZED_HEADERS,
            )
        token = match_token(self.tokens, presented)
        if token is None:
            raise ApiError(
                401, "unauthorized", "invalid bearer token", headers=_UNAUTHORIZED_HEADERS
            )
        return Identity(actor=token.actor, role=token.role)


class AuthGate:
    """Holds the app's :class:`Authenticator`, which is loaded when the app starts.

    Application state is frozen once the app starts, so the start-up hook fills this holder
    instead of the app mapping. Until it is filled every ``/v1/*`` request is refused.
    """

    def __init__(self, token_file: Path | None) -> None:
        self.token_file = token_file
        self.authenticator: Authenticator | None = None

    async def load(self, _app: web.Application) -> None:
        """``on_startup`` hook: read the token file (or announce loopback-only mode)."""
        if self.token_file is None:
            log.warning(
                "web.no_auth_loopback_only",
                extra={
                    "hint": "no --api-token-file: /v1/* accepts loopback clients only, "
                    "without a token, with the admin role"
                },
            )
            self.authenticator = Authenticator(tokens=None)
            return
        await self.reload()

    async def reload(self) -> str:
        """Read the token file again and swap the tokens in at once (SIGHUP); on an error the
        tokens in force stay. Returns what was loaded, for the audit record."""
        if self.token_file is None:
            return "api tokens: none (loopback-only)"
        tokens = await load_token_file(self.token_file)
        legacy = [t.name for t in tokens if t.legacy]
        if legacy:
            log.warning(
                "web.auth_tokens_without_role",
                extra={
                    "names": legacy,
                    "path": str(self.token_file),
                    "hint": "lines without a role (name:token or a bare token) act as admin; "
                    "write name:role:token with a role of read, operate or admin",
                },
            )
        log.info(
            "web.auth_tokens_loaded",
            extra={
                "tokens": len(tokens),
                "roles": {str(r): sum(t.role is r for t in tokens) for r in Role},
                "path": str(self.token_file),
            },
        )
        self.authenticator = Authenticator(tokens=tokens)
        return f"api tokens: {len(tokens)} from {self.token_file}"


AUTH_GATE_KEY = web.AppKey("auth_gate", AuthGate)
#: Each route's declared role by operation id (``None``: read for GET, admin otherwise).
ROUTE_ROLES_KEY = web.AppKey("route_roles", dict[str, Role | None])
#: The actor of an authenticated request (``api:<name>``), set by :func:`auth_middleware`.
ACTOR_KEY = web.RequestKey("actor", str)
#: The role of an authenticated request, set by :func:`auth_middleware`.
ROLE_KEY = web.RequestKey("role", Role)


def is_protected(path: str) -> bool:
    return path.startswith(PROTECTED_PREFIX) or path == PROTECTED_PREFIX.rstrip("/")


def scope_error(have: Role, need: Role) -> ApiError:
    """The 403 of a token whose role does not cover the request."""
    return ApiError(
        403,
        "insufficient_scope",
        f"this needs a token with the {need} role; this token has the {have} role",
        details={"required_role": str(need), "role": str(have)},
        headers={
            "WWW-Authenticate": f'Bearer realm="lifecycled", error="insufficient_scope", '
            f'scope="{need}"'
        },
    )


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate ``/v1/*`` and check the route's role; health, metrics and the OpenAPI
    document are public."""
    if is_protected(request.path):
        authenticator = request.app[AUTH_GATE_KEY].authenticator
        if authenticator is None:
            raise ApiError(503, "not_ready", "authentication is not set up yet")
        identity = authenticator.identify(request.headers.get("Authorization"), request.remote)
        request[ACTOR_KEY] = identity.actor
        request[ROLE_KEY] = identity.role
        # Writes are limited per token; in loopback-only mode per peer address.
        bucket = (
            f"peer:{request.remote or 'unknown'}"
            if identity is LOOPBACK_IDENTITY
            else identity.actor
        )
        request[CALLER_KEY] = Caller(actor=identity.actor, bucket=bucket)
        name = request.match_info.route.name
        if name is not None:
            declared = request.app[ROUTE_ROLES_KEY].get(name)
            await require_role(request, required_role(request.method, declared))
    return await handler(request)


async def require_role(
    request: web.Request,
    need: Role,
    *,
    action: str | None = None,
    vmid: int | None = None,
    node: str | None = None,
) -> None:
    """Refuse (403 ``insufficient_scope``, audited) a request its token's role does not cover."""
    have = request[ROLE_KEY]
    if allows(have, need):
        return
    route = request.match_info.route.name or request.method
    await audit_refusal(
        request,
        actor=request[ACTOR_KEY],
        action=action or route,
        reason=f"insufficient_scope: needs the {need} role, the token has {have}",
        vmid=vmid,
        node=node,
        extra={"role": str(have), "required_role": str(need)},
    )
    raise scope_error(have, need)


def request_actor(request: web.Request) -> str:
    """The actor the auth middleware set for this request."""
    return request[ACTOR_KEY]
