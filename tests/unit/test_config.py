"""Settings precedence and validation (SPEC §5 "Configuration")."""

from __future__ import annotations

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
