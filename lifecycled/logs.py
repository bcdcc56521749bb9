"""Logging set-up for the entry points: one event per line, text or JSON, secrets redacted.

Library code logs stable event names (``op.dispatched``) with ``extra`` fields; only entry
points call :func:`configure_logging`.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
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


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "event", ...extra}`` on one line."""

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
        return redact(json.dumps(payload, default=str, separators=(",", ":")))


class TextFormatter(logging.Formatter):
    """``TIME LEVEL event key=value …`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        parts = [ts, f"{record.levelname.lower():7}", record.getMessage()]
        parts += [f"{k}={_one_line(v)}" for k, v in _extras(record).items() if v is not None]
        line = " ".join(str(p) for p in parts)
        if record.exc_info:
            line += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        return redact(line)


def _one_line(value: object) -> str:
    return str(value).replace("\r", "\\r").replace("\n", "\\n")


def configure_logging(fmt: str = "text", level: str = "info", stream: TextIO | None = None) -> None:
    """Install one handler on the ``lifecycled`` logger (idempotent)."""
    logger = logging.getLogger("lifecycled")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
