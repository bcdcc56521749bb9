"""The one small error tree of lifecycled.

Every failure a user can meet is a :class:`LifecycledError`. Proxmox failures carry the
wire facts (status code, reason phrase, body message and ``errors``) *and* the error class
the domain classifier gave them, so callers can branch on the class without re-parsing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lifecycled.domain.classify import ErrorClass


class LifecycledError(Exception):
    """Base of every error lifecycled raises on purpose."""


class ConfigError(LifecycledError):
    """The configuration is invalid; the message says which option and why."""


class JournalError(LifecycledError):
    """The journal cannot be opened, migrated, read or written."""


class JournalOutdated(JournalError):
    """The journal's schema is older than this lifecycled and was not migrated (read-only or
    ``migrate=False``); ``lifecycled db migrate`` or the daemon's start brings it up."""

    def __init__(self, message: str, *, version: int, known: int) -> None:
        super().__init__(message)
        self.version = version
        self.known = known


class JournalUnavailable(JournalError):
    """The journal cannot write right now (disk full, read-only); try again later."""


class JournalLocked(JournalError):
    """Another daemon holds the journal (one ``lifecycled run`` per journal)."""


class JournalTooNew(JournalError):
    """The journal was written by a newer lifecycled than this one."""


class NotFound(LifecycledError):
    """A named object (op, guest, dead letter) does not exist."""


class Conflict(LifecycledError):
    """A request conflicts with what the journal already holds (e.g. an idempotency key)."""


class UpidTaken(Conflict):
    """A task id another op already recorded: a UPID belongs to one op."""

    def __init__(self, upid: str, holder: int) -> None:
        super().__init__(f"task {upid} is already recorded by op {holder}")
        self.upid = upid
        self.holder = holder


class InvalidTransition(JournalError):
    """A state change the op state machine does not allow."""


class ValidationError(LifecycledError):
    """A request is malformed; ``details`` maps field names to what is wrong; ``code`` is the
    stable code of the HTTP answer (422)."""

    def __init__(
        self,
        message: str,
        details: dict[str, str] | None = None,
        *,
        code: str = "validation_failed",
    ) -> None:
        super().__init__(message)
        self.details = details or {}
        self.code = code


class PolicyRefused(LifecycledError):
    """A safety policy refused the op; nothing was sent to Proxmox."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class RequestNotSent(LifecycledError):
    """A Proxmox request could not be built (e.g. a parameter that cannot be encoded):
    nothing reached Proxmox. Not a Proxmox failure, so not a :class:`PveError`: the engine
    ends the op with the error class ``internal``."""


class OwnershipUnavailable(LifecycledError):
    """The cluster's ownership record cannot be written now (no quorum, pmxcfs read-only, the
    guest's config locked or changing under us): the ownership change is refused, retry later."""


class OwnershipLocked(OwnershipUnavailable):
    """The guest's config is locked (backup, snapshot, …): the record is written later."""


class PveError(LifecycledError):
    """A Proxmox call failed.

    ``status`` is the HTTP status (or ``None`` when no answer came: a timeout or a dropped
    connection), ``reason`` the first line of the error text, ``sent`` whether the request
    had been sent when the failure happened.
    """

    error_class: ErrorClass

    def __init__(
        self,
        error_class: ErrorClass,
        reason: str,
        *,
        status: int | None = None,
        method: str = "GET",
        path: str = "",
        errors: dict[str, str] | None = None,
        sent: bool = True,
    ) -> None:
        where = f"{method} {path}".strip()
        code = f"HTTP {status}" if status is not None else "no answer"
        super().__init__(f"{where}: {code}: {reason}" if where else f"{code}: {reason}")
        self.error_class = error_class
        self.status = status
        self.reason = reason
        self.method = method
        self.path = path
        self.errors = dict(errors or {})
        self.sent = sent

    @property
    def text(self) -> str:
        """The Proxmox error text, with per-parameter errors appended when present."""
        if not self.errors:
            return self.reason
        detail = "; ".join(f"{k}: {v}" for k, v in sorted(self.errors.items()))
        return f"{self.reason} ({detail})"
