"""The typer options of the settings, made from their declarations in :mod:`lifecycled.config`.

A command that needs :class:`Settings` says which of them it offers as flags, by
:class:`~lifecycled.config.Scope`, with :func:`with_settings`; it receives a
:class:`SettingsInput` (``--config`` and the flags given) and loads the settings from it
(precedence flag > ``LIFECYCLED_*`` > config file > default). ``lifecycled run`` offers every
setting. Adding a setting is one field in ``config.Settings``: its flag, variable, help,
default and shell completion follow.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import attrs
import typer

from lifecycled.config import OPTIONS, REMOVED, Kind, Option, Scope, Settings, load_settings
from lifecycled.domain.durations import format_duration

#: Where the ``--config`` value is kept for the other options' callbacks (``--db``).
CONFIG_KEY = "lifecycled.config"

#: The help panel of the settings' flags.
SETTINGS_PANEL = "Settings (flag, then LIFECYCLED_* variable, then config file, then default)"

P = ParamSpec("P")
R = TypeVar("R")


def _remember_config(ctx: typer.Context, value: Path | None) -> Path | None:
    ctx.meta[CONFIG_KEY] = value
    return value


ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        envvar="LIFECYCLED_CONFIG",
        show_envvar=True,
        is_eager=True,
        callback=_remember_config,
        metavar="FILE",
        show_default="/etc/lifecycled/lifecycled.toml if present",
        help="TOML config file.",
        rich_help_panel=SETTINGS_PANEL,
    ),
]

#: The type typer parses each kind of flag as (the value is checked again by config).
_FLAG_TYPES: dict[Kind, Any] = {
    Kind.TEXT: str,
    Kind.PATH: Path,
    Kind.INT: int,
    Kind.NUMBER: float,
    Kind.DURATION: str,
    Kind.BOOL: bool,
    Kind.VMIDS: str,
    Kind.NODES: list[str],
}
_METAVARS = {
    Kind.TEXT: "TEXT",
    Kind.PATH: "FILE",
    Kind.INT: "INTEGER",
    Kind.NUMBER: "NUMBER",
    Kind.DURATION: "DURATION",
    Kind.VMIDS: "VMIDS",
    Kind.NODES: "NODE",
}


def flag_type(option: Option) -> Any:
    """The Python type typer parses ``option``'s flag as (an enum of choices completes)."""
    if option.spec.kind is Kind.CHOICE:
        return option.spec.choices
    return _FLAG_TYPES[option.spec.kind]


def option_info(option: Option, **overrides: Any) -> Any:
    """``typer.Option(...)`` for a setting: its flag(s), help, ``LIFECYCLED_*`` variable and
    default, all from its declaration. ``overrides`` replace any of them."""
    decl = option.flag if option.off_flag is None else f"{option.flag}/{option.off_flag}"
    kwargs: dict[str, Any] = {
        "help": option.spec.help,
        "envvar": option.env,
        "show_envvar": True,
        "show_default": option.default_text,
        "metavar": _METAVARS.get(option.spec.kind),
        "rich_help_panel": SETTINGS_PANEL,
    }
    kwargs.update(overrides)
    return typer.Option(decl, **kwargs)


def _parameter(option: Option) -> inspect.Parameter:
    annotation = Annotated[flag_type(option) | None, option_info(option)]  # type: ignore[valid-type]
    return inspect.Parameter(
        option.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation
    )


@attrs.frozen(kw_only=True)
class SettingsInput:
    """What a command was given for its settings: ``--config`` and the flags on the command
    line (a value from a ``LIFECYCLED_*`` variable is left to :func:`load_settings`)."""

    config: Path | None = None
    flags: Mapping[str, Any] = attrs.field(factory=dict)

    @classmethod
    def take(
        cls, ctx: typer.Context, values: dict[str, Any], options: list[Option]
    ) -> SettingsInput:
        """Take ``--config`` and the settings' values out of a command's ``values``, keeping
        only those given on the command line (precedence is :func:`load_settings`'s)."""
        flags: dict[str, Any] = {}
        for option in options:
            value = values.pop(option.name)
            source = ctx.get_parameter_source(option.name)
            if value is not None and source is not None and source.name == "COMMANDLINE":
                flags[option.name] = value
        return cls(config=values.pop("config"), flags=flags)

    def given(self, name: str) -> bool:
        """Whether setting ``name`` was given as a flag."""
        return name in self.flags

    def load(self, **more: Any) -> Settings:
        """The settings: these flags (and ``more``), the environment, the config file."""
        return load_settings({**self.flags, **more}, env=os.environ, config_file=self.config)


_CONTEXT = "lifecycled_typer_context"


def offered(*scopes: Scope) -> list[Option]:
    """The settings offered as flags by a command taking ``scopes`` (``run``: all)."""
    wanted = set(scopes)
    return [o for o in OPTIONS.values() if o.spec.scopes & wanted]


def with_settings(*scopes: Scope) -> Callable[[Callable[P, R]], Callable[..., R]]:
    """Give a command ``--config`` and the flags of the settings of ``scopes``.

    The command declares a ``given: SettingsInput`` parameter (not an option); the flags
    are added to its signature, after its own parameters, from the settings' declarations.
    """

    def decorate(fn: Callable[P, R]) -> Callable[..., R]:
        options = offered(*scopes)
        signature = inspect.signature(fn, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "given"]
        context = inspect.Parameter(
            _CONTEXT, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context
        )
        config = inspect.Parameter(
            "config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ConfigOpt
        )
        params = [*own, context, config, *(_parameter(o) for o in options)]

        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> R:
            given = SettingsInput.take(kwargs.pop(_CONTEXT), kwargs, options)
            return fn(*args, given=given, **kwargs)  # type: ignore[arg-type]

        command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate


# -- the config reference (docs/CONFIG.md) ------------------------------------------------------

_VALUES = {
    Kind.TEXT: "text",
    Kind.PATH: "file path",
    Kind.INT: "whole number",
    Kind.NUMBER: "number",
    Kind.DURATION: "duration (`10s`, `5m`, `1h30m`, `7d`; a number is seconds)",
    Kind.BOOL: "`true` or `false`",
    Kind.VMIDS: "VMIDs: a comma list (flag, variable) or a TOML array",
    Kind.NODES: "node names: comma-separated, a repeated flag or a TOML array",
}


def _number(value: float) -> str:
    return f"{int(value):,}" if value == int(value) else str(value)


def commands_offering() -> dict[str, list[str]]:
    """Setting name → the commands (other than ``run``) that offer it as a flag."""
    from lifecycled.cli import _load_commands
    from lifecycled.cli._app import app

    _load_commands()
    out: dict[str, list[str]] = {name: [] for name in OPTIONS}

    def walk(command: Any, path: str) -> None:
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            walk(sub, f"{path} {name}".strip())
        envvars = {getattr(param, "envvar", None) for param in getattr(command, "params", ())}
        for option in OPTIONS.values():
            if path != "run" and option.env in envvars:
                out[option.name].append(path)

    walk(typer.main.get_command(app), "")
    return out


def config_reference() -> str:
    """docs/CONFIG.md: every setting, made from its declaration (a test keeps the file equal)."""
    offering = commands_offering()
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated from the declarations in lifecycled/config.py; do not edit. Regenerate:",
        "     .venv/bin/python -m lifecycled.cli.options > docs/CONFIG.md -->",
        "",
        "Every setting is a key of the TOML file (`--config`, else `LIFECYCLED_CONFIG`, else",
        "`/etc/lifecycled/lifecycled.toml` when it exists; dashes or underscores, at the top level",
        "or under `[lifecycled]`), an environment variable and a flag of `lifecycled run`. Precedence:",
        "flag > `LIFECYCLED_*` variable > config file > default. A bad value, an unknown key or a",
        "number out of bounds stops the command with one error line and exit 2. Secrets are never",
        "values: the settings name the files that hold them. `examples/lifecycled.toml` is a",
        "commented config file with every key.",
        "",
        "Keys no longer read, ignored with a warning: "
        + ", ".join(f"`{key}` ({why})" for key, why in REMOVED.items())
        + ".",
        "",
        "| Key | Flag | Environment | Default | Value | Also a flag of | Meaning |",
        "|---|---|---|---|---|---|---|",
    ]
    for option in OPTIONS.values():
        spec = option.spec
        flag = f"`{option.flag}`" + (f" / `{option.off_flag}`" if option.off_flag else "")
        if spec.kind is Kind.CHOICE:
            assert spec.choices is not None
            value = "one of " + ", ".join(f"`{c.value}`" for c in spec.choices)
        else:
            value = _VALUES[spec.kind]
        if spec.bounds is not None:
            low, high = spec.bounds
            show = format_duration if spec.kind is Kind.DURATION else _number
            value += f"; {show(low)} to {show(high)}"
        also = ", ".join(f"`{c}`" for c in offering[option.name]) or "-"
        lines.append(
            f"| `{option.name}` | {flag} | `{option.env}` | `{option.default_text}` | {value} "
            f"| {also} | {spec.help.replace('|', '/')} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover - the doc generator
    import sys

    sys.stdout.write(config_reference())
