"""The node lifecycle and signing settings: defaults and every source (SPEC §5 "Configuration")."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifecycled.config import Settings, load_settings
from lifecycled.errors import ConfigError


def test_defaults() -> None:
    """node_min_age 7d, not a system node, no trusted keys (no signature needed), skew 5m."""
    settings = Settings()
    assert settings.node_min_age == 7 * 86400
    assert settings.system_node is False
    assert settings.trusted_keys_file is None
    assert settings.signature_skew == 300


def test_flag_env_and_file(tmp_path: Path) -> None:
    """Each option reads from a flag, LIFECYCLED_<NAME> and the TOML file, flag first."""
    toml = tmp_path / "c.toml"
    toml.write_text(
        'node_min_age = "30d"\nsystem_node = true\ntrusted_keys_file = "/etc/k"\n'
        'signature_skew = "1m"\n',
        encoding="utf-8",
    )
    from_file = load_settings({}, env={}, config_file=toml)
    assert from_file.node_min_age == 30 * 86400 and from_file.system_node is True
    assert from_file.trusted_keys_file == Path("/etc/k") and from_file.signature_skew == 60
    env = {"LIFECYCLED_SYSTEM_NODE": "false", "LIFECYCLED_SIGNATURE_SKEW": "90s"}
    from_env = load_settings({}, env=env, config_file=toml)
    assert from_env.system_node is False and from_env.signature_skew == 90
    flags = {"node_min_age": "0", "trusted_keys_file": "/run/k"}
    from_flags = load_settings(flags, env=env, config_file=toml)
    assert from_flags.node_min_age == 0 and from_flags.trusted_keys_file == Path("/run/k")


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        ({"signature_skew": "0s"}, "signature_skew must be between 1 and 86400"),
        ({"node_min_age": "soon"}, "--node-min-age"),
        ({"system_node": "maybe"}, "--system-node"),
    ],
)
def test_bad_values_name_the_option(flags: dict[str, str], problem: str) -> None:
    """Invalid values are a ConfigError naming the option."""
    with pytest.raises(ConfigError, match=problem):
        load_settings(flags, env={})
