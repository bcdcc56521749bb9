"""The root typer app and the helpers every command uses for output and errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from lifecycled import __version__

if TYPE_CHECKING:
    from lifecycled.errors import ValidationError

app = typer.Typer(
    name="lifecycled",
    help="Crash-safe lifecycle actions for Proxmox VE guests.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

P = ParamSpec("P")
R = TypeVar("R")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lifecycled {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Crash-safe lifecycle actions for Proxmox VE guests."""


def stdout_console() -> Console:
    """A console for tables: colour only when stdout is a terminal."""
    return Console(highlight=False, soft_wrap=False)


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print one error line to stderr and exit with ``code`` (1 failure, 2 usage)."""
    sys.stderr.write(f"lifecycled: error: {message}\n")
    raise typer.Exit(code)


def print_json(value: Any) -> None:
    """Print ``value`` as JSON for scripts (one document, newline-terminated)."""
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=False, default=str) + "\n")


def print_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Print a table for people; plain tab-separated rows, never cut, when not a terminal.

    Stored strings are shown literally: they are rich ``Text``, never parsed as markup.
    """
    cells = [["" if v is None else str(v) for v in row] for row in rows]
    if not sys.stdout.isatty():
        lines = [title] if title else []
        lines += ["\t".join(columns), *("\t".join(_plain(c) for c in row) for row in cells)]
        sys.stdout.write("\n".join(lines) + "\n")
        return
    table = Table(title=title, show_lines=False, header_style="bold")
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in cells:
        table.add_row(*(Text(c) for c in row))
    stdout_console().print(table)


def _plain(cell: str) -> str:
    return cell.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def validation_line(exc: ValidationError) -> str:
    """A refused request as one line: the message, then each field and what is wrong with
    it (what the HTTP answer's ``details`` hold)."""
    text = str(exc)
    said = [f"{k}: {v}" for k, v in exc.details.items() if str(v) not in text]
    if said:
        text += " (" + "; ".join(said) + ")"
    return " ".join(text.split())


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Map lifecycled errors to one line and exit code 1 (2 for usage errors)."""
    import functools

    from lifecycled.errors import ConfigError, LifecycledError, ValidationError

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except ValidationError as exc:
            fail(validation_line(exc), EXIT_USAGE)
        except ConfigError as exc:
            fail(str(exc), EXIT_USAGE)
        except LifecycledError as exc:
            fail(str(exc), EXIT_FAILED)
        except OSError as exc:
            fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), EXIT_FAILED)

    return wrapper
