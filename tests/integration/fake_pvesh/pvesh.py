"""A stand-in for ``pvesh`` that forwards to the simulator over HTTP (tests only).

Usage, as proxmoxer's CLI backends call it::

    pvesh get|create|set|delete PATH [-key value]... --output-format json

Environment: ``FAKE_PVESH_URL`` (the API root, ``http://127.0.0.1:PORT/api2/json``) and
``FAKE_PVESH_PASSWORD`` (``root@pam``'s password: a ticket login, so UPIDs carry ``root@pam``
as with pvesh run as root) or ``FAKE_PVESH_TOKEN`` (``USER@REALM!TOKENID=SECRET``).

It mimics pvesh (pve-manager ``PVE/CLI/pvesh.pm``, pve-common ``RESTEnvironment.pm``):

* a write whose answer is a UPID runs the task *to its end* (CLI workers are synchronous):
  the task log goes to stdout, except ``TASK OK`` (dropped) and ``TASK ERROR: msg`` (``msg``
  to stderr); then the UPID is printed as JSON;
* any other answer is printed as JSON; a null answer prints nothing;
* an error prints ``NNN reason`` (a 500 prints the bare text, as a handler's ``die`` does)
  and the ``param: text`` lines of ``errors`` to stderr, and exits with 255.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

METHODS = {"get": "GET", "create": "POST", "set": "PUT", "delete": "DELETE"}
TASK_WAIT_SECONDS = 300.0


class Api:
    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")
        self.headers: dict[str, str] = {"Accept": "application/json"}
        self.csrf: str | None = None

    def login(self) -> None:
        password = os.environ.get("FAKE_PVESH_PASSWORD")
        if password:
            status, body = self.call(
                "POST", "/access/ticket", [("username", "root@pam"), ("password", password)]
            )
            if status != 200:
                fail(status, body)
            data = body["data"]
            self.headers["Cookie"] = f"PVEAuthCookie={data['ticket']}"
            self.csrf = data["CSRFPreventionToken"]
        else:
            self.headers["Authorization"] = f"PVEAPIToken={os.environ['FAKE_PVESH_TOKEN']}"

    def call(
        self, method: str, path: str, params: list[tuple[str, str]]
    ) -> tuple[int, dict[str, Any]]:
        url = self.root + path
        body: bytes | None = None
        headers = dict(self.headers)
        if method in ("GET", "DELETE"):
            if params:
                url += "?" + urllib.parse.urlencode(params)
        else:
            body = urllib.parse.urlencode(params).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        if method != "GET" and self.csrf:
            headers["CSRFPreventionToken"] = self.csrf
        request = urllib.request.Request(url, data=body, method=method, headers=headers)  # noqa: S310 — loopback test server
        try:
            with urllib.request.urlopen(request, timeout=60) as resp:  # noqa: S310
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                parsed = json.loads(raw) if raw else {}
            except ValueError:
                parsed = {}
            parsed.setdefault("_reason", err.reason)
            return err.code, parsed


def fail(status: int, body: dict[str, Any]) -> None:
    """Print an error the way pvesh does and exit 255."""
    message = body.get("message") or body.get("_reason") or "error"
    text = str(message).strip().splitlines()[0] if str(message).strip() else "error"
    lines = [text if status == 500 else f"{status} {text}"]
    errors = body.get("errors") or {}
    if isinstance(errors, dict):
        lines += [f"{key}: {str(value).strip()}" for key, value in sorted(errors.items())]
    sys.stderr.write("\n".join(lines) + "\n")
    sys.exit(255)


def parse_args(argv: list[str]) -> tuple[str, str, list[tuple[str, str]]]:
    if len(argv) < 2 or argv[0] not in METHODS:
        sys.stderr.write("400 usage: pvesh get|create|set|delete PATH [-key value]...\n")
        sys.exit(255)
    method, path, rest = METHODS[argv[0]], argv[1], argv[2:]
    params: list[tuple[str, str]] = []
    i = 0
    while i < len(rest):
        token = rest[i]
        if token == "--output-format":
            i += 2
            continue
        if token.startswith("-") and i + 1 < len(rest):
            params.append((token[1:], rest[i + 1]))
            i += 2
            continue
        sys.stderr.write(f"400 unexpected argument {token!r}\n")
        sys.exit(255)
    return method, path if path.startswith("/") else "/" + path, params


def is_upid(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("UPID:") and value.endswith(":")


def run_task_to_end(api: Api, upid: str) -> None:
    """Wait for the task like a synchronous CLI worker, echoing its log."""
    node = upid.split(":")[1]
    base = f"/nodes/{node}/tasks/{urllib.parse.quote(upid, safe=':@!')}"
    deadline = time.monotonic() + TASK_WAIT_SECONDS
    while time.monotonic() < deadline:
        status, body = api.call("GET", base + "/status", [])
        if status != 200:
            fail(status, body)
        if body["data"]["status"] == "stopped":
            break
        time.sleep(0.02)
    status, body = api.call("GET", base + "/log", [("start", "0"), ("limit", "10000")])
    for item in body.get("data") or []:
        text = str(item.get("t", ""))
        if text == "TASK OK":
            continue
        if text.startswith("TASK ERROR: "):
            sys.stderr.write(text[len("TASK ERROR: ") :] + "\n")
        else:
            sys.stdout.write(text + "\n")


def main(argv: list[str]) -> int:
    method, path, params = parse_args(argv)
    api = Api(os.environ["FAKE_PVESH_URL"])
    api.login()
    status, body = api.call(method, path, params)
    if not 200 <= status < 300:
        fail(status, body)
    data = body.get("data")
    if method != "GET" and isinstance(data, str) and is_upid(data):
        run_task_to_end(api, data)
    if data is not None:
        sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
