"""Logging set-up for the entry points: one event per line, text or JSON, secrets redacted.

Library code logs stable event names (``op.dispatched``) with ``extra`` fields; only entry
points call :func:`configure_logging`.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

#: Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {
    "message",
    "asctime",
}

_SECRET_PATTERNS = (
    # Header values: everything after the header name up to the end of the value.
    re.compile(
        r"((?:Authorization|CSRFPreventionToken)[\"']?\s*[:=]\s*[\"']?)[^\"',}\r\n]+", re.IGNORECASE
    ),
    re.compile(r"(Bearer\s+)[^\s\"',]+"),
    re.compile(r"(PVEAPIToken[= ][^=\s]+=)[^\s\"',]+"),
    re.compile(r"(PVEAuthCookie=)[^\s;\"',]+"),
    re.compile(r"(PVE:[^:\s]+:[0-9A-F]{8}::)[^\s\"',]+"),
    re.compile(r"((?:password|secret|token)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+", re.IGNORECASE),
)


def redact(text: str) -> str:
    """``text`` with anything that looks like a credential replaced by ``***``."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(r"\1***", text)
    return text


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


#: syslog priorities of the levels (sd-daemon(3): ``<N>`` prefixes journald reads).
_PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


def _priority(record: logging.LogRecord) -> str:
    return f"<{_PRIORITY.get(record.levelname, 6)}>"


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "event", ...extra}`` on one line.

    With ``journald`` the line starts with its ``<N>`` priority (journald strips it, so the
    journal's MESSAGE is the bare JSON object and ``journalctl -p warning`` filters on it).
    """

    def __init__(self, *, journald: bool = False) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        payload.update(_extras(record))
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        text = redact(json.dumps(payload, default=str, separators=(",", ":")))
        return _priority(record) + text if self.journald else text


#: A logfmt value that needs no quotes: no space, quote, ``=`` or control character.
_BARE = re.compile(r"[^\s\"=\\\x00-\x1f\x7f]+")


def logfmt_value(value: object) -> str:
    """``value`` as a logfmt value: bare when it can be, else double-quoted with escapes."""
    text = str(value)
    if _BARE.fullmatch(text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    escaped = re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}", escaped)
    return f'"{escaped}"'


class TextFormatter(logging.Formatter):
    """logfmt on one line: ``ts=… level=info event=op.claimed op_id=7 reason="two words"``.

    With ``journald`` the line starts with its ``<N>`` priority and carries no ``ts`` (the
    journal stamps every line itself).
    """

    def __init__(self, *, journald: bool = False) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        pairs: list[tuple[str, object]] = []
        if not self.journald:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            pairs.append(("ts", f"{stamp}.{int(record.msecs):03d}Z"))
        pairs += [("level", record.levelname.lower()), ("event", record.getMessage())]
        pairs += [(k, v) for k, v in _extras(record).items() if v is not None]
        if record.exc_info:
            pairs.append(("exc", self.formatException(record.exc_info)))
        line = redact(" ".join(f"{k}={logfmt_value(v)}" for k, v in pairs))
        return _priority(record) + line if self.journald else line


def stream_is_journal(stream: TextIO, env: Mapping[str, str]) -> bool:
    """Whether ``stream`` is the journald stream systemd connected (``JOURNAL_STREAM=dev:ino``)."""
    device, _, inode = env.get("JOURNAL_STREAM", "").partition(":")
    if not device.isdigit() or not inode.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


def configure_logging(
    fmt: str = "text",
    level: str = "info",
    stream: TextIO | None = None,
    env: Mapping[str, str] | None = None,
) -> None:
    """Install one handler on the ``lifecycled`` logger (idempotent).

    Under systemd, when the stream is the journal (``JOURNAL_STREAM``), lines carry ``<N>``
    priorities and text lines drop their timestamp.
    """
    logger = logging.getLogger("lifecycled")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    out = stream or sys.stderr
    journald = stream_is_journal(out, os.environ if env is None else env)
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        JsonFormatter(journald=journald) if fmt == "json" else TextFormatter(journald=journald)
    )
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
