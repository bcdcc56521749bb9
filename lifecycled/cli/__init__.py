"""The ``lifecycled`` command line (typer).

Each command group lives in its own module and registers itself on :data:`app`; this
module only assembles them and maps errors to one line and an exit code.
"""

from __future__ import annotations

import importlib

from lifecycled.cli._app import app

#: Command modules; each registers its commands on ``app`` when imported.
_COMMAND_MODULES = (
    "lifecycled.cli.admin",
    "lifecycled.cli.daemon",
    "lifecycled.cli.simcmd",
    "lifecycled.cli.democmd",
)


def _load_commands() -> None:
    for name in _COMMAND_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a module not written yet must not break the rest
            if exc.name != name:
                raise


def main() -> None:
    """Console-script entry point."""
    _load_commands()
    app(prog_name="lifecycled")


if __name__ == "__main__":  # pragma: no cover
    main()
