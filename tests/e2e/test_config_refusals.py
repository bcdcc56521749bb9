"""`lifecycled run` refuses bad configuration at start: one line, exit 2, no traceback, and
nothing served — as a real subprocess (issue 11 point 7)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

LIFECYCLED = Path(sys.executable).parent / "lifecycled"
PVE_TOKEN = "root@pam!lifecycled=0b5c3f6e-9d1a-4c2b-8e7f-5a4d3c2b1a09"

Setup = Callable[[Path], list[str]]


def secret(path: Path, text: str | bytes, mode: int = 0o600) -> str:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return str(path)


def toml(body: bytes) -> Setup:
    def setup(tmp: Path) -> list[str]:
        path = tmp / "c.toml"
        path.write_bytes(body)
        return ["--config", str(path)]

    return setup


def flags(*args: str) -> Setup:
    return lambda _tmp: list(args)


def api_tokens(text: str | bytes, mode: int = 0o600) -> Setup:
    return lambda tmp: ["--api-token-file", secret(tmp / "api.tokens", text, mode)]


def public_listen(*extra: str) -> Setup:
    def setup(tmp: Path) -> list[str]:
        tokens = secret(tmp / "api.tokens", "ops:0123456789abcdef0123\n")
        return ["--listen", "0.0.0.0:0", "--api-token-file", tokens, *extra]

    return setup


def tls(problem: str) -> Setup:
    def setup(tmp: Path) -> list[str]:
        ca = trustme.CA()
        cert = ca.issue_cert("lifecycled.example")
        cert_file, key_file = tmp / "cert.pem", tmp / "key.pem"
        cert.cert_chain_pems[0].write_to_path(str(cert_file))
        cert.private_key_pem.write_to_path(str(key_file))
        key_file.chmod(0o600)
        if problem == "key-open":
            key_file.chmod(0o644)
        elif problem == "mismatch":
            trustme.CA().issue_cert("other").private_key_pem.write_to_path(str(key_file))
        elif problem == "cert-missing":
            cert_file = tmp / "nowhere.pem"
        return ["--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file)]

    return setup


CASES: list[tuple[str, Setup, str]] = [
    ("toml-array-for-int", toml(b"workers = [1]\n"), "workers: expected a whole number"),
    ("toml-int-for-string", toml(b"listen = 8090\n"), "listen: expected a string"),
    ("toml-table", toml(b"pve_url = { a = 1 }\n"), "pve_url: expected a string"),
    ("toml-float-for-int", toml(b"workers = 2.5\n"), "workers: expected a whole number"),
    ("toml-inf-duration", toml(b"retry_backoff = inf\n"), "not a finite duration"),
    ("toml-not-utf8", toml(b'node = "\xff\xfe"\n'), "is not UTF-8 text"),
    ("workers-huge", flags("--workers", "100000000"), "workers must be between 1 and 256"),
    ("poll-zero", flags("--poll-interval", "0s"), "poll_interval must be between"),
    ("body-huge", toml(b"max_body_bytes = 99999999999\n"), "max_body_bytes must be between"),
    ("api-tokens-not-utf8", api_tokens(b"ops:\xff\xfe\xfd\n"), "is not UTF-8 text"),
    ("api-tokens-open", api_tokens("ops:0123456789abcdef\n", 0o644), "mode 0644"),
    ("api-tokens-empty", api_tokens("# none\n"), "holds no token"),
    (
        "pve-token-open",
        lambda tmp: ["--pve-token-file", secret(tmp / "pve.token", PVE_TOKEN, 0o640)],
        "mode 0640",
    ),
    (
        "trusted-keys-open",
        lambda tmp: ["--trusted-keys-file", secret(tmp / "keys", "k ed25519 AAAA\n", 0o604)],
        "mode 0604",
    ),
    (
        "trusted-keys-bad",
        lambda tmp: ["--trusted-keys-file", secret(tmp / "keys", "k ed25519 !!\n")],
        "not valid base64",
    ),
    (
        "notify-token-missing",
        flags("--notify-url", "https://127.0.0.1:1/hook", "--notify-token-file", "nope"),
        "notify token file nope does not exist",
    ),
    (
        "push-secret-bad",
        lambda tmp: [
            "--notify-url",
            "https://127.0.0.1:1/hook",
            "--push-secret-file",
            secret(tmp / "push.secret", "not-a-whsec\n"),
        ],
        "whsec_",
    ),
    ("listen-public-no-tokens", flags("--listen", "0.0.0.0:0"), "give --api-token-file"),
    ("listen-public-no-tls", public_listen(), "serve TLS"),
    ("tls-key-open", tls("key-open"), "TLS key file"),
    ("tls-mismatch", tls("mismatch"), "do not load"),
    ("tls-cert-missing", tls("cert-missing"), "does not exist"),
    ("tls-half", flags("--tls-cert-file", "cert.pem"), "go together"),
    ("pve-http-remote", flags("--pve-url", "http://10.1.2.3:8006"), "plain http://"),
]


@pytest.mark.parametrize(("setup", "needle"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_configuration_is_one_line_and_exit_2_at_start(
    tmp_path: Path, setup: Setup, needle: str
) -> None:
    """Each bad setting, file or secret: exit 2 with one `lifecycled: error:` line naming
    the problem; no traceback, no journal created, nothing served."""
    args = [
        "run",
        "--db",
        str(tmp_path / "j.sqlite3"),
        "--node",
        "pve1",
        "--pve-url",
        "https://127.0.0.1:1",
        "--listen",
        "127.0.0.1:0",
        "--startup-jitter",
        "0",
        *setup(tmp_path),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLED_")}
    done = subprocess.run(
        [str(LIFECYCLED), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output
    assert done.returncode == 2, output
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("lifecycled: error: ") and needle in lines[0], lines[0]
    assert not (tmp_path / "j.sqlite3").exists()
    assert "0123456789abcdef" not in output and PVE_TOKEN not in output


HUGE = "99999999999999999999"


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["ops", "show", HUGE], id="ops-show-id"),
        pytest.param(["ops", "cancel", HUGE], id="ops-cancel-id"),
        pytest.param(["ops", "list", "--vmid", HUGE], id="ops-list-vmid"),
        pytest.param(["ops", "list", "--cursor", HUGE], id="ops-list-cursor"),
        pytest.param(["audit", "list", "--vmid", HUGE], id="audit-vmid"),
        pytest.param(["audit", "list", "--cursor", "0"], id="audit-cursor-0"),
        pytest.param(["dlq", "show", HUGE], id="dlq-show-id"),
        pytest.param(["dlq", "discard", "1", HUGE], id="dlq-discard-ids"),
        pytest.param(["guests", "list", "--cursor", HUGE], id="guests-cursor"),
        pytest.param(["submit", "start", HUGE], id="submit-vmid"),
        pytest.param(["submit", "start", "101", "--wait", "--timeout", "nan"], id="timeout-nan"),
    ],
)
def test_out_of_range_numbers_on_the_cli_are_usage_errors(tmp_path: Path, args: list[str]) -> None:
    """An id, vmid or cursor beyond SQLite's 64 bits (or Proxmox's VMID range), or a NaN
    timeout: one usage line and exit 2, never an OverflowError traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLED_")}
    done = subprocess.run(
        [str(LIFECYCLED), *args, "--db", str(tmp_path / "j.sqlite3")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lifecycled: error: "), done.stderr
