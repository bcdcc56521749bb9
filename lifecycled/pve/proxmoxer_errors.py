"""How proxmoxer's failures and answers map onto the port (reference §7).

``ResourceException`` carries the PVE text in ``content``: the status-line reason for the
https backend, pvesh's stderr (``400 Parameter verification failed.`` then ``param: text``
lines, or the bare die text for a 500) for the CLI backends. Anything that is not an answer
is a connect failure (nothing sent, transient) or a lost answer (sent: ambiguous for a write).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Mapping
from typing import Any

import requests
import urllib3.exceptions as u3
from proxmoxer.core import AuthenticationError, ResourceException

from lifecycled.domain.classify import ErrorClass
from lifecycled.domain.upid import upids_in
from lifecycled.errors import ConfigError, PveError
from lifecycled.pve import wire

_STATUS_PREFIX_RE = re.compile(r"^(\d{3}) (?=\S)")
_ERROR_LINE_RE = re.compile(r"^([A-Za-z0-9_\-\[\]]+): (.+)$")


class ConnectFailed(Exception):
    """Building the proxmoxer connection failed: nothing was sent."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(type(cause).__name__)
        self.cause = cause


def resource_error(
    exc: ResourceException,
    method: str,
    path: str,
    *,
    cli: bool,
    redact: Callable[[str], str],
    action: str | None = None,
) -> PveError:
    """proxmoxer's ``ResourceException``: the PVE text is ``content`` (reason or stderr)."""
    status = int(exc.status_code)
    content = exc.content if isinstance(exc.content, str) else str(exc.content or "")
    lines = [line.strip() for line in content.strip().splitlines() if line.strip()]
    first = lines[0] if lines else ""
    m = _STATUS_PREFIX_RE.match(first)
    if m is not None and int(m[1]) == status:
        first = first[m.end() :]  # pvesh prints "400 Parameter verification failed."
    errors = _errors_of(exc.errors)
    if not errors and cli:
        for line in lines[1:]:  # pvesh prints "param: text" lines after a 400
            em = _ERROR_LINE_RE.fullmatch(line)
            if em is not None:
                errors[em[1]] = em[2]
    reason = redact(first or wire.default_reason(status))
    errors = {k: redact(v) for k, v in errors.items()}
    return wire.http_error(status, reason, method=method, path=path, errors=errors, action=action)


def cli_answer(exc: ResourceException) -> str | None:
    """The UPID of a pvesh write that proxmoxer took for a failure, else ``None``.

    proxmoxer's CLI backends call a write whose output (or stderr) holds a UPID a success,
    but recognise a UPID only with 8 hex digits of ``pstart``; with the 9 of a node up for
    more than ~497 days they fall back to an error status (reference §13.14). pvesh prints
    the UPID only when the API call succeeded, so a UPID found by lifecycled's own parser in
    the output is the answer.
    """
    content = exc.content if isinstance(exc.content, str) else str(exc.content or "")
    found = upids_in(content)
    return found[-1] if found else None


def failure(
    exc: BaseException,
    method: str,
    path: str,
    *,
    sent: bool,
    limit: float,
    local: bool,
    redact: Callable[[str], str],
    action: str | None = None,
) -> PveError:
    """No answer: a connect failure (not sent), a timeout or a lost connection (sent)."""
    if isinstance(exc, AuthenticationError):
        return wire.http_error(
            401, "authentication failed", method=method, path=path, sent=False, action=action
        )
    if isinstance(exc, FileNotFoundError) and local:
        return PveError(
            ErrorClass.PERMANENT,
            "pvesh not found: the local backend runs on a Proxmox VE node",
            method=method,
            path=path,
            sent=False,
        )
    if isinstance(exc, ConfigError):
        return PveError(ErrorClass.PERMANENT, str(exc), method=method, path=path, sent=False)
    if isinstance(
        exc,
        requests.exceptions.ConnectTimeout | requests.exceptions.SSLError,
    ) or (isinstance(exc, requests.exceptions.ConnectionError) and _before_send(exc)):
        sent = False
    if isinstance(exc, subprocess.TimeoutExpired | requests.exceptions.Timeout | TimeoutError):
        what = f"no answer within {limit:g} s"
        if isinstance(exc, subprocess.TimeoutExpired):
            what += " (pvesh may still be running the task)"
        reason = what if sent else f"connect timed out ({type(exc).__name__})"
    else:
        reason = (
            f"{'cannot connect' if not sent else 'connection lost'}: {type(exc).__name__}: {exc}"
        )
    return wire.http_error(None, redact(reason), method=method, path=path, sent=sent, action=action)


def upid_text(result: Any, *, cli: bool = True) -> Any:
    """The UPID in a lifecycle answer.

    https (``cli=False``): ``data`` itself; a body proxmoxer could not parse stays what it
    is (``{"errors": bytes}``), an unreadable answer like any other adapter's. pvesh: the
    JSON printed after the task log (proxmoxer skips the log lines), or, when that could not
    be parsed, the last UPID in the raw output.
    """
    if not cli:
        return result
    if result is None or (isinstance(result, str) and wire.first_line(result) == result):
        return result
    unparsed = isinstance(result, Mapping) and set(result) == {"errors"}
    text = result["errors"] if unparsed else result
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    found = upids_in(str(text))
    if found:
        return found[-1]
    if unparsed and not str(text).strip():
        return None  # pvesh prints nothing for a null answer; proxmoxer wraps the void
    return result


def _errors_of(value: Any) -> dict[str, str]:
    """proxmoxer's ``errors`` (the body's object; a ``{"errors": bytes}`` stand-in otherwise)."""
    if not isinstance(value, Mapping) or any(isinstance(v, bytes) for v in value.values()):
        return {}
    return wire.errors_of(value)


def _before_send(exc: requests.exceptions.ConnectionError) -> bool:
    """Whether a requests connection error happened while connecting (nothing sent)."""
    cause: Any = exc.args[0] if exc.args else None
    reason = getattr(cause, "reason", cause)
    return isinstance(
        reason,
        u3.NewConnectionError | u3.ConnectTimeoutError | u3.NameResolutionError,
    )
