"""Settings precedence and validation (SPEC §5 "Configuration")."""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

import pytest

from lifecycled.config import Settings, load_settings, read_secret_file
from lifecycled.errors import ConfigError


def test_defaults_follow_the_design() -> None:
    """Defaults are the lifecycle-queue design's: workers 2, retries 5, backoff 10s/5m, …"""
    s = load_settings({}, env={})
    assert (s.workers, s.max_retries, s.retry_backoff, s.max_backoff) == (2, 5, 10.0, 300.0)
    assert (s.poll_interval, s.reconcile_interval, s.stale_after) == (2.0, 300.0, 1200.0)
    assert s.reconcile_on_start is True
    assert s.db == Path("data/lifecycled.sqlite3")
    assert s.listen == "127.0.0.1:8090"


def test_flag_beats_env_beats_file_beats_default(tmp_path: Path) -> None:
    """Precedence is flag > LIFECYCLED_* environment > TOML file > default."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('workers = 3\nretry_backoff = "20s"\nmax-backoff = "10m"\npoll_interval = 5\n')
    env = {"LIFECYCLED_WORKERS": "4", "LIFECYCLED_RETRY_BACKOFF": "30s"}
    s = load_settings({"workers": 6, "retry_backoff": None}, env=env, config_file=cfg)
    assert s.workers == 6
    assert s.retry_backoff == 30.0
    assert s.max_backoff == 600.0
    assert s.poll_interval == 5.0


@pytest.mark.parametrize(
    ("flags", "env", "needle"),
    [
        ({"workers": 0}, {}, "workers"),
        ({}, {"LIFECYCLED_RETRY_BACKOFF": "soon"}, "LIFECYCLED_RETRY_BACKOFF"),
        ({"listen": "8090"}, {}, "HOST:PORT"),
        ({"reconcile_on_start": "maybe"}, {}, "reconcile-on-start"),
        ({"log_format": "xml"}, {}, "log_format"),
        ({"max_backoff": "1s"}, {}, "max_backoff"),
    ],
)
def test_invalid_values_name_the_option(
    flags: dict[str, object], env: dict[str, str], needle: str
) -> None:
    """A bad value is a ConfigError naming the option."""
    with pytest.raises(ConfigError, match=needle):
        load_settings(flags, env=env)


def test_unknown_key_in_file_is_refused(tmp_path: Path) -> None:
    """A typo in the TOML file is an error, not silently ignored."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("wokers = 3\n")
    with pytest.raises(ConfigError, match="wokers"):
        load_settings({}, env={}, config_file=cfg)


def test_secret_file_errors_never_echo_content(tmp_path: Path) -> None:
    """Secret files: missing/empty are clear errors; the secret is the first real line."""
    f = tmp_path / "tok"
    with pytest.raises(ConfigError, match="does not exist"):
        read_secret_file(f, "token")
    f.write_text("# comment\n\n")
    f.chmod(0o600)
    with pytest.raises(ConfigError, match="empty"):
        read_secret_file(f, "token")
    f.write_text("# comment\nroot@pam!x=s3cret\n")
    assert read_secret_file(f, "token") == "root@pam!x=s3cret"


def test_listen_parts() -> None:
    """listen splits into host and port (IPv6 in brackets too)."""
    assert Settings(listen="[::1]:9000").listen_host == "::1"
    assert Settings(listen="127.0.0.1:0").listen_port == 0


def test_listen_and_pve_url_rules(tmp_path: Path) -> None:
    """Loopback listens need nothing; a public one needs tokens and TLS (or an explicit
    --insecure-listen); plain http:// to Proxmox only on loopback (the simulator)."""
    tokens, cert, key = tmp_path / "t", tmp_path / "c.pem", tmp_path / "k.pem"
    assert load_settings({"listen": "[::1]:8090"}, env={}).listen_host == "::1"
    assert load_settings({"pve_url": "http://127.0.0.1:8006"}, env={}).pve_url.startswith("http:")
    assert load_settings({"pve_url": "http://localhost:1"}, env={})
    public = {"listen": "0.0.0.0:8090", "api_token_file": str(tokens)}
    loaded = load_settings({**public, "tls_cert_file": str(cert), "tls_key_file": str(key)})
    assert loaded.tls_cert_file == cert
    assert load_settings({**public, "insecure_listen": True}, env={}).insecure_listen
    with pytest.raises(ConfigError, match="serve TLS"):
        load_settings(public, env={})
    with pytest.raises(ConfigError, match="api-token-file"):
        load_settings({"listen": "10.0.0.5:8090", "insecure_listen": True}, env={})
    with pytest.raises(ConfigError, match="needs --tls-cert-file"):
        load_settings({"tls_client_ca_file": str(cert)}, env={})
    with pytest.raises(ConfigError, match="plain http"):
        load_settings({"pve_url": "http://pve1.example.net:8006"}, env={})
    with pytest.raises(ConfigError, match="needs --notify-url"):
        load_settings({"push_secret_file": str(key)}, env={})


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [("workers", "0", "257"), ("poll_interval", "0s", "2h"), ("signature_skew", "0s", "2d")],
)
def test_numeric_settings_are_bounded(name: str, low: str, high: str) -> None:
    """Below or above its bounds a number is refused, naming the setting and the range."""
    for value in (low, high):
        with pytest.raises(ConfigError, match=f"{name} must be between"):
            load_settings({name: value}, env={})


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o660, 0o604, 0o602])
def test_secret_files_open_to_others_are_refused(tmp_path: Path, mode: int) -> None:
    """Any group or other permission on a secret file: refused, naming the mode and chmod."""
    f = tmp_path / "tok"
    f.write_text("s3cret\n")
    f.chmod(mode)
    with pytest.raises(ConfigError, match=f"mode {mode:04o}.*chmod 600") as info:
        read_secret_file(f, "API token")
    assert "s3cret" not in str(info.value)


def _set_acl(path: Path, *extra: tuple[int, int, int]) -> None:
    """A POSIX ACL (user::r--, the extra entries, group::---, mask::r--, other::---)."""
    none = 0xFFFFFFFF
    entries = [(0x01, 4, none), *extra, (0x04, 0, none), (0x10, 4, none), (0x20, 0, none)]
    raw = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in sorted(entries))
    try:
        os.setxattr(path, "system.posix_acl_access", raw)
    except OSError as exc:
        pytest.skip(f"no POSIX ACL support here: {exc}")


def test_a_systemd_credential_readable_only_by_us_through_an_acl_is_accepted(
    tmp_path: Path,
) -> None:
    """systemd's LoadCredential= gives the service user read access by an ACL on a 0400 file
    (stat shows 0440): accepted. An ACL granting a group or another user is refused."""
    ours = tmp_path / "credential"
    ours.write_text("s3cret\n")
    ours.chmod(0o400)
    _set_acl(ours, (0x02, 4, os.geteuid()))
    assert stat.S_IMODE(ours.stat().st_mode) == 0o440
    assert read_secret_file(ours, "API token") == "s3cret"
    for name, entry in (("other-user", (0x02, 4, os.geteuid() + 4242)), ("group", (0x08, 4, 4242))):
        loose = tmp_path / name
        loose.write_text("s3cret\n")
        loose.chmod(0o400)
        _set_acl(loose, entry)
        with pytest.raises(ConfigError, match="open to group or others"):
            read_secret_file(loose, "API token")
