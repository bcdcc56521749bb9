"""Settings and how they are loaded: flag > environment (``LIFECYCLED_*``) > TOML file > default.

Nothing else in lifecycled reads ``os.environ``. Secrets are never settings values: the
settings hold the *paths* of the files that contain them.
"""

from __future__ import annotations

import enum
import ipaddress
import math
import os
import socket
import stat
import struct
import tomllib
import urllib.parse
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from lifecycled.domain import polling
from lifecycled.domain.durations import format_duration, parse_duration
from lifecycled.errors import ConfigError

ENV_PREFIX = "LIFECYCLED_"


def default_node() -> str:
    """This host's short name: the default ``--node``."""
    return _default_node()


def _default_node() -> str:
    return socket.gethostname().split(".", 1)[0] or "localhost"


# -- the choices ------------------------------------------------------------------------------


class PveBackend(enum.StrEnum):
    """The Proxmox client (docs/PVE_CLIENT.md)."""

    HTTP = "http"
    PROXMOXER_LOCAL = "proxmoxer-local"
    PROXMOXER_SSH = "proxmoxer-ssh"
    PROXMOXER_HTTPS = "proxmoxer-https"


class Synchronous(enum.StrEnum):
    """SQLite's ``PRAGMA synchronous`` for the journal."""

    NORMAL = "NORMAL"
    FULL = "FULL"
    EXTRA = "EXTRA"


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class EventLoop(enum.StrEnum):
    """The event loop ``lifecycled run`` runs on (:mod:`lifecycled.eventloop`)."""

    UVLOOP = "uvloop"
    ASYNCIO = "asyncio"


class ManageDiscovered(enum.StrEnum):
    """What reconcile does with the unmanaged guests it finds (SPEC §2)."""

    OFF = "off"
    NATIVE = "native"
    ADOPTED = "adopted"


# -- what a setting is --------------------------------------------------------------------------


class Kind(enum.Enum):
    """How a setting's value is written (flag, ``LIFECYCLED_*`` variable or TOML key)."""

    TEXT = "text"
    PATH = "path"
    INT = "int"
    NUMBER = "number"
    DURATION = "duration"
    BOOL = "bool"
    CHOICE = "choice"
    VMIDS = "vmids"
    NODES = "nodes"


#: What a value of each kind must look like (said in type errors).
_EXPECTED = {
    Kind.TEXT: "a string",
    Kind.PATH: "a file path",
    Kind.INT: "a whole number",
    Kind.NUMBER: "a number",
    Kind.DURATION: "a duration such as 10s or a number of seconds",
    Kind.BOOL: "true or false",
    Kind.CHOICE: "a string",
    Kind.VMIDS: "a list of VMIDs",
    Kind.NODES: "a node name or a list of them",
}


class Scope(enum.Enum):
    """Which commands offer a setting as a flag. ``run`` offers every setting; every command
    reads every setting from the environment and the config file."""

    #: ``lifecycled run`` only.
    DAEMON = "daemon"
    #: Every command that opens the journal through the settings (``--db``).
    JOURNAL = "journal"
    #: Commands that act for the served node (``--node``).
    NODE = "node"
    #: Commands that read Proxmox (``--pve-*``).
    PROXMOX = "proxmox"
    #: ``run`` and ``node decommission``.
    NODE_LIFECYCLE = "node-lifecycle"


@attrs.frozen(kw_only=True)
class Spec:
    """A setting's declaration, kept in its :class:`Settings` field's metadata."""

    kind: Kind
    help: str
    scopes: frozenset[Scope] = frozenset({Scope.DAEMON})
    #: The flag when it is not ``--<name with dashes>`` (``--protected``).
    flag: str | None = None
    #: A boolean's "off" flag when it is not ``--no-<name>`` (``--pve-verify``).
    off_flag: str | None = None
    #: Inclusive bounds of a number (refused at start with one line).
    bounds: tuple[float, float] | None = None
    choices: type[enum.StrEnum] | None = None
    #: How the default reads when it is computed or absent (``this host's name``, ``none``).
    shown_default: str | None = None


_SPEC = "lifecycled.setting"


def _setting(
    default: Any,
    kind: Kind,
    help: str,
    *,
    factory: Any = None,
    **spec: Any,
) -> Any:
    """A :class:`Settings` field declared with its :class:`Spec` (one place per setting)."""
    choices = spec.get("choices")
    return attrs.field(
        default=attrs.Factory(factory) if factory is not None else default,
        converter=choices,  # an enum of choices also accepts its plain value
        metadata={_SPEC: Spec(kind=kind, help=help, **spec)},
    )


_HOUR, _DAY = 3600.0, 86400.0
_PVE = {"scopes": frozenset({Scope.DAEMON, Scope.PROXMOX}), "shown_default": "none"}
_NONE = {"shown_default": "none"}
_NODE_LIFECYCLE = frozenset({Scope.DAEMON, Scope.NODE_LIFECYCLE})


@attrs.frozen(kw_only=True)
class Settings:
    """Every option of lifecycled (SPEC §5 "Configuration"), validated.

    Each field is declared once, with its help, kind, bounds and the commands that offer it
    as a flag (:class:`Spec`); the TOML, environment and flag parsing, the typer options and
    docs/CONFIG.md are all made from these declarations.
    """

    # --- journal
    db: Path = _setting(
        Path("data/lifecycled.sqlite3"),
        Kind.PATH,
        "The SQLite journal, the source of truth for every op; keep it on local disk.",
        scopes=frozenset({Scope.DAEMON, Scope.JOURNAL}),
    )
    synchronous: Synchronous = _setting(
        Synchronous.FULL,
        Kind.CHOICE,
        "SQLite durability of each commit: FULL fsyncs every commit, NORMAL may lose the "
        "last ones on power loss, EXTRA also fsyncs the directory.",
        choices=Synchronous,
    )
    # --- HTTP API
    listen: str = _setting(
        "127.0.0.1:8090",
        Kind.TEXT,
        "HOST:PORT of the API, /healthz, /readyz and /metrics; a non-loopback address needs "
        "--api-token-file and TLS.",
    )
    tls_cert_file: Path | None = _setting(
        None, Kind.PATH, "PEM certificate (chain) the API serves TLS with.", **_NONE
    )
    tls_key_file: Path | None = _setting(
        None, Kind.PATH, "PEM private key of --tls-cert-file (mode 0600).", **_NONE
    )
    tls_client_ca_file: Path | None = _setting(
        None,
        Kind.PATH,
        "Require client certificates signed by this CA (mutual TLS).",
        **_NONE,
    )
    insecure_listen: bool = _setting(
        False,
        Kind.BOOL,
        "Serve a non-loopback --listen over plain HTTP (bearer tokens in clear text), only "
        "behind a TLS proxy on a private network.",
    )
    api_token_file: Path | None = _setting(
        None,
        Kind.PATH,
        "File of API tokens, one per line: name:role:token (role read, operate or admin); "
        "without it /v1/* serves loopback clients only.",
        **_NONE,
    )
    max_body_bytes: int = _setting(
        64 * 1024,
        Kind.INT,
        "Largest accepted request body in bytes (413 above it).",
        bounds=(1024, 16 * 1024 * 1024),
    )
    http_timeout: float = _setting(
        20.0,
        Kind.DURATION,
        "A request head, an idle connection and a request body must each arrive within this.",
        bounds=(0.5, _HOUR),
    )
    max_connections: int = _setting(
        256,
        Kind.INT,
        "HTTP connections served at once (one more is answered 503).",
        bounds=(1, 100_000),
    )
    write_rate: float = _setting(
        20.0,
        Kind.NUMBER,
        "Writes a second per API token (per peer without a token file), after the burst.",
        bounds=(0.01, 100_000),
    )
    write_burst: int = _setting(
        100,
        Kind.INT,
        "Writes at once per API token (per peer without a token file).",
        bounds=(1, 1_000_000),
    )
    # --- the Proxmox node and API
    node: str = _setting(
        None,
        Kind.NODES,
        "The Proxmox node(s) served: repeat or comma-separate.",
        factory=_default_node,
        scopes=frozenset({Scope.DAEMON, Scope.NODE}),
        shown_default="this host's name",
    )
    pve_url: str = _setting(
        "https://127.0.0.1:8006",
        Kind.TEXT,
        "Proxmox API origin (/api2/json is appended).",
        scopes=_PVE["scopes"],
    )
    pve_backend: PveBackend = _setting(
        PveBackend.HTTP,
        Kind.CHOICE,
        "Proxmox client: http (API token), proxmoxer-local (pvesh on the node), "
        "proxmoxer-ssh or proxmoxer-https (password tickets).",
        choices=PveBackend,
        scopes=_PVE["scopes"],
    )
    pve_token_file: Path | None = _setting(
        None, Kind.PATH, "File with one line USER@REALM!TOKENID=SECRET.", **_PVE
    )
    pve_user: str | None = _setting(
        None, Kind.TEXT, "User for ticket (password) or ssh access (proxmoxer backends).", **_PVE
    )
    pve_password_file: Path | None = _setting(
        None, Kind.PATH, "File with the Proxmox password.", **_PVE
    )
    pve_ca_file: Path | None = _setting(
        None, Kind.PATH, "CA file to verify pveproxy, e.g. /etc/pve/pve-root-ca.pem.", **_PVE
    )
    pve_fingerprint: str | None = _setting(
        None, Kind.TEXT, "Pin pveproxy's SHA-256 certificate fingerprint.", **_PVE
    )
    pve_insecure: bool = _setting(
        False,
        Kind.BOOL,
        "Skip TLS verification of pveproxy (warned in the log; test labs only).",
        off_flag="--pve-verify",
        scopes=_PVE["scopes"],
    )
    # --- workers and retries
    workers: int = _setting(
        2,
        Kind.INT,
        "Dispatcher coroutines (ops claimed at once across all nodes).",
        bounds=(1, 256),
    )
    node_cap: int = _setting(3, Kind.INT, "Ops in flight per Proxmox node.", bounds=(1, 1024))
    max_retries: int = _setting(
        5, Kind.INT, "Transient attempts before an op is dead-lettered.", bounds=(1, 1000)
    )
    retry_backoff: float = _setting(
        10.0,
        Kind.DURATION,
        "Backoff base: min(max-backoff, retry-backoff × 2^(attempt-1)) with full jitter.",
        bounds=(0.01, _DAY),
    )
    max_backoff: float = _setting(
        300.0,
        Kind.DURATION,
        "Backoff cap (at least --retry-backoff).",
        bounds=(0.01, 7 * _DAY),
    )
    lock_wait_max: float = _setting(
        3600.0,
        Kind.DURATION,
        "How long an op keeps retrying while its guest is locked (backup, migrate, …) before "
        "it is dead-lettered.",
        bounds=(1.0, 7 * _DAY),
    )
    poll_interval: float = _setting(
        2.0,
        Kind.DURATION,
        "Task tracking: a task that has ended is noticed at most this long after its end (a "
        "status read per running task at least this often, unless a task list shows it ended; "
        f"up to {polling.READ_RATE:g} reads/s per node, enough for "
        f"{polling.READ_RATE * (1 - polling.READ_ALLOWANCE):g} x this many seconds of long "
        "tasks).",
        bounds=(0.01, _HOUR),
    )
    stale_after: float = _setting(
        1200.0,
        Kind.DURATION,
        "An op in flight longer than this is re-examined by the janitor (read-only).",
        bounds=(1.0, 30 * _DAY),
    )
    task_search_skew: float = _setting(
        5.0,
        Kind.DURATION,
        "Clock slack when searching a node's task list for a task started after the claim.",
        bounds=(0.0, _HOUR),
    )
    # --- reconcile
    reconcile_interval: float = _setting(
        300.0,
        Kind.DURATION,
        "Period of the desired-vs-observed comparison.",
        bounds=(0.1, 7 * _DAY),
    )
    reconcile_on_start: bool = _setting(
        True, Kind.BOOL, "Reconcile once at start (after Recover and --startup-jitter)."
    )
    startup_jitter: float = _setting(
        10.0,
        Kind.DURATION,
        "Random delay before the first reconcile.",
        bounds=(0.0, _DAY),
    )
    reconcile_max_commands: int = _setting(
        20,
        Kind.INT,
        "Most convergent ops one reconcile pass enqueues (0: none).",
        bounds=(0, 100_000),
    )
    manage_discovered: ManageDiscovered = _setting(
        ManageDiscovered.OFF,
        Kind.CHOICE,
        "What reconcile does with the unmanaged guests it finds on the node: off (list them "
        "as discovered), native or adopted.",
        choices=ManageDiscovered,
    )
    # --- safety
    protected_vmids: frozenset[int] = _setting(
        frozenset(),
        Kind.VMIDS,
        "VMIDs never destroyed, comma-separated, e.g. 100,101 (a TOML array in the file).",
        flag="--protected",
        shown_default="none",
    )
    terminate_stop_timeout: float = _setting(
        300.0,
        Kind.DURATION,
        "How long a terminate waits for its guest to stop before it fails (guest kept).",
        bounds=(0.1, _DAY),
    )
    # --- push notifications
    notify_url: str | None = _setting(
        None, Kind.TEXT, "Push op and guest events to this control-plane URL.", **_NONE
    )
    notify_token_file: Path | None = _setting(
        None, Kind.PATH, "Bearer token file for --notify-url.", **_NONE
    )
    push_secret_file: Path | None = _setting(
        None,
        Kind.PATH,
        "Standard Webhooks secret (whsec_…) that signs every push to --notify-url.",
        **_NONE,
    )
    notify_heartbeat: float = _setting(
        30.0, Kind.DURATION, "Heartbeat period towards --notify-url.", bounds=(0.1, _DAY)
    )
    # --- node lifecycle and signed destructive ops (SPEC §4)
    node_min_age: float = _setting(
        7 * _DAY,
        Kind.DURATION,
        "A node first seen less than this long ago is never decommissioned.",
        bounds=(0.0, 3650 * _DAY),
        scopes=_NODE_LIFECYCLE,
    )
    system_node: bool = _setting(
        False,
        Kind.BOOL,
        "This node runs the cluster's own services: never decommissioned.",
        scopes=_NODE_LIFECYCLE,
    )
    trusted_keys_file: Path | None = _setting(
        None,
        Kind.PATH,
        "Trusted ed25519 keys (KEYID ed25519 BASE64 per line): destructive ops must be signed.",
        **_NONE,
    )
    signature_skew: float = _setting(
        300.0,
        Kind.DURATION,
        "Accepted clock skew of a signature's timestamp.",
        bounds=(1.0, _DAY),
    )
    # --- logs
    log_format: LogFormat = _setting(
        LogFormat.TEXT,
        Kind.CHOICE,
        "text (reads well in journalctl) or json (one object per line).",
        choices=LogFormat,
    )
    log_level: LogLevel = _setting(
        LogLevel.INFO, Kind.CHOICE, "The lowest level logged.", choices=LogLevel
    )
    # --- process
    event_loop: EventLoop = _setting(
        EventLoop.UVLOOP,
        Kind.CHOICE,
        "uvloop (libuv; less CPU per op, docs/BENCHMARKS.md) or asyncio (Python's own loop, "
        "if uvloop ever misbehaves on a host).",
        choices=EventLoop,
    )

    @property
    def nodes(self) -> tuple[str, ...]:
        """The nodes this daemon serves (``--node``, comma-separated or repeated; SPEC §7)."""
        return tuple(n for n in self.node.split(",") if n)

    @property
    def primary_node(self) -> str:
        """The first served node: the one whose lifecycle row this daemon keeps."""
        return self.nodes[0]

    @property
    def listen_host(self) -> str:
        return _split_listen(self.listen)[0]

    @property
    def listen_port(self) -> int:
        return _split_listen(self.listen)[1]


@attrs.frozen(kw_only=True)
class Option:
    """One setting as every face sees it: its name, declaration and default."""

    name: str
    spec: Spec
    default: Any

    @property
    def env(self) -> str:
        """Its environment variable, ``LIFECYCLED_<NAME>``."""
        return ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        return self.spec.flag or "--" + self.name.replace("_", "-")

    @property
    def off_flag(self) -> str | None:
        """The "off" flag of a boolean (``--no-<name>`` unless declared)."""
        if self.spec.kind is not Kind.BOOL:
            return None
        return self.spec.off_flag or "--no-" + self.flag.removeprefix("--")

    @property
    def default_text(self) -> str:
        """The default as an operator writes it (``10s``, ``2``, ``true``, ``none``)."""
        if self.spec.shown_default is not None:
            return self.spec.shown_default
        value = self.default
        if self.spec.kind is Kind.DURATION:
            return format_duration(value)
        if self.spec.kind is Kind.BOOL:
            return "true" if value else "false"
        return str(value)


def _options() -> dict[str, Option]:
    defaults = Settings()
    return {
        f.name: Option(name=f.name, spec=f.metadata[_SPEC], default=getattr(defaults, f.name))
        for f in attrs.fields(Settings)
    }


#: Every setting, in declaration order.
OPTIONS: Mapping[str, Option] = _options()

#: Keys an older lifecycled read and this one ignores (with a warning), and why.
REMOVED: Mapping[str, str] = {
    "ha_confirm_timeout": "it never had any effect",
}


class ConfigWarning(UserWarning):
    """A config file key that no longer has any effect (it is ignored); delete it."""


def _split_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"--listen {value!r}: expected HOST:PORT, e.g. 127.0.0.1:8090")
    host = host.strip("[]")
    try:
        port_no = int(port)
    except ValueError:
        raise ConfigError(f"--listen {value!r}: the port must be a number") from None
    if not 0 <= port_no <= 65535:
        raise ConfigError(f"--listen {value!r}: the port must be 0-65535")
    return host, port_no


def is_loopback(host: str) -> bool:
    """Whether ``host`` names a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: Largest secret file read (a token, a key list, a password).
MAX_SECRET_BYTES = 1024 * 1024


def _vmid_set(value: Any) -> frozenset[int]:
    """VMIDs from a comma list (``"100,101"``), a TOML array or a single number."""
    if isinstance(value, frozenset | set | list | tuple):
        items = list(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        items = [value]
    else:
        items = [part for part in str(value).replace(" ", "").split(",") if part]
    out: set[int] = set()
    for item in items:
        if isinstance(item, bool) or not str(item).isdigit() or not 100 <= int(item) <= 999_999_999:
            raise ValueError(f"{item!r} is not a VMID (an integer from 100 to 999999999)")
        out.add(int(item))
    return frozenset(out)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_type(kind: Kind, value: Any) -> None:
    """A TOML value of the wrong type (a table, an array, a number for a name, …)."""
    accepted = {
        Kind.BOOL: isinstance(value, bool),
        Kind.INT: isinstance(value, int) and not isinstance(value, bool),
        Kind.NUMBER: _is_number(value),
        Kind.DURATION: _is_number(value),
        Kind.PATH: isinstance(value, os.PathLike),
        Kind.VMIDS: isinstance(value, list | tuple | set | frozenset | int)
        and not isinstance(value, bool),
        Kind.NODES: isinstance(value, list | tuple) and all(isinstance(v, str) for v in value),
    }
    if isinstance(value, str) or accepted.get(kind, False):
        return
    raise ValueError(f"expected {_EXPECTED[kind]}, got {type(value).__name__} {value!r:.40}")


def _parse(option: Option, value: Any) -> Any:
    """``value`` (a flag's, a variable's text or a TOML value) as the setting's type."""
    kind = option.spec.kind
    _check_type(kind, value)
    if kind is Kind.VMIDS:
        return _vmid_set(value)
    if kind is Kind.NODES:
        from lifecycled.domain.cluster import parse_nodes

        return ",".join(parse_nodes(value if isinstance(value, list | tuple) else str(value)))
    if kind is Kind.DURATION:
        seconds = float(value) if _is_number(value) else parse_duration(str(value))
        if not math.isfinite(seconds):
            raise ValueError(f"{value!r} is not a finite duration")
        return seconds
    if kind is Kind.BOOL:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {value!r}")
    if kind is Kind.INT:
        return int(str(value).strip()) if isinstance(value, str) else int(value)
    if kind is Kind.NUMBER:
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"{value!r} is not a finite number")
        return number
    if kind is Kind.PATH:
        text = os.fspath(value)
        if not text or "\x00" in text:
            raise ValueError("expected a file path")
        return Path(text).expanduser()
    if "\x00" in value:
        raise ValueError("a NUL character is not allowed")
    if kind is Kind.CHOICE:
        assert option.spec.choices is not None
        try:
            return option.spec.choices(value)
        except ValueError:
            names = ", ".join(c.value for c in option.spec.choices)
            raise ValueError(f"{option.name} must be one of {names}, not {value!r}") from None
    return str(value)


def _coerce(name: str, value: Any, where: str) -> Any:
    try:
        return None if value is None else _parse(OPTIONS[name], value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _bounds_problems(s: Settings) -> list[str]:
    problems = []
    for option in OPTIONS.values():
        if option.spec.bounds is None:
            continue
        low, high = option.spec.bounds
        value = getattr(s, option.name)
        if not low <= value <= high:
            problems.append(f"{option.name} must be between {low:g} and {high:g} (got {value:g})")
    return problems


def _url_host(url: str) -> str:
    try:
        return urllib.parse.urlsplit(url).hostname or ""
    except ValueError:
        return ""


def _validate(s: Settings) -> Settings:
    for problem in _bounds_problems(s):
        raise ConfigError(problem)
    listen_host = _split_listen(s.listen)[0]
    public = not is_loopback(listen_host)
    tls = s.tls_cert_file is not None
    pve_host = _url_host(s.pve_url)
    checks: list[tuple[bool, str]] = [
        (s.max_backoff >= s.retry_backoff, "max_backoff must be at least retry_backoff"),
        (
            (s.tls_cert_file is None) == (s.tls_key_file is None),
            "--tls-cert-file and --tls-key-file go together",
        ),
        (tls or s.tls_client_ca_file is None, "--tls-client-ca-file needs --tls-cert-file"),
        (
            not public or s.api_token_file is not None,
            f"--listen {s.listen} is not a loopback address: without --api-token-file anyone "
            "who can reach it could act; give --api-token-file or listen on 127.0.0.1",
        ),
        (
            not public or tls or s.insecure_listen,
            f"--listen {s.listen} is not a loopback address: serve TLS (--tls-cert-file and "
            "--tls-key-file) or, behind a TLS proxy on a private network, say --insecure-listen",
        ),
        (
            not s.pve_url.startswith("http://") or is_loopback(pve_host),
            f"--pve-url {s.pve_url}: plain http:// is allowed only to a loopback host (the "
            "simulator); Proxmox is https://",
        ),
        (
            s.pve_url.startswith(("http://", "https://")) and bool(pve_host),
            "pve_url must be an https:// URL with a host",
        ),
        (bool(s.node), "node must not be empty"),
        (
            s.notify_url is None
            or (s.notify_url.startswith(("http://", "https://")) and bool(_url_host(s.notify_url))),
            "notify_url must be an http:// or https:// URL",
        ),
        (
            s.push_secret_file is None or s.notify_url is not None,
            "--push-secret-file needs --notify-url",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    return s


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    # Accept a top-level table or a [lifecycled] section; keys with dashes or underscores.
    section = data.get("lifecycled", data)
    if not isinstance(section, dict):
        raise ConfigError(f"config file {path}: [lifecycled] must be a table")
    return {str(k).replace("-", "_"): v for k, v in section.items()}


#: The config every command reads when neither ``--config`` nor ``LIFECYCLED_CONFIG`` names
#: one (the Debian package installs it).
SYSTEM_CONFIG = Path("/etc/lifecycled/lifecycled.toml")


def config_file_for(
    given: Path | None, env: Mapping[str, str] | None, system: Path | None = SYSTEM_CONFIG
) -> Path | None:
    """The config file in force: ``--config``, else ``LIFECYCLED_CONFIG``, else the system one if present."""
    if given is not None:
        return given
    if env is not None and env.get(ENV_PREFIX + "CONFIG"):
        return Path(env[ENV_PREFIX + "CONFIG"])
    if system is not None and system.is_file():
        return system
    return None


def load_settings(
    flags: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
    system_config: Path | None = SYSTEM_CONFIG,
) -> Settings:
    """Build :class:`Settings` with precedence flag > env > file > default.

    ``flags`` holds only the options given on the command line (``None`` means not given).
    ``env`` is the process environment (passed in by the entry point). The file is
    ``config_file``, else ``LIFECYCLED_CONFIG``, else ``system_config`` when it exists.
    """
    values: dict[str, Any] = {}
    config_file = config_file_for(config_file, env, system_config)
    if config_file is not None:
        for key, value in _read_toml(config_file).items():
            if key in REMOVED:
                warnings.warn(
                    f"config file {config_file}: {key} is ignored ({REMOVED[key]}); delete it",
                    ConfigWarning,
                    stacklevel=2,
                )
                continue
            if key not in OPTIONS:
                raise ConfigError(f"config file {config_file}: unknown option {key!r}")
            values[key] = _coerce(key, value, f"config file {config_file}: {key}")
    for option in OPTIONS.values():
        raw = (env or {}).get(option.env)
        if raw is not None and raw != "":
            values[option.name] = _coerce(option.name, raw, option.env)
    for name, value in (flags or {}).items():
        if value is None:
            continue
        if name not in OPTIONS:
            raise ConfigError(f"unknown option --{name.replace('_', '-')}")
        values[name] = _coerce(name, value, OPTIONS[name].flag)
    return _validate(Settings(**values))


_ACL_XATTR = "system.posix_acl_access"
_ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP, _ACL_MASK = 0x02, 0x04, 0x08, 0x10
_ACL_ENTRY = struct.Struct("<HHI")


def _open_to_others(fd: int, mode: int) -> bool:
    """Whether anyone but the file's owner and this process's user may read or write it.

    Without an ACL that is any group or other mode bit. With a POSIX ACL (systemd's
    ``LoadCredential=`` gives a ``User=`` service read access with ``user:<uid>:r--`` on a
    0400 root file, which ``stat`` shows as 0440: the group bits are the ACL mask), the
    entries decide: the owning group, a named group, or a named user other than us."""
    if mode & 0o007:
        return True
    try:
        raw = os.getxattr(fd, _ACL_XATTR)
    except (OSError, AttributeError):  # no ACL, no xattr support, or not Linux
        return bool(mode & 0o070)
    entries = [_ACL_ENTRY.unpack_from(raw, off) for off in range(4, len(raw), _ACL_ENTRY.size)]
    mask = next((perm for tag, perm, _ in entries if tag == _ACL_MASK), 0o7)
    for tag, perm, ident in entries:
        if not perm & mask:
            continue
        if tag in (_ACL_GROUP_OBJ, _ACL_GROUP) or (tag == _ACL_USER and ident != os.geteuid()):
            return True
    return False


def read_secret_text(path: Path, what: str, *, max_bytes: int = MAX_SECRET_BYTES) -> str:
    """The text of a secret file (a token, a key list, a password), checked: it exists, is a
    regular file, no larger than ``max_bytes``, UTF-8, and neither group nor others have any
    permission on it. :class:`ConfigError` says what is wrong in one line and never echoes
    the content."""
    try:
        with path.open("rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise ConfigError(f"{what} file {path} is not a regular file")
            loose = _open_to_others(fh.fileno(), mode)
            data = fh.read(max_bytes + 1)
    except FileNotFoundError:
        raise ConfigError(f"{what} file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} file {path} is a directory") from None
    except PermissionError:
        raise ConfigError(f"{what} file {path} is not readable (permission denied)") from None
    except OSError as exc:
        raise ConfigError(f"{what} file {path} cannot be read: {exc.strerror}") from None
    if loose:
        raise ConfigError(
            f"{what} file {path} is open to group or others (mode "
            f"{stat.S_IMODE(mode):04o}): make it owner-only with chmod 600 {path}"
        )
    if len(data) > max_bytes:
        raise ConfigError(f"{what} file {path} is larger than {max_bytes} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{what} file {path} is not UTF-8 text") from None


def read_secret_file(path: Path, what: str) -> str:
    """The first non-empty line of a secret file; clear errors that never echo the content."""
    text = read_secret_text(path, what)
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            return line.strip()
    raise ConfigError(f"{what} file {path} is empty")
