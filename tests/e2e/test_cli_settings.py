"""The real ``lifecycled`` shows every setting as it is declared: ``run --help`` names each
flag with its LIFECYCLED_* variable and default, in a wide terminal, without colour and with
forced colour; a bad choice is one line and exit 2; shell completion offers the choices
(issue 12, "Config declared once")."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lifecycled.config import OPTIONS, Kind, Option, load_settings

LIFECYCLED = Path(sys.executable).parent / "lifecycled"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
BORDERS = str.maketrans(dict.fromkeys("│╭╮╰╯─|", " "))
TERMINALS = {
    "wide": {"COLUMNS": "200"},
    "no-colour": {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"},
    "forced-colour": {"COLUMNS": "200", "FORCE_COLOR": "1"},
}
CHOICES = [o for o in OPTIONS.values() if o.spec.kind is Kind.CHOICE]


def lifecycled(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LIFECYCLED_", "_LIFE"))}
    return subprocess.run(
        [str(LIFECYCLED), *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def option_rows(help_text: str) -> dict[str, str]:
    """Each option's row of a rendered help, continuation lines joined, by each of its flags."""
    rows: dict[str, str] = {}
    flags: list[str] = []
    for raw in ANSI.sub("", help_text).splitlines():
        body = raw.translate(BORDERS)
        words = body.split()
        if re.match(r"\s{0,3}-", body):  # an option's first line starts at the panel's edge
            flags = list(itertools.takewhile(lambda w: w.startswith("-"), words))
            rows.update(dict.fromkeys(flags, " ".join(words)))
        elif words:
            for flag in flags:
                rows[flag] += " " + " ".join(words)
    return rows


@pytest.fixture(scope="module", params=list(TERMINALS))
def run_help(request: pytest.FixtureRequest) -> dict[str, str]:
    done = lifecycled("run", "--help", env=TERMINALS[request.param])
    assert done.returncode == 0, done.stderr
    return option_rows(done.stdout)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_run_help_shows_each_setting_with_its_variable_and_default(
    name: str, run_help: dict[str, str]
) -> None:
    """`lifecycled run --help` (200 columns; plain, NO_COLOR/TERM=dumb, forced colour) lists
    the setting's flag with its LIFECYCLED_* variable and its default, which reads back as
    the default."""
    option = OPTIONS[name]
    row = run_help[option.flag]
    assert f"[env var: {option.env}]" in row, row
    shown = re.search(r"\[default: \((.+?)\)\]", row)
    assert shown is not None, row
    assert_is_default(option, shown[1])


def assert_is_default(option: Option, text: str) -> None:
    if option.name == "node":
        assert text == "this host's name"
    elif option.default in (None, frozenset()):
        assert text == "none"
    else:
        given = text if option.spec.kind is not Kind.BOOL else text == "true"
        assert getattr(load_settings({option.name: given}, env={}), option.name) == option.default


@pytest.mark.parametrize("option", CHOICES, ids=[o.name for o in CHOICES])
def test_a_bad_choice_is_one_line_and_exit_2(option: Option, tmp_path: Path) -> None:
    """A value outside a setting's choices, as a flag or a variable: one error line naming
    the choices, exit 2, no traceback, nothing created."""
    assert option.spec.choices is not None
    db = str(tmp_path / "j.sqlite3")
    for done in (
        lifecycled("run", "--db", db, option.flag, "bogus"),
        lifecycled("run", "--db", db, env={option.env: "bogus"}),
    ):
        assert done.returncode == 2, done
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lifecycled: error: "), done.stderr
        assert option.flag in lines[0] and "bogus" in lines[0]
        assert all(c.value in lines[0] for c in option.spec.choices)
    assert not (tmp_path / "j.sqlite3").exists()


@pytest.mark.parametrize("option", CHOICES, ids=[o.name for o in CHOICES])
def test_shell_completion_offers_the_choices(option: Option) -> None:
    """Bash completion after a choice flag offers exactly the setting's choices."""
    assert option.spec.choices is not None
    words = f"lifecycled run {option.flag} "
    done = lifecycled(
        env={"_LIFECYCLED_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": "3"}
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [c.value for c in option.spec.choices]


def test_completion_of_a_command_offering_a_setting(tmp_path: Path) -> None:
    """A command other than `run` that offers --pve-backend completes it too."""
    words = "lifecycled node decommission --pve-backend proxmoxer-s"
    done = lifecycled(
        env={"_LIFECYCLED_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": "4"}
    )
    assert done.stdout.split() == ["proxmoxer-ssh"]


def commands_offering_settings() -> list[str]:
    """Every command (other than run) with at least one setting's flag."""
    from lifecycled.cli.options import commands_offering

    return sorted({c for commands in commands_offering().values() for c in commands})


@pytest.mark.parametrize("command", commands_offering_settings())
def test_every_command_shows_its_settings_variables_and_defaults(command: str) -> None:
    """Each command's --help shows, for every setting flag it has, the LIFECYCLED_* variable
    and a default."""
    done = lifecycled(*command.split(), "--help", env=TERMINALS["no-colour"])
    assert done.returncode == 0, done.stderr
    rows = option_rows(done.stdout)
    shown = [o for o in OPTIONS.values() if o.flag in rows]
    assert shown, rows
    for option in shown:
        if option.name == "node" and command == "guests list":
            continue  # its --node is a filter of the list, not the setting
        row = rows[option.flag]
        assert f"[env var: {option.env}]" in row and "[default: (" in row, (command, row)


def test_a_removed_key_in_an_old_config_file_is_one_warning_line(tmp_path: Path) -> None:
    """A config file from an earlier package (with ha_confirm_timeout) still loads: one
    `lifecycled: warning:` line names the ignored key; a real problem is still the error."""
    config = tmp_path / "old.toml"
    config.write_text('ha_confirm_timeout = "5m"\nlisten = "nowhere"\n')
    done = lifecycled("run", "--config", str(config), "--db", str(tmp_path / "j.sqlite3"))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert lines[0].startswith("lifecycled: warning: config file ")
    assert "ha_confirm_timeout is ignored" in lines[0]
    assert lines[1:] == [
        "lifecycled: error: --listen 'nowhere': expected HOST:PORT, e.g. 127.0.0.1:8090"
    ]
