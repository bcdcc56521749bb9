"""The proxmoxer adapter: the same port over proxmoxer's backends (reference §7).

For hosts where no API token can be had: ``local`` (``pvesh`` on the node, as root),
``ssh_paramiko`` / ``openssh`` (``pvesh`` over ssh), or ``https`` with a password ticket or a
token. proxmoxer is blocking, so every call runs in a bounded thread pool, with a time limit
far above proxmoxer's 5 s default.

**Limit of the CLI backends.** ``pvesh`` runs workers synchronously (reference §4.7): a
lifecycle call returns only when its task has *ended*, and only then is the UPID known. A
crash while such a call is in flight leaves an op journaled without a UPID; the engine's
"no UPID yet" recovery (a task-list search by type, vmid, user and start time) is what keeps
this backend crash-safe. Lifecycle calls therefore use the (long) ``timeout`` of the backend,
and a timeout after sending is ambiguous: ``pvesh`` may still be running the task.

A pool thread cannot be interrupted: cancelling a call (or closing the client) abandons its
result, but the thread, and pvesh, run on until the call ends; Python joins pool threads at
interpreter exit, so a process exit can wait for pvesh calls still in flight.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from proxmoxer import ProxmoxAPI

from lifecycled.domain.userid import user_part
from lifecycled.errors import ConfigError
from lifecycled.pve.auth import TokenAuth
from lifecycled.pve.port import RequestHook
from lifecycled.pve.proxmoxer_client import CLI_BACKENDS, ProxmoxerPveClient
from lifecycled.pve.tls import TlsOptions

__all__ = [
    "BACKENDS",
    "CLI_BACKENDS",
    "CLI_TIMEOUT",
    "HTTPS_TIMEOUT",
    "ProxmoxerPveClient",
    "build_proxmoxer_client",
]

logger = logging.getLogger(__name__)

BACKENDS = CLI_BACKENDS | {"https"}
#: pvesh runs a lifecycle task to its end before answering: allow long tasks.
CLI_TIMEOUT = 600.0
HTTPS_TIMEOUT = 120.0


# --- factory ---------------------------------------------------------------------------------


def build_proxmoxer_client(
    backend: str,
    host: str | None = None,
    *,
    user: str | None = None,
    password: str | None = None,
    token: TokenAuth | None = None,
    tls: TlsOptions | None = None,
    timeout: float | None = None,
    max_workers: int = 4,
    on_request: RequestHook | None = None,
    **kwargs: Any,
) -> ProxmoxerPveClient:
    """A :class:`ProxmoxerPveClient` for one of proxmoxer's backends.

    * ``local``: ``pvesh`` on this node, as root (no host, no credentials);
    * ``ssh_paramiko`` / ``openssh``: ``pvesh`` over ssh to ``host`` as ``user`` (default
      ``root``; ``root@pam`` logs in as ``root``); other ``kwargs`` (``password``, ``private_key_file``, ``port``, ``sudo``…)
      go to proxmoxer;
    * ``https``: ``host`` (``HOST[:PORT]``) with a ``token`` (:class:`TokenAuth`) or
      ``user`` + ``password`` (ticket); ``tls`` maps to ``verify_ssl`` (a CA file, or
      insecure; fingerprint pinning is not available through requests).

    ``timeout`` (proxmoxer's, per call) defaults to 600 s for pvesh backends, whose lifecycle
    calls last as long as the task, and 120 s for https. Effective UPID user: the token user,
    the ticket user, or ``root@pam`` for pvesh (override with ``effective_user=``).
    """
    if backend not in BACKENDS:
        raise ConfigError(
            f"unknown proxmoxer backend {backend!r}: choose one of {', '.join(sorted(BACKENDS))}"
        )
    effective_user = kwargs.pop("effective_user", None)
    limit = (
        timeout
        if timeout is not None
        else (CLI_TIMEOUT if backend in CLI_BACKENDS else HTTPS_TIMEOUT)
    )
    options: dict[str, Any] = {"backend": backend, "timeout": limit, **kwargs}
    secrets: list[str] = []
    if backend == "local":
        if host is not None:
            raise ConfigError("the local proxmoxer backend runs pvesh on this node: give no host")
        uid = effective_user or "root@pam"
    elif backend in ("ssh_paramiko", "openssh"):
        if not host:
            raise ConfigError(f"the {backend} backend needs a host")
        module = "paramiko" if backend == "ssh_paramiko" else "openssh_wrapper"
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"the {backend} backend needs the {module} package installed")
        # The ssh login: a Proxmox user id (root@pam) names the system user before the realm.
        options["user"] = user_part(user or "root")
        if password is not None:
            options["password"] = password
            secrets.append(password)
        uid = effective_user or "root@pam"
    else:
        if not host:
            raise ConfigError("the https backend needs a host (HOST[:PORT])")
        if token is not None:
            options.update(
                user=token.user_name, token_name=token.token_name, token_value=token.secret
            )
            secrets.append(token.secret)
            uid = effective_user or token.user
        elif user is not None and password is not None:
            options.update(user=user, password=password)
            secrets.append(password)
            uid = effective_user or user
        else:
            raise ConfigError("the https backend needs a token, or a user and a password")
        options["verify_ssl"] = _verify_ssl(tls or TlsOptions())
    connect_host = host if backend != "local" else None

    def connect() -> Any:
        return ProxmoxAPI(connect_host, **options)

    return ProxmoxerPveClient(
        connect,
        backend=backend,
        user=uid,
        timeout=limit,
        max_workers=max_workers,
        on_request=on_request,
        secrets=secrets,
    )


def _verify_ssl(tls: TlsOptions) -> bool | str:
    if tls.fingerprint is not None:
        raise ConfigError(
            "certificate fingerprint pinning is not available with the proxmoxer https "
            "backend: use a CA file, or the default aiohttp client"
        )
    if tls.insecure:
        logger.warning(
            "pve.tls_insecure",
            extra={"detail": "certificate verification is disabled for the Proxmox API"},
        )
        return False
    return tls.ca_file if tls.ca_file is not None else True
