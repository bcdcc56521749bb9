"""Signed push requests (Standard Webhooks, https://www.standardwebhooks.com/) — pure.

Every request lifecycled pushes to the control plane carries three headers::

    webhook-id:         a unique id of this delivery attempt's message (``msg_…``)
    webhook-timestamp:  epoch seconds when it was signed
    webhook-signature:  v1,<base64 of HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>

The secret is the ``--push-secret-file``'s one line, ``whsec_`` followed by the base64 of
at least 24 random bytes (the form the Standard Webhooks libraries generate and accept). The
receiver recomputes the HMAC over the exact body bytes it received, compares in constant
time, and refuses timestamps more than a few minutes away (docs/PUSH.md).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from lifecycled.errors import ConfigError

SECRET_PREFIX = "whsec_"  # noqa: S105 - the secret format's prefix, not a secret
ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
_MIN_SECRET_BYTES = 24
_MAX_SECRET_BYTES = 64


def parse_secret(text: str) -> bytes:
    """The HMAC key of a push secret file's text (``whsec_<base64>``); ConfigError otherwise."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("#")]
    if len(lines) != 1 or not lines[0].startswith(SECRET_PREFIX):
        raise ConfigError(
            "the push secret file must hold one line whsec_<base64> (e.g. whsec_ followed by "
            "the base64 of 32 random bytes: openssl rand -base64 32)"
        )
    try:
        key = base64.b64decode(lines[0].removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("the push secret after whsec_ is not valid base64") from None
    if not _MIN_SECRET_BYTES <= len(key) <= _MAX_SECRET_BYTES:
        raise ConfigError(
            f"the push secret must decode to {_MIN_SECRET_BYTES}-{_MAX_SECRET_BYTES} bytes "
            f"(got {len(key)})"
        )
    return key


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256>`` of ``{msg_id}.{timestamp}.{body}``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def headers(key: bytes, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers of one request."""
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(key, msg_id, timestamp, body),
    }
