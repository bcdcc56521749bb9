"""Typer options shared by the commands that need :class:`Settings` (defined once here).

Every option defaults to ``None`` so that :func:`lifecycled.config.load_settings` can tell a
flag that was given from one that was not (precedence flag > env > file > default).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from lifecycled.config import Settings, load_settings

#: Where the ``--config`` value is kept for the other options' callbacks (``--db``).
CONFIG_KEY = "lifecycled.config"


def _remember_config(ctx: typer.Context, value: Path | None) -> Path | None:
    ctx.meta[CONFIG_KEY] = value
    return value


ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        envvar="LIFECYCLED_CONFIG",
        is_eager=True,
        callback=_remember_config,
        help="TOML config file [default: /etc/lifecycled/lifecycled.toml if present].",
    ),
]
DbOpt = Annotated[
    Path | None,
    typer.Option("--db", help="Journal file [env LIFECYCLED_DB; default data/lifecycled.sqlite3]."),
]
ListenOpt = Annotated[
    str | None, typer.Option("--listen", help="HTTP HOST:PORT [default 127.0.0.1:8090].")
]
TlsCertFileOpt = Annotated[
    Path | None,
    typer.Option("--tls-cert-file", help="PEM certificate (chain) the API serves TLS with."),
]
TlsKeyFileOpt = Annotated[
    Path | None,
    typer.Option("--tls-key-file", help="PEM private key of --tls-cert-file (mode 0600)."),
]
TlsClientCaFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--tls-client-ca-file", help="Require client certificates signed by this CA (mTLS)."
    ),
]
InsecureListenOpt = Annotated[
    bool | None,
    typer.Option(
        "--insecure-listen/--no-insecure-listen",
        help="Serve a non-loopback --listen over plain HTTP (bearer tokens in clear text).",
        show_default=False,
    ),
]
NodeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--node",
        help="The Proxmox node(s) served: repeat or comma-separate [default: this host's name].",
    ),
]
PveUrlOpt = Annotated[
    str | None,
    typer.Option("--pve-url", help="Proxmox API origin [default https://127.0.0.1:8006]."),
]
PveBackendOpt = Annotated[
    str | None,
    typer.Option(
        "--pve-backend", help="http (default), proxmoxer-local, proxmoxer-ssh or proxmoxer-https."
    ),
]
PveTokenFileOpt = Annotated[
    Path | None,
    typer.Option("--pve-token-file", help="File with one line USER@REALM!TOKENID=SECRET."),
]
PveUserOpt = Annotated[
    str | None, typer.Option("--pve-user", help="User for ticket (password) or ssh access.")
]
PvePasswordFileOpt = Annotated[
    Path | None, typer.Option("--pve-password-file", help="File with the Proxmox password.")
]
PveCaFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--pve-ca-file", help="CA file to verify pveproxy (e.g. /etc/pve/pve-root-ca.pem)."
    ),
]
PveFingerprintOpt = Annotated[
    str | None,
    typer.Option("--pve-fingerprint", help="Pin pveproxy's SHA-256 certificate fingerprint."),
]
PveInsecureOpt = Annotated[
    bool | None,
    typer.Option(
        "--pve-insecure/--pve-verify",
        help="Skip TLS verification (warned in the log).",
        show_default=False,
    ),
]
ApiTokenFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--api-token-file",
        help="File of API tokens, one per line: name:role:token (role read, operate or admin).",
    ),
]
HttpTimeoutOpt = Annotated[
    str | None,
    typer.Option(
        "--http-timeout",
        help="A request head, an idle connection and a request body must arrive within this "
        "[default 20s].",
    ),
]
MaxConnectionsOpt = Annotated[
    int | None,
    typer.Option("--max-connections", help="HTTP connections served at once [default 256]."),
]
WriteRateOpt = Annotated[
    float | None,
    typer.Option(
        "--write-rate", help="Writes a second per API token, after the burst [default 20]."
    ),
]
WriteBurstOpt = Annotated[
    int | None,
    typer.Option("--write-burst", help="Writes at once per API token [default 100]."),
]
WorkersOpt = Annotated[
    int | None, typer.Option("--workers", help="Dispatcher coroutines [default 2].")
]
NodeCapOpt = Annotated[
    int | None, typer.Option("--node-cap", help="In-flight ops per node [default 3].")
]
MaxRetriesOpt = Annotated[
    int | None,
    typer.Option("--max-retries", help="Transient attempts before dead-lettering [default 5]."),
]
RetryBackoffOpt = Annotated[
    str | None, typer.Option("--retry-backoff", help="Backoff base, e.g. 10s [default 10s].")
]
MaxBackoffOpt = Annotated[
    str | None, typer.Option("--max-backoff", help="Backoff cap [default 5m].")
]
PollIntervalOpt = Annotated[
    str | None, typer.Option("--poll-interval", help="Task poll interval [default 2s].")
]
ReconcileIntervalOpt = Annotated[
    str | None, typer.Option("--reconcile-interval", help="Reconcile period [default 5m].")
]
ReconcileOnStartOpt = Annotated[
    bool | None,
    typer.Option(
        "--reconcile-on-start/--no-reconcile-on-start",
        help="Reconcile once at start [default on].",
        show_default=False,
    ),
]
StaleAfterOpt = Annotated[
    str | None,
    typer.Option(
        "--stale-after", help="In flight longer than this → the janitor looks [default 20m]."
    ),
]
StartupJitterOpt = Annotated[
    str | None,
    typer.Option("--startup-jitter", help="Random delay before the first reconcile [default 10s]."),
]
ReconcileMaxCommandsOpt = Annotated[
    int | None,
    typer.Option("--reconcile-max-commands", help="Most ops one reconcile pass enqueues [20]."),
]
ManageDiscoveredOpt = Annotated[
    str | None,
    typer.Option(
        "--manage-discovered",
        help="Unmanaged guests reconcile first finds: off (default), native or adopted.",
    ),
]
ProtectedOpt = Annotated[
    str | None,
    typer.Option("--protected", help="VMIDs never destroyed, comma-separated (e.g. 100,101)."),
]
TerminateStopTimeoutOpt = Annotated[
    str | None,
    typer.Option(
        "--terminate-stop-timeout",
        help="How long a terminate waits for its guest to stop [default 5m].",
    ),
]
SynchronousOpt = Annotated[
    str | None,
    typer.Option("--synchronous", help="SQLite durability: FULL (default), NORMAL or EXTRA."),
]
NotifyUrlOpt = Annotated[
    str | None,
    typer.Option("--notify-url", help="Push op and guest events to this control-plane URL."),
]
NotifyTokenFileOpt = Annotated[
    Path | None, typer.Option("--notify-token-file", help="Bearer token file for --notify-url.")
]
PushSecretFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--push-secret-file",
        help="Standard Webhooks secret (whsec_…) that signs every push to --notify-url.",
    ),
]
NotifyHeartbeatOpt = Annotated[
    str | None,
    typer.Option("--notify-heartbeat", help="Heartbeat period for --notify-url [default 30s]."),
]
NodeMinAgeOpt = Annotated[
    str | None,
    typer.Option("--node-min-age", help="A younger node is never decommissioned [default 7d]."),
]
SystemNodeOpt = Annotated[
    bool | None,
    typer.Option(
        "--system-node/--no-system-node",
        help="This node is a system node: never decommissioned [default off].",
        show_default=False,
    ),
]
TrustedKeysFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--trusted-keys-file",
        help="Trusted ed25519 keys (KEYID ed25519 BASE64 per line): destructive ops must be signed.",
    ),
]
SignatureSkewOpt = Annotated[
    str | None,
    typer.Option("--signature-skew", help="Accepted signature clock skew [default 5m]."),
]
LogFormatOpt = Annotated[str | None, typer.Option("--log-format", help="text (default) or json.")]
LogLevelOpt = Annotated[
    str | None, typer.Option("--log-level", help="debug, info (default), warning, error.")
]


def settings_from(config: Path | None, **flags: Any) -> Settings:
    """Settings from the given flags, the environment and the config file."""
    return load_settings(flags, env=os.environ, config_file=config)
