"""Bearer-token authentication of ``/v1/*`` (SPEC §5 "HTTP", "Configuration").

The token file (``--api-token-file``) holds one token per line, optionally ``name:token``;
blank lines and ``#`` comments are ignored. A request's ``Authorization: Bearer <token>`` is
compared in constant time with every token; the matching token's name (``token-N`` for an
unnamed N-th token) becomes the actor ``api:<name>``. Without a token file, ``/v1/*`` serves
loopback clients only, with no token. Tokens never reach a log line or an error text.
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
from lifecycled.errors import ConfigError
from lifecycled.web.errors import ApiError

log = logging.getLogger("lifecycled.web")

#: Paths under this prefix need a token (or, without a token file, a loopback client).
PROTECTED_PREFIX = "/v1/"
#: The actor of a request served in loopback-only mode.
LOOPBACK_ACTOR = "api:loopback"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$")


@attrs.frozen(kw_only=True)
class ApiToken:
    """One accepted bearer token and the name it acts under."""

    name: str
    secret: bytes = attrs.field(repr=False)

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
        name, sep, secret = line.partition(":")
        if not sep:
            name, secret = f"token-{len(tokens) + 1}", line
        elif not _NAME_RE.fullmatch(name):
            raise ConfigError(
                f"API token file {source}, line {lineno}: the name before ':' must be 1-64 "
                "letters, digits, '.', '_' or '-'"
            )
        if not secret or any(c.isspace() for c in secret):
            raise ConfigError(
                f"API token file {source}, line {lineno}: the token must be non-empty "
                "and without spaces"
            )
        if name in names:
            raise ConfigError(f"API token file {source}, line {lineno}: duplicate name {name!r}")
        names.add(name)
        tokens.append(ApiToken(name=name, secret=secret.encode("utf-8")))
    if not tokens:
        raise ConfigError(
            f"API token file {source} holds no token: one token per line, optionally name:token"
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
class Authenticator:
    """Decides who a request acts as; ``tokens`` is ``None`` in loopback-only mode."""

    tokens: tuple[ApiToken, ...] | None

    def actor_for(self, authorization: str | None, remote: str | None) -> str:
        """The actor of a ``/v1/*`` request, or raise a 401/403 :class:`ApiError`."""
        if self.tokens is None:
            if client_is_loopback(remote):
                return LOOPBACK_ACTOR
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
        return token.actor


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
                    "without a token"
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
        log.info(
            "web.auth_tokens_loaded", extra={"tokens": len(tokens), "path": str(self.token_file)}
        )
        self.authenticator = Authenticator(tokens=tokens)
        return f"api tokens: {len(tokens)} from {self.token_file}"


AUTH_GATE_KEY = web.AppKey("auth_gate", AuthGate)
#: The actor of an authenticated request (``api:<name>``), set by :func:`auth_middleware`.
ACTOR_KEY = web.RequestKey("actor", str)


def is_protected(path: str) -> bool:
    return path.startswith(PROTECTED_PREFIX) or path == PROTECTED_PREFIX.rstrip("/")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate ``/v1/*``; everything else (health, metrics, OpenAPI) is public."""
    if is_protected(request.path):
        authenticator = request.app[AUTH_GATE_KEY].authenticator
        if authenticator is None:
            raise ApiError(503, "not_ready", "authentication is not set up yet")
        request[ACTOR_KEY] = authenticator.actor_for(
            request.headers.get("Authorization"), request.remote
        )
    return await handler(request)


def request_actor(request: web.Request) -> str:
    """The actor the auth middleware set for this request."""
    return request[ACTOR_KEY]
