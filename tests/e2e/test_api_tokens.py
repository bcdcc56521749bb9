"""The API token file at start, as a real process: short tokens stop it in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from crash_support import TOKEN


def test_a_short_api_token_stops_the_start(tmp_path: Path) -> None:
    """A token under 16 characters: exit 2, one line naming the file and line, no secret."""
    pve_token = tmp_path / "pve.token"
    pve_token.write_text(TOKEN + "\n")
    pve_token.chmod(0o600)
    api_tokens = tmp_path / "api.tokens"
    api_tokens.write_text("ops:admin:0123456789abcdef0123\nci:operate:tooShort-15chr\n")
    api_tokens.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLED_")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lifecycled",
            "run",
            "--db",
            str(tmp_path / "journal.sqlite3"),
            "--listen",
            "127.0.0.1:0",
            "--node",
            "pve1",
            "--pve-url",
            "http://127.0.0.1:9",
            "--pve-token-file",
            str(pve_token),
            "--api-token-file",
            str(api_tokens),
            "--log-format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("lifecycled: error:")]
    assert errors == [
        f"lifecycled: error: API token file {api_tokens}, line 2: the token is shorter than "
        "16 characters (make one with: openssl rand -hex 32)"
    ]
    assert "Traceback" not in done.stderr and "tooShort" not in done.stderr + done.stdout
