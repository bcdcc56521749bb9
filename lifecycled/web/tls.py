"""TLS for the API listener: ``--tls-cert-file``/``--tls-key-file`` (and, for client
certificates, ``--tls-client-ca-file``). A non-loopback ``--listen`` needs it unless the
operator says ``--insecure-listen`` (checked in :mod:`lifecycled.config`)."""

from __future__ import annotations

import ssl

from lifecycled.config import Settings, read_secret_text
from lifecycled.errors import ConfigError


def server_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The listener's TLS context (TLS 1.2 or newer), or ``None`` without a certificate.

    A missing, unreadable or mismatched certificate or key is a :class:`ConfigError` (one
    line at start); the key file must be owner-only like every secret file."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    cert, key = settings.tls_cert_file, settings.tls_key_file
    read_secret_text(key, "TLS key")  # exists, owner-only, readable
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except FileNotFoundError:
        raise ConfigError(f"TLS certificate file {cert} does not exist") from None
    except (ssl.SSLError, ValueError):
        raise ConfigError(
            f"TLS certificate {cert} and key {key} do not load as a PEM certificate chain "
            "and its private key"
        ) from None
    except OSError as exc:
        raise ConfigError(f"TLS certificate file {cert} cannot be read: {exc.strerror}") from None
    ca = settings.tls_client_ca_file
    if ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(ca))
        except FileNotFoundError:
            raise ConfigError(f"TLS client CA file {ca} does not exist") from None
        except (ssl.SSLError, ValueError):
            raise ConfigError(f"TLS client CA file {ca} holds no PEM certificate") from None
        except OSError as exc:
            raise ConfigError(f"TLS client CA file {ca} cannot be read: {exc.strerror}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
