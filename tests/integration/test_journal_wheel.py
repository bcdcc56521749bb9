"""The built wheel ships the migrations: a fresh install migrates a journal from its package."""

from __future__ import annotations

import importlib.util
import json
import os
import sqlite3
import subprocess
import sys
import sysconfig
from pathlib import Path

from lifecycled.journal.migrations import load_migrations

REPO = Path(__file__).resolve().parents[2]


def _run(args: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_installed_wheel_migrates_a_journal(tmp_path: Path) -> None:
    """Build the wheel, install it into a new venv, run `lifecycled db migrate` from it."""
    dist = tmp_path / "dist"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(dist)]
    if importlib.util.find_spec("hatchling") is not None:
        build.append("--no-build-isolation")  # fully offline when the backend is at hand
    _run([*build, str(REPO)], cwd=tmp_path)
    (wheel,) = dist.glob("lifecycled-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        cwd=tmp_path,
    )
    # Runtime dependencies come from this test's environment, appended *after* the new
    # venv's own site-packages (a .pth line adds the folder, not its editable hooks), so
    # `lifecycled` itself can only be the installed wheel.
    purelib = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            cwd=tmp_path,
        ).strip()
    )
    (purelib / "_test_runtime_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LIFECYCLED_DB")}
    where = _run(
        [
            str(python),
            "-c",
            "import lifecycled, lifecycled.journal.migrations as m; "
            "print(lifecycled.__file__); print(m.default_source())",
        ],
        cwd=work,
        env=env,
    ).split()
    assert Path(where[0]).is_relative_to(venv)
    assert Path(where[1]) == purelib / "lifecycled" / "_migrations"

    known = len(load_migrations(REPO / "migrations"))
    out = _run(
        [str(venv / "bin" / "lifecycled"), "db", "migrate", "--db", "x.sqlite3"], cwd=work, env=env
    )
    assert f"schema version {known}" in out
    conn = sqlite3.connect(work / "x.sqlite3")
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (known,)
    finally:
        conn.close()
    listed = _run(
        [str(venv / "bin" / "lifecycled"), "dlq", "list", "--db", "x.sqlite3", "--json"],
        cwd=work,
        env=env,
    )
    assert json.loads(listed) == []
