"""Error classification: what to do about a Proxmox failure (SPEC §2, reference §11, §13).

This module is the only place that decides a failure's class. Two entry points, both pure:

* :func:`classify_http` — a failed HTTP call: status code (``None`` when no answer came; a
  2xx when an answer came that cannot be read), the reason phrase (the first line of the
  error text), the body ``errors``, the method, and whether the request had been sent.
  The adapters call it once, when they build the :class:`~lifecycled.errors.PveError`,
  with the op's action for lifecycle calls; everything downstream reads
  ``PveError.error_class`` and never classifies again.
* :func:`classify_exitstatus` — a stopped task's ``exitstatus``: ``None`` for success
  (``OK`` or ``WARNINGS: n``), otherwise a class. :func:`is_unknown_exitstatus` names the
  one exit status that is no outcome at all (the task log could not be read).

Both take the op's action so that "already satisfied" answers (``CT 100 already running``
for a start) are recognised per action.

Choices worth knowing:

* An answer that cannot be read after a write (a garbled or truncated 2xx, a connection cut
  mid-answer, data that is not a task id) is *ambiguous*: the request was accepted and its
  task may run, so the engine searches the task list and adopts; it never re-POSTs blindly.
  A read can have started nothing: the same answer to a read is *transient*.
* ``can't lock file '/var/log/pve/tasks/.active.lock' …`` is *ambiguous*: ``fork_worker``
  takes that lock *after* the worker was forked (§13.1). A guest's own lock-file timeout is
  raised before the fork and stays *transient*.
* ``failed to update VM N: <exitstatus>`` (QEMU config with ``background_delay``, §13.2) is
  matched anywhere in the message and classified by the wrapped exit status, with the rules
  for a task's exit status: a wrapped lock or digest text is *locked*, a wrapped lock-file
  timeout *transient*, an unknown wrapped text *permanent* (the task ran and failed).
* ``disk is already at specified size`` (LXC resize, §13.3) is *satisfied* for a resize —
  confirmed by reading the disk, else the op fails permanently — and *permanent* otherwise.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping

import attrs


class ErrorClass(enum.StrEnum):
    """What the engine does with a failure."""

    TRANSIENT = "transient"  # retry with backoff; nothing happened
    LOCKED = "locked"  # retry after the guest lock clears
    AMBIGUOUS = (
        "ambiguous"  # may have started a task: search, adopt, re-check; never re-POST blindly
    )
    SATISFIED = "satisfied"  # the intent already holds: confirm by state, then succeed
    PERMANENT = "permanent"  # fail at once, no retry
    INTERNAL = "internal"  # lifecycled itself failed on this op (a bug, an unencodable request)


#: The task ended but its log (and so its exit status) could not be read (§13.11).
_UNKNOWN_EXIT = r"^unable to get last line from task log\b"

# Used with ``fullmatch``: exactly ``WARNINGS: n`` (ASCII digits), no trailing newline.
_WARNINGS_RE = re.compile(r"WARNINGS: [0-9]+")


def is_success_exitstatus(exitstatus: str) -> bool:
    """``OK`` and ``WARNINGS: n`` are success (reference §4.1)."""
    return exitstatus == "OK" or _WARNINGS_RE.fullmatch(exitstatus) is not None


@attrs.frozen
class _Rule:
    pattern: re.Pattern[str]
    error_class: ErrorClass
    #: When set, the rule only applies to these actions.
    actions: frozenset[str] | None = None


def _r(pattern: str, cls: ErrorClass, *actions: str) -> _Rule:
    return _Rule(re.compile(pattern), cls, frozenset(actions) if actions else None)


_T, _L, _A, _S, _P = (
    ErrorClass.TRANSIENT,
    ErrorClass.LOCKED,
    ErrorClass.AMBIGUOUS,
    ErrorClass.SATISFIED,
    ErrorClass.PERMANENT,
)

# Ordered: the first matching rule wins. Texts are Proxmox's own (reference §2.3, §1.3, §12).
_TEXT_RULES: tuple[_Rule, ...] = (
    # Already satisfied, per action.
    _r(r"^(CT|VM) \d+ already running$", _S, "start", "resume"),
    _r(r"^(CT|VM) \d+ not running$", _S, "stop", "shutdown", "suspend"),
    _r(r"^Configuration file '[^']*' does not exist$", _S, "terminate"),
    _r(r"^unable to find configuration file for VM \d+ on node '[^']*'$", _S, "terminate"),
    _r(r"already exists on node '[^']*'$", _S, "create", "clone"),
    # LXC resize refused because the disk already has the size asked for (§13.3).
    _r(r"disk is already at specified size", _S, "resize"),
    # fork_worker registers the forked task under this lock: the task may already run (§13.1).
    _r(r"can't lock file '/var/log/pve/tasks/\.active\.lock'", _A),
    # Lock contention: the flock timed out (retry), the config lock is held (wait), digest.
    # The flock text may carry the task's own prefix (``clone failed: can't lock file …``,
    # reference §10), so it is not anchored at the start.
    _r(r"can't lock file '[^']*' - got timeout$", _T),
    _r(r"^(VM|CT) is locked \([^)]*\)$", _L),
    _r(r"^checksum mismatch \(file change by other user\?\)$", _L),
    _r(r"^detected modified configuration - file changed by other user\? Try again\.$", _L),
    # The worker could not be forked: no task exists.
    _r(r"^got no worker upid", _T),
    _r(r"^starting worker failed", _T),
    _r(r"^got strange worker upid", _T),
    _r(r"no quorum", _T),
    # A destroy refused because the guest still runs: the stop step will be redone.
    _r(r"^VM \d+ is running - destroy failed$", _T, "terminate"),
    _r(r"container is running$", _T, "terminate"),
    # ACPI shutdown ran out of time; the guest may still power off. Re-check, then retry.
    _r(r"^VM quit/powerdown failed - got timeout$", _T, "shutdown"),
    # The worker was killed (signal) before it finished: nothing to trust; re-check.
    _r(r"^received interrupt$", _T),
    # The worker died without a final line (node crash): outcome unknown.
    _r(r"^unexpected status$", _A),
    # The task's log could not be read: its outcome is unknown (§13.11).
    _r(_UNKNOWN_EXIT, _A),
    # Permanent refusals.
    _r(r"^(CT|VM) \d+ already running$", _P),
    _r(r"^(CT|VM) \d+ not running$", _P),
    _r(r"^VM is paused - cannot shutdown$", _P),
    _r(r"^shrinking disks is not supported", _P),
    _r(r"protection mode enabled$", _P),
    _r(r"used in HA resources and purge parameter not set", _P),
    _r(r"^you can't start a (vm|CT) if it's a template$", _P),
    _r(r"^Configuration file '[^']*' does not exist$", _P),
    _r(r"^unable to find configuration file for VM \d+ on node '[^']*'$", _P),
    _r(r"already exists on node '[^']*'$", _P),
    _r(r"^can't migrate running (VM|container) without", _P),
    _r(r"^Cannot suspend HA managed VM to disk$", _P),
    _r(r"^Parameter verification failed", _P),
    _r(r"^no options specified$", _P),
    # Sync refusals of migrate/clone and LXC resize (§13.3, §13.12).
    _r(r"no such cluster node '[^']*'", _P),
    _r(r"unable to shrink disk size", _P),
    _r(r"disk is already at specified size", _P),
)

#: QEMU config with ``background_delay`` whose task failed within the delay (§13.2).
_WRAPPED_EXIT_RE = re.compile(r"failed to update VM \d+: (?P<exitstatus>.*\S)")
_UNKNOWN_EXIT_RE = re.compile(_UNKNOWN_EXIT)

_WRITE_METHODS = frozenset({"POST", "PUT", "DELETE"})


def classify_text(text: str, *, action: str | None = None) -> ErrorClass | None:
    """The class of a known Proxmox error text, or ``None`` when the text is not known."""
    first = text.strip().splitlines()[0].strip() if text.strip() else ""
    wrapped = _WRAPPED_EXIT_RE.search(first)
    if wrapped is not None:
        # The wrapped text is a task's exit status: its rules decide (unknown → permanent).
        inner = classify_exitstatus(wrapped["exitstatus"], action=action)
        return inner if inner is not None else _P
    for rule in _TEXT_RULES:
        if rule.actions is not None and (action is None or action not in rule.actions):
            continue
        if rule.pattern.search(first):
            return rule.error_class
    return None


def classify_http(
    status: int | None,
    reason: str,
    *,
    method: str = "GET",
    errors: Mapping[str, str] | None = None,
    sent: bool = True,
    action: str | None = None,
) -> ErrorClass:
    """Classify a failed HTTP call (reference §11 "Error classification").

    ``status is None`` means no answer arrived: a timeout or a dropped connection. That is
    ambiguous for a write that was sent, and transient otherwise. A 2xx ``status`` means an
    answer arrived that cannot be read (garbled, truncated, not a task id): ambiguous for a
    write, transient for a read. A read is never ambiguous: it cannot have started a task.
    """
    is_write = method.upper() in _WRITE_METHODS
    if status is None:
        return _A if (is_write and sent) else _T
    if 200 <= status < 300:
        return _A if is_write else _T
    if status in (596, 597, 598, 599):
        return _A if is_write else _T
    if status == 595:
        return _T  # pveproxy could not reach the node: nothing was started
    if status == 401:
        return _T  # credentials renewed or fixed by the operator; no side effect happened
    if status == 400 and errors:
        if errors.get("upid") == "no such task":
            # The task log was rotated away (reference §4.5, §11 "already satisfied" row):
            # never failure or success by itself; the guest's state decides.
            return _S
        return _P
    known = classify_text(reason, action=action)
    if known is _A and not is_write:
        return _T
    if known is not None:
        return known
    if status in (400, 403, 404, 405, 409, 413, 422, 501) or 400 <= status < 500:
        return _P
    if status == 504 and is_write:
        return _A  # a gateway timed out after forwarding: the request may have run
    if status >= 500:
        return _T  # a 5xx with no evidence of a side effect
    return _P


def classify_exitstatus(exitstatus: str, *, action: str | None = None) -> ErrorClass | None:
    """Classify a stopped task's exit status: ``None`` for success, else a class.

    Unknown task errors are permanent: the task ran and failed for a reason we cannot judge,
    and retrying blindly is how duplicate work happens.
    """
    if is_success_exitstatus(exitstatus):
        return None
    known = classify_text(exitstatus, action=action)
    return known if known is not None else _P


def is_unknown_exitstatus(exitstatus: str) -> bool:
    """``unable to get last line from task log - …``: the task ended, but nobody can say how.

    Not a failure: treat it like a status that could not be read, and read again later
    (reference §13.11).
    """
    return _UNKNOWN_EXIT_RE.match(exitstatus) is not None
