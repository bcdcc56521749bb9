"""Settings and how they are loaded: flag > environment (``LIFECYCLED_*``) > TOML file > default.

Nothing else in lifecycled reads ``os.environ``. Secrets are never settings values: the
settings hold the *paths* of the files that contain them.
"""

from __future__ import annotations

import ipaddress
import math
import os
import socket
import stat
import struct
import tomllib
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from lifecycled.domain.durations import parse_duration
from lifecycled.errors import ConfigError

ENV_PREFIX = "LIFECYCLED_"

_BACKENDS = ("http", "proxmoxer-local", "proxmoxer-ssh", "proxmoxer-https")
_SYNC_MODES = ("NORMAL", "FULL", "EXTRA")
_LOG_FORMATS = ("text", "json")
_LOG_LEVELS = ("debug", "info", "warning", "error")
_MANAGE_DISCOVERED = ("off", "native", "adopted")


def default_node() -> str:
    """This host's short name: the default ``--node``."""
    return _default_node()


def _default_node() -> str:
    return socket.gethostname().split(".", 1)[0] or "localhost"


@attrs.frozen(kw_only=True)
class Settings:
    """Every option of lifecycled (SPEC §5 "Configuration"), validated."""

    db: Path = Path("data/lifecycled.sqlite3")
    listen: str = "127.0.0.1:8090"
    #: TLS for the API listener (a non-loopback --listen needs it unless insecure_listen).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    #: Client certificates signed by this CA are required (mutual TLS).
    tls_client_ca_file: Path | None = None
    #: Serve a non-loopback --listen over plain HTTP anyway (tokens in clear text).
    insecure_listen: bool = False
    node: str = attrs.field(factory=_default_node)
    pve_url: str = "https://127.0.0.1:8006"
    pve_backend: str = "http"
    pve_token_file: Path | None = None
    pve_user: str | None = None
    pve_password_file: Path | None = None
    pve_ca_file: Path | None = None
    pve_fingerprint: str | None = None
    pve_insecure: bool = False
    api_token_file: Path | None = None
    workers: int = 2
    node_cap: int = 3
    max_retries: int = 5
    retry_backoff: float = 10.0
    max_backoff: float = 300.0
    lock_wait_max: float = 3600.0
    poll_interval: float = 2.0
    reconcile_interval: float = 300.0
    reconcile_on_start: bool = True
    reconcile_max_commands: int = 20
    manage_discovered: str = "off"
    stale_after: float = 1200.0
    startup_jitter: float = 10.0
    task_search_skew: float = 5.0
    ha_confirm_timeout: float = 300.0
    synchronous: str = "FULL"
    log_format: str = "text"
    log_level: str = "info"
    notify_url: str | None = None
    notify_token_file: Path | None = None
    notify_heartbeat: float = 30.0
    #: Standard Webhooks secret (``whsec_`` + base64) signing every push request.
    push_secret_file: Path | None = None
    max_body_bytes: int = 64 * 1024
    #: Node lifecycle (SPEC §4): a younger node is never decommissioned; a system node never is.
    node_min_age: float = 7 * 86400.0
    system_node: bool = False
    #: Signed destructive ops (SPEC §4): trusted ed25519 keys; absent → no signature needed.
    trusted_keys_file: Path | None = None
    signature_skew: float = 300.0
    #: Guests never destroyed whatever the request (SPEC §4); a comma list or a TOML array.
    protected_vmids: frozenset[int] = frozenset()
    #: How long a native terminate waits for its stop op before it fails (guest kept).
    terminate_stop_timeout: float = 300.0
    #: HTTP limits (docs/SECURITY.md): a request head, an idle keep-alive connection and a
    #: request body must each arrive within this time; at most this many connections at once.
    http_timeout: float = 20.0
    max_connections: int = 256
    #: Writes per token (per peer in loopback-only mode): a burst, then a rate per second.
    write_rate: float = 20.0
    write_burst: int = 100

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


_FIELDS = {f.name: f for f in attrs.fields(Settings)}
_DURATIONS = {
    "retry_backoff",
    "max_backoff",
    "lock_wait_max",
    "poll_interval",
    "reconcile_interval",
    "stale_after",
    "startup_jitter",
    "task_search_skew",
    "ha_confirm_timeout",
    "notify_heartbeat",
    "node_min_age",
    "signature_skew",
    "terminate_stop_timeout",
    "http_timeout",
}
_BOOLS = {"pve_insecure", "reconcile_on_start", "system_node", "insecure_listen"}
_INTS = {
    "workers",
    "node_cap",
    "max_retries",
    "reconcile_max_commands",
    "max_body_bytes",
    "max_connections",
    "write_burst",
}
#: Plain numbers that are not durations (bounded in BOUNDS like the others).
_FLOATS: set[str] = {"write_rate"}
_PATHS = {
    "db",
    "pve_token_file",
    "pve_password_file",
    "pve_ca_file",
    "api_token_file",
    "notify_token_file",
    "trusted_keys_file",
    "tls_cert_file",
    "tls_key_file",
    "tls_client_ca_file",
    "push_secret_file",
}

_HOUR, _DAY = 3600.0, 86400.0
#: Inclusive bounds of every numeric setting (refused at start with one line). The lower
#: bounds of durations allow the sub-second values tests and benchmarks use.
BOUNDS: dict[str, tuple[float, float]] = {
    "workers": (1, 256),
    "node_cap": (1, 1024),
    "max_retries": (1, 1000),
    "reconcile_max_commands": (0, 100_000),
    "max_body_bytes": (1024, 16 * 1024 * 1024),
    "retry_backoff": (0.01, _DAY),
    "max_backoff": (0.01, 7 * _DAY),
    "lock_wait_max": (1.0, 7 * _DAY),
    "poll_interval": (0.01, _HOUR),
    "reconcile_interval": (0.1, 7 * _DAY),
    "stale_after": (1.0, 30 * _DAY),
    "startup_jitter": (0.0, _DAY),
    "task_search_skew": (0.0, _HOUR),
    "ha_confirm_timeout": (1.0, 7 * _DAY),
    "notify_heartbeat": (0.1, _DAY),
    "node_min_age": (0.0, 3650 * _DAY),
    "signature_skew": (1.0, _DAY),
    "terminate_stop_timeout": (0.1, _DAY),
    "http_timeout": (0.5, _HOUR),
    "max_connections": (1, 100_000),
    "write_rate": (0.01, 100_000),
    "write_burst": (1, 1_000_000),
}
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


def _check_type(name: str, value: Any) -> None:
    """A TOML value of the wrong type (a table, an array, a number for a name, …)."""
    if isinstance(value, str):
        return
    if name == "protected_vmids" and isinstance(value, list | tuple | set | frozenset | int):
        return
    if (
        name == "node"
        and isinstance(value, list | tuple)
        and all(isinstance(v, str) for v in value)
    ):
        return  # --node repeated, or a TOML array of node names
    if name in _BOOLS and isinstance(value, bool):
        return
    if name in _INTS and isinstance(value, int) and not isinstance(value, bool):
        return
    numeric = _DURATIONS | _FLOATS
    if name in numeric and isinstance(value, int | float) and not isinstance(value, bool):
        return
    if name in _PATHS and isinstance(value, os.PathLike):
        return
    expected = (
        "true or false"
        if name in _BOOLS
        else "a whole number"
        if name in _INTS
        else "a duration such as 10s or a number of seconds"
        if name in _DURATIONS
        else "a number"
        if name in _FLOATS
        else "a list of VMIDs"
        if name == "protected_vmids"
        else "a string"
    )
    raise ValueError(f"expected {expected}, got {type(value).__name__} {value!r:.40}")


def _coerce(name: str, value: Any, where: str) -> Any:
    try:
        if value is None:
            return None
        _check_type(name, value)
        if name == "protected_vmids":
            return _vmid_set(value)
        if name == "node":
            from lifecycled.domain.cluster import parse_nodes

            return ",".join(parse_nodes(value if isinstance(value, list | tuple) else str(value)))
        if name in _DURATIONS:
            if isinstance(value, int | float) and not isinstance(value, bool):
                seconds = float(value)
            else:
                seconds = parse_duration(str(value))
            if not math.isfinite(seconds):
                raise ValueError(f"{value!r} is not a finite duration")
            return seconds
        if name in _BOOLS:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"expected true or false, got {value!r}")
        if name in _INTS:
            return int(str(value).strip()) if isinstance(value, str) else int(value)
        if name in _FLOATS:
            number = float(value)
            if not math.isfinite(number):
                raise ValueError(f"{value!r} is not a finite number")
            return number
        if name in _PATHS:
            text = os.fspath(value)
            if not text or "\x00" in text:
                raise ValueError("expected a file path")
            return Path(text).expanduser()
        if "\x00" in value:
            raise ValueError("a NUL character is not allowed")
        return str(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _bounds_problems(s: Settings) -> list[str]:
    problems = []
    for name, (low, high) in BOUNDS.items():
        value = getattr(s, name)
        if not low <= value <= high:
            problems.append(f"{name} must be between {low:g} and {high:g} (got {value:g})")
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
        (s.pve_backend in _BACKENDS, f"pve_backend must be one of {', '.join(_BACKENDS)}"),
        (s.synchronous in _SYNC_MODES, f"synchronous must be one of {', '.join(_SYNC_MODES)}"),
        (s.log_format in _LOG_FORMATS, "log_format must be text or json"),
        (s.log_level in _LOG_LEVELS, f"log_level must be one of {', '.join(_LOG_LEVELS)}"),
        (
            s.manage_discovered in _MANAGE_DISCOVERED,
            "manage_discovered must be off, native or adopted",
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
            if key not in _FIELDS:
                raise ConfigError(f"config file {config_file}: unknown option {key!r}")
            values[key] = _coerce(key, value, f"config file {config_file}: {key}")
    for name in _FIELDS:
        raw = (env or {}).get(ENV_PREFIX + name.upper())
        if raw is not None and raw != "":
            values[name] = _coerce(name, raw, ENV_PREFIX + name.upper())
    for name, value in (flags or {}).items():
        if value is None:
            continue
        if name not in _FIELDS:
            raise ConfigError(f"unknown option --{name.replace('_', '-')}")
        values[name] = _coerce(name, value, "--" + name.replace("_", "-"))
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
