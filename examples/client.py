#!/usr/bin/env python3
"""Submit one lifecycle op to lifecycled and wait for its outcome (standard library only).

    python examples/client.py start 101 --order-id 42 --token-file ~/.config/lifecycled.token
    python examples/client.py resize 101 --param disk=scsi0 --param size=64G \\
        --key order-42-grow-disk --url https://lifecycled.example.net --token-file t.txt

It POSTs ``/v1/ops`` with an idempotency key, then polls ``GET /v1/ops/{id}`` until the op is
terminal and prints the final op as JSON on stdout (progress goes to stderr).

Exit status: 0 when the op succeeded; 1 when it failed, was dead-lettered or cancelled, the
request was refused, or the wait timed out; 2 for a usage error.

The idempotency key is what makes this safe to run again: resubmitting a key whose op is in
flight or succeeded returns that op (HTTP 200, ``"deduplicated": true``) and runs nothing.
Give each *intended* action its own key (``--key``, or ``--order-id`` which derives
``order-<id>-<action>``): a key is a promise that "this request, once". Never derive it from
the guest and action alone — the next legitimate ``start`` of that guest would be
deduplicated into the old op and silently do nothing.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import os
import random
import secrets
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PROG = "lifecycled-client"
DEFAULT_URL = os.environ.get("LIFECYCLED_URL", "http://127.0.0.1:8090")

#: States after which no worker touches the op again (SPEC §1 "Op states").
TERMINAL_STATES = frozenset({"succeeded", "failed", "dead_lettered", "cancelled"})
#: The signature version this client speaks (docs/HTTP_API.md "Signed destructive ops").
SIGNATURE_VERSION = "v2"
#: Statuses worth retrying with the same key: the daemon is starting, stopping or its
#: journal cannot write (503), or a proxy in front of it failed (502, 504).
RETRY_STATUSES = frozenset({502, 503, 504})


class ApiError(Exception):
    """A non-2xx answer, reduced to its status and the API's error code and message."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


class Unreachable(Exception):
    """No HTTP answer: connection refused or reset, DNS failure, timeout."""


# --- inputs -----------------------------------------------------------------------------------


def read_token(path: Path) -> str:
    """The bearer token: the first non-empty, non-comment line of ``path``.

    A line of the daemon's own token file format (``name:role:token``, or the older
    ``name:token``) is accepted too; only the part after the last ``:`` is sent.
    """
    try:
        text = path.expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise SystemExit(f"{PROG}: error: token file {path}: {exc.strerror}") from None
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            return line.rpartition(":")[2]
    raise SystemExit(f"{PROG}: error: token file {path} holds no token")


def parse_param(text: str) -> tuple[str, Any]:
    """``KEY=VALUE``; numbers, booleans and JSON lists are sent as such, the rest as text."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    try:
        value = json.loads(raw)
    except ValueError:
        return key, raw
    if isinstance(value, bool | int | float | list):
        return key, value
    return key, raw


def idempotency_key(args: argparse.Namespace) -> str:
    """``--key`` as given, or ``order-<id>-<action>`` derived from ``--order-id``."""
    if args.key:
        return str(args.key)
    return f"order-{args.order_id}-{args.action}"


# --- signing (the one place a request is prepared for destructive ops) ------------------------


class Signer:
    """Signs destructive submissions with an ed25519 private key (SPEC §4).

    The key file is a PEM private key (``lifecycled keys generate``, or ``openssl genpkey
    -algorithm ed25519``) or its 32 raw bytes. ``cryptography`` is imported only here: the
    script needs it only when ``--signing-key`` is given.
    """

    def __init__(self, key_file: Path, key_id: str) -> None:
        try:
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        except ImportError:
            raise SystemExit(
                f"{PROG}: error: --signing-key needs the 'cryptography' package (pip install "
                "cryptography)"
            ) from None
        try:
            data = key_file.expanduser().read_bytes()
        except OSError as exc:
            raise SystemExit(f"{PROG}: error: signing key {key_file}: {exc.strerror}") from None
        key: object
        try:
            if len(data) == 32:
                key = Ed25519PrivateKey.from_private_bytes(data)
            else:
                key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            key = None
        if not isinstance(key, Ed25519PrivateKey):
            raise SystemExit(
                f"{PROG}: error: signing key {key_file}: not an unencrypted ed25519 PEM key "
                "or 32 raw bytes"
            )
        self._key = key
        self.key_id = key_id

    def headers(
        self, method: str, path: str, body: bytes, *, node: str, idempotency_header: str | None
    ) -> dict[str, str]:
        """The five v2 signature headers; a fresh timestamp and nonce on every call."""
        timestamp = str(int(time.time()))
        nonce = secrets.token_urlsafe(18)
        canonical = "\n".join(
            (
                SIGNATURE_VERSION,
                method.upper(),
                path,
                node,
                idempotency_header or "",
                timestamp,
                nonce,
                hashlib.sha256(body).hexdigest(),
            )
        )
        signature = self._key.sign(canonical.encode("utf-8"))
        return {
            "X-Lifecycled-Signature-Version": SIGNATURE_VERSION,
            "X-Lifecycled-Key-Id": self.key_id,
            "X-Lifecycled-Timestamp": timestamp,
            "X-Lifecycled-Nonce": nonce,
            "X-Lifecycled-Signature": base64.b64encode(signature).decode("ascii"),
        }


def sign_request(
    method: str,
    path: str,
    body: bytes,
    headers: Mapping[str, str],
    signer: Signer | None = None,
    *,
    node: str = "",
) -> dict[str, str]:
    """Extra headers that authorise a destructive request (none without a signer).

    SPEC §4 "signed destructive ops": when the daemon is configured with trusted ed25519
    public keys, a destructive request must carry a v2 signature over the canonical string
    ``v2\\nMETHOD\\nPATH\\nNODE\\nIDEMPOTENCY_KEY\\nTIMESTAMP\\nNONCE\\nHEX_SHA256(BODY)``,
    where NODE is the node the daemon serves (so a captured request does not verify at
    another node's sidecar) and IDEMPOTENCY_KEY the ``Idempotency-Key`` header of ``headers``
    (empty without it). The private key comes from a file given on the command line
    (``--signing-key``), never from an argument.
    Whether an op is destructive depends on its params too (a ``shutdown`` with
    ``force_stop``, a ``configure`` deleting a disk, …): the server decides, so every
    submission is signed when a signer is given. This is called for every attempt, not once:
    the nonce is recorded by the daemon and a replayed one is refused (401
    ``nonce_replayed``), so each retry is signed afresh even though it carries the same body
    and the same idempotency key.
    """
    if signer is None:
        return {}
    return signer.headers(
        method, path, body, node=node, idempotency_header=headers.get("Idempotency-Key")
    )


# --- HTTP -------------------------------------------------------------------------------------


class Client:
    """The few calls this script needs, over ``urllib`` with a bearer token."""

    def __init__(
        self, base_url: str, token: str | None, *, timeout: float, ca_file: Path | None
    ) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SystemExit(f"{PROG}: error: --url {base_url!r}: expected http(s)://HOST:PORT")
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.context = (
            ssl.create_default_context(cafile=str(ca_file)) if ca_file is not None else None
        )

    def request(
        self,
        method: str,
        path: str,
        data: bytes | None = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """``(status, JSON body)`` of a 2xx answer; :class:`ApiError` or :class:`Unreachable`.

        ``data`` is the JSON body exactly as sent (and, for destructive ops, as signed).
        """
        all_headers = {"Accept": "application/json", "User-Agent": f"{PROG}/1"}
        if data is not None:
            all_headers["Content-Type"] = "application/json"
        if self.token is not None:
            all_headers["Authorization"] = f"Bearer {self.token}"
        all_headers.update(headers or {})
        req = urllib.request.Request(  # noqa: S310 - http(s) only, checked in __init__
            self.base_url + path, data=data, method=method, headers=all_headers
        )
        try:
            with urllib.request.urlopen(  # noqa: S310 - http(s) only, checked in __init__
                req, timeout=self.timeout, context=self.context
            ) as resp:
                return resp.status, _json_object(resp.read())
        except urllib.error.HTTPError as exc:
            raise _api_error(exc) from None
        except urllib.error.URLError as exc:
            raise Unreachable(str(exc.reason)) from None
        except (http.client.HTTPException, ConnectionError, TimeoutError) as exc:
            raise Unreachable(str(exc) or type(exc).__name__) from None


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _api_error(exc: urllib.error.HTTPError) -> ApiError:
    """The ``{"error": {"code", "message", "details"}}`` body of an answer, or its status line."""
    try:
        raw = exc.read()
    except (OSError, http.client.HTTPException):
        raw = b""
    finally:
        exc.close()  # release the connection now, not whenever the error is collected
    error = _json_object(raw).get("error")
    code, message = "http_error", str(exc.reason)
    if isinstance(error, dict):
        code = str(error.get("code", code))
        message = str(error.get("message", message))
        details = error.get("details")
        if details:
            message += f" {json.dumps(details, sort_keys=True)}"
    retry_after: float | None = None
    header = exc.headers.get("Retry-After") if exc.headers is not None else None
    if header is not None and header.strip().isdigit():
        retry_after = float(header.strip())
    return ApiError(exc.code, code, message, retry_after)


# --- the flow ---------------------------------------------------------------------------------


def submit(
    client: Client,
    payload: Mapping[str, Any],
    *,
    attempts: int,
    signer: Signer | None = None,
    node: str = "",
) -> dict[str, Any]:
    """POST /v1/ops, retrying what cannot have done harm twice — always with the SAME key.

    Why re-sending is safe: the daemon journals the op under its idempotency key before it
    answers. If our request never arrived, the retry creates the op (202). If it arrived and
    only the answer was lost (connection reset, timeout, a proxy's 502/504), the retry finds
    the key and returns the existing op (200, ``deduplicated``) without executing anything
    again. A fresh key per retry would turn one lost answer into two executions.
    (A key whose op has meanwhile ended failed/dead_lettered/cancelled is re-armed by a
    resubmission: that is a redelivery of a request that did not take effect, as intended.)
    """
    path = "/v1/ops"
    body = json.dumps(payload).encode("utf-8")  # the same bytes on every attempt
    delay = 1.0
    for attempt in range(1, attempts + 1):
        headers: dict[str, str] = {}
        headers.update(sign_request("POST", path, body, headers, signer, node=node))  # afresh
        try:
            status, op = client.request("POST", path, body, headers=headers)
        except Unreachable as exc:
            problem = f"lifecycled unreachable ({exc})"
            wait = delay
        except ApiError as exc:
            if exc.status not in RETRY_STATUSES:
                raise failure(f"{exc.code}: {exc.message}", status=exc.status) from None
            problem = f"HTTP {exc.status} {exc.code}: {exc.message}"
            wait = exc.retry_after if exc.retry_after is not None else delay
        else:
            verb = "deduplicated: existing op" if status == 200 else "accepted: new op"
            note(f"{verb} {op.get('id')} ({op.get('state')})")
            return op
        if attempt == attempts:
            break
        note(f"{problem}; retrying with the same key in {wait:.1f}s")
        time.sleep(wait + random.uniform(0, wait / 2))  # noqa: S311 - jitter, not crypto
        delay = min(delay * 2, 30.0)
    raise failure(f"gave up after {attempts} attempts: {problem}")


def served_node(client: Client) -> str:
    """The node the daemon serves (``node`` of ``GET /v1/status``): a v2 signature covers it."""
    try:
        _, status = client.request("GET", "/v1/status")
    except (ApiError, Unreachable) as exc:
        raise failure(f"cannot read the served node from /v1/status ({exc}); give --node") from None
    node = status.get("node")
    if not isinstance(node, str) or not node:
        raise failure("/v1/status names no node; give --node")
    return node


def wait_for(client: Client, op_id: int, *, timeout: float, poll_interval: float) -> dict[str, Any]:
    """Poll ``GET /v1/ops/{id}`` until the op is terminal (reads are always safe to retry)."""
    deadline = time.monotonic() + timeout
    last_state: str | None = None
    op: dict[str, Any] = {}
    while True:
        try:
            _, op = client.request("GET", f"/v1/ops/{op_id}")
        except Unreachable as exc:
            note(f"lifecycled unreachable while polling ({exc}); will retry")
        except ApiError as exc:
            if exc.status not in RETRY_STATUSES:
                raise failure(f"{exc.code}: {exc.message}", status=exc.status) from None
            note(f"HTTP {exc.status} {exc.code} while polling; will retry")
        else:
            state = str(op.get("state"))
            if state != last_state:
                note(f"op {op_id}: {state} (attempt {op.get('attempts')})")
                last_state = state
            if state in TERMINAL_STATES:
                return op
        if time.monotonic() >= deadline:
            if op:
                print_op(op)
            raise failure(f"op {op_id} is still {last_state} after {timeout:g}s (it keeps running)")
        time.sleep(poll_interval)


# --- output -----------------------------------------------------------------------------------


def note(message: str) -> None:
    sys.stderr.write(f"{PROG}: {message}\n")


def failure(message: str, *, status: int | None = None) -> SystemExit:
    """The exit to raise: Python prints its one-line message on stderr and exits 1."""
    prefix = f"HTTP {status} " if status is not None else ""
    return SystemExit(f"{PROG}: error: {prefix}{message}")


def print_op(op: Mapping[str, Any]) -> None:
    sys.stdout.write(json.dumps(op, indent=2, sort_keys=False) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Submit one lifecycle op to lifecycled, wait until it is terminal and "
        "print it. Exit 0 if it succeeded, 1 otherwise, 2 on a usage error.",
    )
    parser.add_argument(
        "action",
        help="start, stop, shutdown, reboot, reset, suspend, resume, resize, configure, "
        "migrate, terminate, create, clone",
    )
    parser.add_argument("vmid", type=int, help="the guest's VMID (the new one for create/clone)")
    keys = parser.add_mutually_exclusive_group(required=True)
    keys.add_argument("--key", help="idempotency key of this request (reuse it to retry)")
    keys.add_argument(
        "--order-id", help="derive the key as order-<ID>-<ACTION> (e.g. a billing order id)"
    )
    parser.add_argument("--kind", choices=("qemu", "lxc"), help="resolved by lifecycled if omitted")
    parser.add_argument("--node", help="the guest's node (resolved by lifecycled if omitted)")
    parser.add_argument(
        "--param",
        "-p",
        action="append",
        type=parse_param,
        default=[],
        metavar="KEY=VALUE",
        help="action parameter (repeatable), e.g. -p size=64G -p cores=4",
    )
    parser.add_argument(
        "--url", default=DEFAULT_URL, help="lifecycled base URL [env LIFECYCLED_URL; %(default)s]"
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        help="file with the API bearer token (omit only for a loopback-only daemon)",
    )
    parser.add_argument(
        "--ca-file", type=Path, help="CA bundle for an https:// URL (e.g. a TLS proxy)"
    )
    parser.add_argument(
        "--signing-key",
        type=Path,
        metavar="FILE",
        help="ed25519 private key (PEM or 32 raw bytes) to sign destructive ops (terminate, "
        "stop, reset, a forced shutdown, a disk-removing configure, a local-disk migrate, …) "
        "when the daemon has --trusted-keys-file; needs 'cryptography'",
    )
    parser.add_argument(
        "--key-id", help="the id of --signing-key in the daemon's trusted keys file"
    )
    parser.add_argument("--attempts", type=int, default=6, help="submission attempts [%(default)s]")
    parser.add_argument(
        "--request-timeout", type=float, default=10.0, help="seconds per HTTP request [%(default)s]"
    )
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="seconds to wait for the outcome [%(default)s]"
    )
    parser.add_argument(
        "--poll-interval", type=float, default=2.0, help="seconds between polls [%(default)s]"
    )
    parser.add_argument(
        "--no-wait", action="store_true", help="print the accepted op and exit 0 at once"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.attempts < 1:
        parser.error("--attempts must be at least 1")
    if (args.signing_key is None) != (args.key_id is None):
        parser.error("--signing-key and --key-id go together")
    token = read_token(args.token_file) if args.token_file is not None else None
    client = Client(args.url, token, timeout=args.request_timeout, ca_file=args.ca_file)
    payload: dict[str, Any] = {
        "action": args.action,
        "vmid": args.vmid,
        "params": dict(args.param),
        "idempotency_key": idempotency_key(args),
    }
    if args.kind is not None:
        payload["kind"] = args.kind
    if args.node is not None:
        payload["node"] = args.node
    signer = Signer(args.signing_key, args.key_id) if args.signing_key is not None else None
    node = ""
    if signer is not None:
        node = args.node if args.node is not None else served_node(client)
    op = submit(client, payload, attempts=args.attempts, signer=signer, node=node)
    if args.no_wait:
        print_op(op)
        return 0
    if str(op.get("state")) not in TERMINAL_STATES:
        op = wait_for(client, int(op["id"]), timeout=args.timeout, poll_interval=args.poll_interval)
    print_op(op)
    if op.get("state") == "succeeded":
        return 0
    error = op.get("error") or {}
    if isinstance(error, dict) and error:
        note(f"op {op.get('id')} {op.get('state')}: {error.get('class')}: {error.get('message')}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
