"""Signed destructive ops (SPEC §4) — pure: the trusted key file, the canonical string, and
the verdict on a request's signature headers. Replays are the journal's job (``nonces``).

A signing client sends five headers with a destructive request (a ``POST /v1/ops`` that
:func:`lifecycled.domain.actions.is_destructive` calls destructive, or the retry of such a
dead letter)::

    X-Lifecycled-Signature-Version:  v2 (the version of the canonical string below)
    X-Lifecycled-Key-Id:             the id of a key in the trusted keys file
    X-Lifecycled-Timestamp:          epoch seconds (e.g. 1732291200) or RFC 3339
    X-Lifecycled-Nonce:              16-128 characters of A-Z a-z 0-9 - _ . = (fresh each time)
    X-Lifecycled-Signature:          base64 of the ed25519 signature of the canonical string

The v2 canonical string is eight lines joined by ``\\n`` (no trailing newline)::

    v2                the signature version
    METHOD            upper case, e.g. POST
    PATH              the request target as sent, e.g. /v1/ops
    NODE              the node the daemon serves (its --node, ``node`` in /v1/status)
    IDEMPOTENCY_KEY   the Idempotency-Key header verbatim, or an empty line without it
    TIMESTAMP         the X-Lifecycled-Timestamp header, verbatim
    NONCE             the X-Lifecycled-Nonce header, verbatim
    HEX_SHA256(BODY)  lower-case hex SHA-256 of the exact body bytes

A request signed for another sidecar (another node) or with its Idempotency-Key header
changed does not verify. A request without the version header (a v1 client: five lines, no
node, no key) or with another version is refused with ``signature_version_unsupported``.

The trusted keys file holds one key per line, ``KEYID ed25519 BASE64``, where ``BASE64`` is
the 32-byte raw public key (or its 44-byte DER SubjectPublicKeyInfo); blank lines and ``#``
comments are ignored. Several keys may be trusted at once (rotation: add the new key, move
the clients, remove the old one).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import math
import re
from collections.abc import Mapping

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lifecycled.errors import ConfigError

VERSION_HEADER = "X-Lifecycled-Signature-Version"
KEY_ID_HEADER = "X-Lifecycled-Key-Id"
TIMESTAMP_HEADER = "X-Lifecycled-Timestamp"
NONCE_HEADER = "X-Lifecycled-Nonce"
SIGNATURE_HEADER = "X-Lifecycled-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
HEADERS = (KEY_ID_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER)
#: The one canonical-string version this server verifies.
VERSION = "v2"

ALGORITHM = "ed25519"
KEY_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$")
NONCE_RE = re.compile(r"^[A-Za-z0-9_\-.=]{16,128}$")
_RAW_KEY_BYTES = 32
_SIGNATURE_BYTES = 64
_MAX_TIMESTAMP_CHARS = 40

#: Stable refusal codes (the ``error.code`` of the HTTP answer).
SIGNATURE_REQUIRED = "signature_required"
SIGNATURE_INVALID = "signature_invalid"
SIGNATURE_EXPIRED = "signature_expired"
UNKNOWN_KEY = "unknown_key"
NONCE_REPLAYED = "nonce_replayed"
SIGNATURE_VERSION_UNSUPPORTED = "signature_version_unsupported"


@attrs.frozen(kw_only=True)
class TrustedKey:
    """One trusted ed25519 public key and its id."""

    key_id: str
    public_key: Ed25519PublicKey = attrs.field(eq=False, repr=False)


@attrs.frozen(kw_only=True)
class SignatureRefused:
    """A refused signature: a stable ``code`` and a ``reason`` for people."""

    code: str
    reason: str


@attrs.frozen(kw_only=True)
class SignatureAccepted:
    """A valid signature; the nonce must still be recorded (a replay is refused)."""

    key_id: str
    nonce: str
    signed_at: float
    #: Until when the nonce must be remembered: after it, the timestamp alone refuses it.
    nonce_expires_at: float


# --- keys -------------------------------------------------------------------------------------


def public_key_from_base64(text: str) -> Ed25519PublicKey:
    """An ed25519 public key from base64 of its 32 raw bytes or its DER SubjectPublicKeyInfo."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the key is not valid base64") from None
    if len(raw) == _RAW_KEY_BYTES:
        return Ed25519PublicKey.from_public_bytes(raw)
    try:
        key = serialization.load_der_public_key(raw)
    except ValueError:
        raise ValueError("expected 32 raw bytes or a DER SubjectPublicKeyInfo") from None
    if isinstance(key, Ed25519PublicKey):
        return key
    raise ValueError("the key is not an ed25519 key")


def public_key_base64(key: Ed25519PublicKey) -> str:
    """The base64 of the 32 raw bytes of ``key`` (the trusted keys file's form)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def trusted_key_line(key_id: str, key: Ed25519PublicKey) -> str:
    """One line of the trusted keys file."""
    return f"{key_id} {ALGORITHM} {public_key_base64(key)}"


def parse_trusted_keys(text: str, source: str) -> dict[str, TrustedKey]:
    """The keys of a trusted keys file's text; :class:`ConfigError` names the bad line."""
    keys: dict[str, TrustedKey] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"trusted keys file {source}, line {lineno}"
        parts = line.split()
        if len(parts) != 3:
            raise ConfigError(f"{where}: expected KEYID ed25519 BASE64-PUBLIC-KEY")
        key_id, algorithm, encoded = parts
        if not KEY_ID_RE.fullmatch(key_id):
            raise ConfigError(f"{where}: the key id must be 1-64 letters, digits, '.', '_' or '-'")
        if algorithm.lower() != ALGORITHM:
            raise ConfigError(f"{where}: unsupported algorithm {algorithm!r}; only ed25519")
        if key_id in keys:
            raise ConfigError(f"{where}: duplicate key id {key_id!r}")
        try:
            public = public_key_from_base64(encoded)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        keys[key_id] = TrustedKey(key_id=key_id, public_key=public)
    if not keys:
        raise ConfigError(
            f"trusted keys file {source} holds no key: one KEYID ed25519 BASE64 line per key"
        )
    return keys


# --- the canonical string ---------------------------------------------------------------------


def body_digest(body: bytes) -> str:
    """Lower-case hex SHA-256 of the body."""
    return hashlib.sha256(body).hexdigest()


def canonical_string(
    method: str,
    path: str,
    timestamp: str,
    nonce: str,
    body: bytes,
    *,
    node: str,
    idempotency_key: str | None,
) -> bytes:
    """The v2 canonical string as UTF-8 — what is signed (see the module docstring)."""
    lines = (
        VERSION,
        method.upper(),
        path,
        node,
        idempotency_key or "",
        timestamp,
        nonce,
        body_digest(body),
    )
    return "\n".join(lines).encode("utf-8")


def parse_timestamp(text: str) -> float:
    """Epoch seconds from ``1732291200`` (or with a fraction) or RFC 3339; ValueError otherwise."""
    raw = text.strip()
    if not raw or len(raw) > _MAX_TIMESTAMP_CHARS:
        raise ValueError("empty or too long")
    if re.fullmatch(r"\d+(\.\d+)?", raw):
        value = float(raw)
    else:
        parsed = dt.datetime.fromisoformat(raw.replace("z", "Z").replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            raise ValueError("an RFC 3339 timestamp needs a time zone (Z or +00:00)")
        value = parsed.timestamp()
    if not math.isfinite(value):
        raise ValueError("not finite")
    return value


def sign(
    private_key: Ed25519PrivateKey,
    *,
    key_id: str,
    method: str,
    path: str,
    body: bytes,
    timestamp: str,
    nonce: str,
    node: str,
    idempotency_key: str | None = None,
) -> dict[str, str]:
    """The five signature headers for one request (the client side; used by tests and tools).

    ``idempotency_key`` is the Idempotency-Key *header* the request will carry (if any)."""
    canonical = canonical_string(
        method, path, timestamp, nonce, body, node=node, idempotency_key=idempotency_key
    )
    return {
        VERSION_HEADER: VERSION,
        KEY_ID_HEADER: key_id,
        TIMESTAMP_HEADER: timestamp,
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: base64.b64encode(private_key.sign(canonical)).decode("ascii"),
    }


# --- verification -----------------------------------------------------------------------------


def verify(
    keys: Mapping[str, TrustedKey],
    *,
    method: str,
    path: str,
    body: bytes,
    headers: Mapping[str, str],
    node: str,
    now: float,
    skew: float,
) -> SignatureAccepted | SignatureRefused:
    """The verdict on a request's signature headers (``headers`` may hold others too);
    ``node`` is the node this daemon serves."""
    values = {name: headers.get(name) for name in HEADERS}
    missing = [name for name, value in values.items() if not value]
    if len(missing) == len(HEADERS):
        return SignatureRefused(
            code=SIGNATURE_REQUIRED,
            reason=(
                f"a destructive op needs a {VERSION} signature from a trusted key; missing "
                + ", ".join((VERSION_HEADER, *missing))
            ),
        )
    version = headers.get(VERSION_HEADER)
    if version != VERSION:
        shown = "none" if not version else repr(version[:16])
        return SignatureRefused(
            code=SIGNATURE_VERSION_UNSUPPORTED,
            reason=(
                f"signature version {shown} is not supported: this server verifies {VERSION} "
                f"only (send {VERSION_HEADER}: {VERSION} and sign the {VERSION} canonical "
                "string, which adds the served node and the Idempotency-Key header)"
            ),
        )
    if missing:
        return SignatureRefused(
            code=SIGNATURE_REQUIRED,
            reason=(
                "a destructive op needs a signature from a trusted key; missing "
                + ", ".join(missing)
            ),
        )
    key_id = str(values[KEY_ID_HEADER])
    stamp = str(values[TIMESTAMP_HEADER])
    nonce = str(values[NONCE_HEADER])
    encoded = str(values[SIGNATURE_HEADER])
    key = keys.get(key_id)
    if key is None:
        shown = key_id if KEY_ID_RE.fullmatch(key_id) else "(malformed)"
        return SignatureRefused(code=UNKNOWN_KEY, reason=f"key id {shown} is not trusted")
    if not NONCE_RE.fullmatch(nonce):
        return SignatureRefused(
            code=SIGNATURE_INVALID,
            reason=f"{NONCE_HEADER} must be 16-128 characters of A-Z a-z 0-9 - _ . =",
        )
    try:
        signed_at = parse_timestamp(stamp)
    except ValueError:
        return SignatureRefused(
            code=SIGNATURE_INVALID,
            reason=f"{TIMESTAMP_HEADER} must be epoch seconds or an RFC 3339 time with a zone",
        )
    try:
        signature = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        signature = b""
    if len(signature) != _SIGNATURE_BYTES:
        return SignatureRefused(
            code=SIGNATURE_INVALID, reason=f"{SIGNATURE_HEADER} is not a base64 ed25519 signature"
        )
    try:
        canonical = canonical_string(
            method,
            path,
            stamp,
            nonce,
            body,
            node=node,
            idempotency_key=headers.get(IDEMPOTENCY_HEADER),
        )
        key.public_key.verify(signature, canonical)
    except InvalidSignature:
        return SignatureRefused(
            code=SIGNATURE_INVALID,
            reason=(
                f"the signature does not match the request for key {key_id} (signed for "
                f"another node than {node}, another body, path or Idempotency-Key?)"
            ),
        )
    if abs(now - signed_at) > skew:
        return SignatureRefused(
            code=SIGNATURE_EXPIRED,
            reason=(
                f"the signature's timestamp is {round(now - signed_at)} s away from this "
                f"server's clock; at most {skew:g} s is accepted (check NTP)"
            ),
        )
    return SignatureAccepted(
        key_id=key_id,
        nonce=nonce,
        signed_at=signed_at,
        nonce_expires_at=max(signed_at, now) + skew,
    )
