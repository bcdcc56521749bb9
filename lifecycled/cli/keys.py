"""``lifecycled keys generate|public``: ed25519 key pairs for signed destructive ops (SPEC §4).

``generate`` writes the private key (PKCS#8 PEM, mode 0600) for the signing client and
prints the line to add to the daemon's trusted keys file: ``KEYID ed25519 BASE64``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lifecycled.cli._app import EXIT_USAGE, app, fail, handle_errors, print_json
from lifecycled.domain.signing import KEY_ID_RE, trusted_key_line

keys_app = typer.Typer(
    help="ed25519 keys for signed destructive ops: generate, public.", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")

KeyIdOpt = Annotated[
    str, typer.Option("--key-id", help="The key's id (1-64 letters, digits, '.', '_', '-').")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _check_key_id(key_id: str) -> None:
    if not KEY_ID_RE.fullmatch(key_id):
        fail(f"--key-id {key_id!r}: use 1-64 letters, digits, '.', '_' or '-'", EXIT_USAGE)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An ed25519 private key from a PEM (PKCS#8) file or a file of its 32 raw bytes."""
    data = path.read_bytes()
    if len(data) == 32:
        return Ed25519PrivateKey.from_private_bytes(data)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        fail(f"{path}: not an unencrypted PEM private key or 32 raw bytes")
    if not isinstance(key, Ed25519PrivateKey):
        fail(f"{path}: not an ed25519 private key")
    return key


def _output(key_id: str, key: Ed25519PrivateKey, private_file: Path, as_json: bool) -> None:
    line = trusted_key_line(key_id, key.public_key())
    if as_json:
        print_json({"key_id": key_id, "private_key_file": str(private_file), "trusted_key": line})
    else:
        typer.echo(line)


@keys_app.command("generate")
@handle_errors
def generate(
    key_id: KeyIdOpt,
    out: Annotated[
        Path, typer.Option("--out", help="Where to write the private key (PEM, mode 0600).")
    ],
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Make a key pair: the private key goes to --out; the trusted keys line is printed."""
    _check_key_id(key_id)
    if out.exists() and not force:
        fail(f"{out} exists; pass --force to overwrite it", EXIT_USAGE)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(out, flags, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    out.chmod(0o600)
    _output(key_id, key, out, as_json)


@keys_app.command("public")
@handle_errors
def public(
    key_id: KeyIdOpt,
    key: Annotated[Path, typer.Option("--key", help="The private key file (PEM or raw).")],
    as_json: JsonOpt = False,
) -> None:
    """Print the trusted keys line of an existing private key."""
    _check_key_id(key_id)
    _output(key_id, load_private_key(key), key, as_json)
