"""How the client trusts pveproxy's certificate (reference §6 "TLS").

Exactly one of: verify against a CA file (``/etc/pve/pve-root-ca.pem`` on a node; its
certificates cover ``127.0.0.1``), pin the server certificate's SHA-256 fingerprint, or skip
verification (insecure; logged). With none of them, the system trust store is used.
"""

from __future__ import annotations

import logging
import re
import ssl

import aiohttp
import attrs

from lifecycled.errors import ConfigError

logger = logging.getLogger(__name__)

_HEX_RE = re.compile(r"^[0-9a-f]{64}$")


def normalize_fingerprint(text: str) -> str:
    """Lower-case hex of a SHA-256 fingerprint given as ``AA:BB:…`` or plain hex."""
    cleaned = text.strip().replace(":", "").lower()
    if not _HEX_RE.fullmatch(cleaned):
        raise ConfigError(
            "invalid certificate fingerprint: expected a SHA-256 digest as 64 hex digits, "
            "plain or colon-separated (AA:BB:…), as shown by "
            "`openssl x509 -noout -fingerprint -sha256`"
        )
    return cleaned


def _check_fingerprint(
    _inst: object, _attr: attrs.Attribute[str | None], value: str | None
) -> None:
    if value is not None:
        normalize_fingerprint(value)


@attrs.frozen(kw_only=True)
class TlsOptions:
    """TLS trust for ``https://`` URLs; ignored for plain ``http://`` (the simulator)."""

    ca_file: str | None = None
    fingerprint: str | None = attrs.field(default=None, validator=_check_fingerprint)
    insecure: bool = False

    def __attrs_post_init__(self) -> None:
        chosen = [
            name
            for name, on in (
                ("ca_file", self.ca_file is not None),
                ("fingerprint", self.fingerprint is not None),
                ("insecure", self.insecure),
            )
            if on
        ]
        if len(chosen) > 1:
            raise ConfigError(
                "choose one way to trust the Proxmox certificate: a CA file, a fingerprint "
                f"or insecure (got {', '.join(chosen)})"
            )

    @property
    def fingerprint_bytes(self) -> bytes | None:
        """The pinned SHA-256 digest, as bytes."""
        if self.fingerprint is None:
            return None
        return bytes.fromhex(normalize_fingerprint(self.fingerprint))


def ssl_for(tls: TlsOptions) -> ssl.SSLContext | aiohttp.Fingerprint | bool:
    """The value of aiohttp's ``ssl=`` for these options.

    Reads the CA file (a small PEM) synchronously: call it while building the client, not
    on the event loop's hot path.
    """
    if tls.insecure:
        logger.warning(
            "pve.tls_insecure",
            extra={"detail": "certificate verification is disabled for the Proxmox API"},
        )
        return False
    pinned = tls.fingerprint_bytes
    if pinned is not None:
        return aiohttp.Fingerprint(pinned)
    if tls.ca_file is not None:
        try:
            return ssl.create_default_context(cafile=tls.ca_file)
        except FileNotFoundError:
            raise ConfigError(f"Proxmox CA file {tls.ca_file} does not exist") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"Proxmox CA file {tls.ca_file} cannot be used: {exc.strerror or exc}"
            ) from None
    return True
