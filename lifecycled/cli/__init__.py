"""The ``lifecycled`` command line (typer).

Each command group lives in its own module and registers itself on :data:`app`; this
module only assembles them and maps errors to one line and an exit code.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from typing import TextIO

import typer

from lifecycled.cli._app import app

#: Command modules; each registers its commands on ``app`` when imported.
_COMMAND_MODULES = (
    "lifecycled.cli.admin",
    "lifecycled.cli.dlq",
    "lifecycled.cli.daemon",
    "lifecycled.cli.simcmd",
    "lifecycled.cli.democmd",
    "lifecycled.cli.node",
    "lifecycled.cli.keys",
    "lifecycled.cli.guests",
    "lifecycled.cli.doctor",
)


def _load_commands() -> None:
    for name in _COMMAND_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a module not written yet must not break the rest
            if exc.name != name:
                raise


_default_showwarning = warnings.showwarning


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """A config warning (a removed key, ignored) is one line like the errors."""
    from lifecycled.config import ConfigWarning

    if issubclass(category, ConfigWarning):
        (file or sys.stderr).write(f"lifecycled: warning: {message}\n")
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


def main() -> None:
    """Console-script entry point: usage errors are one line and exit 2 (SPEC §5)."""
    warnings.showwarning = _show_warning
    _load_commands()
    try:
        code = app(prog_name="lifecycled", standalone_mode=False)
    except typer.Abort:
        sys.stderr.write("lifecycled: interrupted\n")
        code = 130
    except typer.TyperException as exc:  # typer's (vendored click) usage and parameter errors
        code = _report(exc)
    sys.exit(code if isinstance(code, int) else 0)


def _report(exc: typer.TyperException) -> int:
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
        sys.stdout.write(ctx.get_help() + "\n")
        return 0
    fmt = getattr(exc, "format_message", None)
    message = fmt() if callable(fmt) else str(exc)
    hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
    sys.stderr.write(f"lifecycled: error: {message}{hint}\n")
    return int(getattr(exc, "exit_code", 2))


if __name__ == "__main__":  # pragma: no cover
    main()
