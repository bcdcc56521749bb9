"""Every setting is declared once (a field of ``config.Settings`` with its metadata) and read
from the TOML file, the environment and the flags made from that declaration (issue 12)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import typer

from lifecycled.cli import _load_commands
from lifecycled.cli._app import app
from lifecycled.cli.options import SettingsInput, config_reference, offered
from lifecycled.config import OPTIONS, ConfigWarning, Kind, Option, Scope, load_settings
from lifecycled.domain.durations import format_duration
from lifecycled.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

#: Text settings whose value has a form to keep (a loopback HOST:PORT, a URL).
TEXT_SAMPLES = {
    "listen": ("127.0.0.1:9001", "127.0.0.1:9002"),
    "pve_url": ("https://pve-a.example:8006", "https://pve-b.example:8006"),
    "notify_url": ("https://a.example/hook", "https://b.example/hook"),
}
#: Settings that are valid only together with others (given in the file, the lowest layer).
COMPANIONS: dict[str, dict[str, str]] = {
    "tls_cert_file": {"tls_key_file": "/srv/key.pem"},
    "tls_key_file": {"tls_cert_file": "/srv/cert.pem"},
    "tls_client_ca_file": {"tls_cert_file": "/srv/cert.pem", "tls_key_file": "/srv/key.pem"},
    "push_secret_file": {"notify_url": "https://c.example/hook"},
}


def two_values(option: Option) -> tuple[Any, Any]:
    """Two valid values of ``option``: the first differs from the default, the second from
    the first (as they are after loading)."""
    kind, default = option.spec.kind, option.default
    if kind is Kind.BOOL:
        return (not default, default)
    if kind is Kind.CHOICE:
        assert option.spec.choices is not None
        other = next(c for c in option.spec.choices if c != default)
        return (other, default)
    if kind in (Kind.INT, Kind.NUMBER, Kind.DURATION):
        first, second = default * 2, default * 3
        assert option.spec.bounds is not None
        assert option.spec.bounds[0] <= first < second <= option.spec.bounds[1]
        return (first, second)
    if kind is Kind.PATH:
        return (Path("/srv/a"), Path("/srv/b"))
    if kind is Kind.VMIDS:
        return (frozenset({100, 101}), frozenset({200}))
    if kind is Kind.NODES:
        return ("pve7", "pve8")
    return TEXT_SAMPLES.get(option.name, ("alpha", "beta"))


def as_text(option: Option, value: Any) -> str:
    """``value`` as an operator writes it on the command line or in a variable."""
    if option.spec.kind is Kind.DURATION:
        return format_duration(value)
    if option.spec.kind is Kind.BOOL:
        return "true" if value else "false"
    if option.spec.kind is Kind.VMIDS:
        return ",".join(str(v) for v in sorted(value))
    return str(value)


def as_toml(option: Option, value: Any) -> str:
    if option.spec.kind in (Kind.INT, Kind.NUMBER):
        return repr(value)
    if option.spec.kind is Kind.BOOL:
        return as_text(option, value)
    if option.spec.kind is Kind.VMIDS:
        return json.dumps(sorted(value))
    return json.dumps(as_text(option, value))


def as_argv(option: Option, value: Any) -> list[str]:
    if option.spec.kind is Kind.BOOL:
        assert option.off_flag is not None
        return [option.flag if value else option.off_flag]
    return [option.flag, as_text(option, value)]


def run_command() -> Any:
    _load_commands()
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    return group.commands["run"]


def load_through_run(argv: list[str], config: Path) -> Any:
    """Parse ``lifecycled run ARGV`` with its real options and load the settings from them."""
    command = run_command()
    ctx = command.make_context("run", [*argv, "--config", str(config)])
    with ctx:
        values = dict(ctx.params)
        return SettingsInput.take(ctx, values, offered(*Scope)).load()


@pytest.mark.parametrize("name", list(OPTIONS))
def test_each_setting_is_read_from_file_env_and_flag_in_that_order(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For every declared setting: the file beats the default, its LIFECYCLED_* variable
    beats the file, and its `run` flag beats the variable."""
    option = OPTIONS[name]
    first, second = two_values(option)
    for key in list(os.environ):
        if key.startswith("LIFECYCLED_"):
            monkeypatch.delenv(key)
    config = tmp_path / "c.toml"
    lines = [f"{key} = {json.dumps(value)}" for key, value in COMPANIONS.get(name, {}).items()]
    config.write_text("\n".join([*lines, f"{name} = {as_toml(option, first)}"]) + "\n")

    assert getattr(load_through_run([], config), name) == first
    monkeypatch.setenv(option.env, as_text(option, second))
    assert getattr(load_through_run([], config), name) == second
    assert getattr(load_through_run(as_argv(option, first), config), name) == first


def test_run_offers_every_setting_as_a_flag_with_its_variable() -> None:
    """`lifecycled run` has one option per setting, named and bound to LIFECYCLED_<NAME>."""
    params = {p.name: p for p in run_command().params}
    for option in OPTIONS.values():
        param = params[option.name]
        assert option.flag in param.opts
        assert getattr(param, "envvar", None) == option.env
    assert {n for n in params if n in OPTIONS} == set(OPTIONS)


def test_a_bad_choice_in_the_file_names_the_choices(tmp_path: Path) -> None:
    """A value outside an enum's choices (file or variable) is one ConfigError naming them."""
    config = tmp_path / "c.toml"
    config.write_text('pve_backend = "ssh"\n')
    with pytest.raises(ConfigError, match=r"pve_backend must be one of http, proxmoxer-local"):
        load_settings({}, env={}, config_file=config)
    with pytest.raises(ConfigError, match=r"^LIFECYCLED_LOG_LEVEL: log_level must be one of"):
        load_settings({}, env={"LIFECYCLED_LOG_LEVEL": "loud"})


def test_removed_key_is_ignored_with_a_warning(tmp_path: Path) -> None:
    """ha_confirm_timeout, shipped in earlier config files, is ignored with a warning naming
    it; any other unknown key still stops the start."""
    config = tmp_path / "c.toml"
    config.write_text('ha_confirm_timeout = "5m"\nworkers = 4\n')
    with pytest.warns(ConfigWarning, match="ha_confirm_timeout is ignored"):
        assert load_settings({}, env={}, config_file=config).workers == 4
    assert "ha_confirm_timeout" not in OPTIONS
    config.write_text('ha_confirm_timeuot = "5m"\n')
    with pytest.raises(ConfigError, match="unknown option 'ha_confirm_timeuot'"):
        load_settings({}, env={}, config_file=config)


def test_config_reference_doc_is_made_from_the_declarations() -> None:
    """docs/CONFIG.md is exactly what the declarations make (regenerate it when this fails:
    .venv/bin/python -m lifecycled.cli.options > docs/CONFIG.md)."""
    assert (ROOT / "docs" / "CONFIG.md").read_text(encoding="utf-8") == config_reference()
    for option in OPTIONS.values():
        assert f"`{option.env}`" in config_reference()


def test_help_texts_carry_no_markup() -> None:
    """No help text holds a `[` that rich would read as markup and swallow."""
    for option in OPTIONS.values():
        assert "[" not in option.spec.help and "[" not in option.default_text, option.name
