"""Error classification over Proxmox's own texts (SPEC §2, reference §1.3, §2.3, §4.1, §11, §12)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import pytest

from lifecycled.domain.actions import Action
from lifecycled.domain.classify import (
    ErrorClass,
    classify_exitstatus,
    classify_http,
    classify_text,
    is_success_exitstatus,
    is_unknown_exitstatus,
)

T = ErrorClass.TRANSIENT
L = ErrorClass.LOCKED
A = ErrorClass.AMBIGUOUS
S = ErrorClass.SATISFIED
P = ErrorClass.PERMANENT

QEMU_LOCK_FILE = "can't lock file '/var/lock/qemu-server/lock-100.conf' - got timeout"
LXC_LOCK_FILE = "can't lock file '/run/lock/lxc/pve-config-100.lock' - got timeout"
QEMU_NO_CONF = "Configuration file 'nodes/pve/qemu-server/100.conf' does not exist"
LXC_NO_CONF = "Configuration file 'nodes/pve/lxc/100.conf' does not exist"
QEMU_NO_CONF_RUNSTATE = "unable to find configuration file for VM 100 on node 'pve'"
ACTIVE_LOCK = "can't lock file '/var/log/pve/tasks/.active.lock' - got timeout"
UNREADABLE_LOG = "unable to get last line from task log - open failed: No such file or directory"


class Http(NamedTuple):
    """One failed HTTP call and the class it must get."""

    status: int | None
    reason: str
    method: str
    action: str | None
    expected: ErrorClass
    errors: Mapping[str, str] | None = None
    sent: bool = True


def _http(id_: str, *args: object, **kwargs: object) -> object:
    return pytest.param(Http(*args, **kwargs), id=id_)  # type: ignore[arg-type]


HTTP_CASES = [
    # --- transient: nothing happened, retry with backoff (§11 row 1) ---
    _http("401-no-ticket", 401, "No ticket", "POST", "start", T),
    _http("401-auth-failed", 401, "Authentication failed!", "POST", "start", T),
    _http("401-csrf", 401, "Permission denied - invalid csrf token", "PUT", "configure", T),
    _http("595-no-route-post", 595, "No route to host", "POST", "start", T),
    _http("595-refused-get", 595, "Connection refused", "GET", None, T),
    _http("595-unreachable-delete", 595, "Network is unreachable", "DELETE", "terminate", T),
    _http("500-sync-lock-file-qemu-put-config", 500, QEMU_LOCK_FILE, "PUT", "configure", T),
    _http("500-sync-lock-file-lxc-put-config", 500, LXC_LOCK_FILE, "PUT", "configure", T),
    _http("500-sync-lock-file-create", 500, QEMU_LOCK_FILE, "POST", "create", T),
    _http(
        "500-no-worker-upid",
        500,
        "got no worker upid - start worker failed",
        "POST",
        "start",
        T,
    ),
    _http(
        "500-starting-worker-failed",
        500,
        "starting worker failed: unable to create output file",
        "POST",
        "stop",
        T,
    ),
    _http(
        "500-strange-worker-upid",
        500,
        "got strange worker upid ('garbage')",
        "POST",
        "start",
        T,
    ),
    _http("500-no-quorum-start", 500, "cluster not ready - no quorum?", "POST", "start", T),
    _http("500-no-quorum-migrate", 500, "cluster not ready - no quorum?", "POST", "migrate", T),
    _http("500-unknown-text", 500, "something unexpected happened", "POST", "start", T),
    _http("502-write", 502, "Bad Gateway", "POST", "start", T),
    _http("503-write", 503, "Service Unavailable", "PUT", "resize", T),
    _http("504-get", 504, "Gateway Timeout", "GET", None, T),
    _http(
        "500-destroy-running-qemu",
        500,
        "VM 100 is running - destroy failed",
        "DELETE",
        "terminate",
        T,
    ),
    _http(
        "500-destroy-running-lxc",
        500,
        "unable to destroy CT 100 - container is running",
        "DELETE",
        "terminate",
        T,
    ),
    # --- ambiguous: the request may have started a task (§11 row 2) ---
    _http("no-answer-post-sent", None, "timeout", "POST", "start", A),
    _http("no-answer-put-sent", None, "connection reset", "PUT", "configure", A),
    _http("no-answer-delete-sent", None, "timeout", "DELETE", "terminate", A),
    _http("no-answer-post-not-sent", None, "connect failed", "POST", "start", T, None, False),
    _http("no-answer-get-sent", None, "timeout", "GET", None, T),
    _http("no-answer-get-not-sent", None, "connect failed", "GET", None, T, None, False),
    _http("596-post", 596, "Connection timed out", "POST", "start", A),
    _http("596-put", 596, "Connection timed out", "PUT", "configure", A),
    _http("596-get", 596, "Connection timed out", "GET", None, T),
    _http("597-delete", 597, "", "DELETE", "terminate", A),
    _http("597-get", 597, "", "GET", None, T),
    _http("599-post", 599, "", "POST", "migrate", A),
    _http("599-get", 599, "", "GET", None, T),
    _http("596-lowercase-method", 596, "Connection timed out", "post", "start", A),
    _http("504-write", 504, "Gateway Timeout", "POST", "clone", A),
    # --- satisfied: the intent already holds (§11 row 3, §1.3) ---
    _http("lxc-start-already-running", 500, "CT 100 already running", "POST", "start", S),
    _http("lxc-resume-already-running", 500, "CT 100 already running", "POST", "resume", S),
    _http("lxc-stop-not-running", 500, "CT 100 not running", "POST", "stop", S),
    _http("lxc-shutdown-not-running", 500, "CT 100 not running", "POST", "shutdown", S),
    _http("qemu-destroy-missing-conf", 500, QEMU_NO_CONF, "DELETE", "terminate", S),
    _http("lxc-destroy-missing-conf", 500, LXC_NO_CONF, "DELETE", "terminate", S),
    _http("qemu-destroy-no-conf-on-node", 500, QEMU_NO_CONF_RUNSTATE, "DELETE", "terminate", S),
    _http(
        "qemu-create-vmid-taken",
        500,
        "unable to create VM 100 - VM 100 already exists on node 'pve'",
        "POST",
        "create",
        S,
    ),
    _http(
        "lxc-create-vmid-taken",
        500,
        "unable to create CT 100 - CT 100 already exists on node 'pve'",
        "POST",
        "create",
        S,
    ),
    _http(
        "qemu-clone-target-vmid-taken",
        500,
        "unable to create VM 200 - VM 200 already exists on node 'pve'",
        "POST",
        "clone",
        S,
    ),
    _http(
        "task-status-no-such-task",
        400,
        "Parameter verification failed.",
        "GET",
        "start",
        S,
        {"upid": "no such task"},
    ),
    # --- locked: wait for the lock to clear (§11 row 4, §10 migration races) ---
    _http("qemu-locked-backup", 500, "VM is locked (backup)", "POST", "migrate", L),
    _http("qemu-locked-migrate", 500, "VM is locked (migrate)", "POST", "start", L),
    _http("qemu-locked-clone", 500, "VM is locked (clone)", "POST", "clone", L),
    _http("qemu-locked-snapshot", 500, "VM is locked (snapshot)", "DELETE", "terminate", L),
    _http("qemu-locked-create", 500, "VM is locked (create)", "POST", "configure", L),
    _http("lxc-locked-backup-destroy", 500, "CT is locked (backup)", "DELETE", "terminate", L),
    _http(
        "qemu-digest-mismatch",
        500,
        "checksum mismatch (file change by other user?)",
        "POST",
        "configure",
        L,
    ),
    _http(
        "lxc-digest-mismatch",
        500,
        "detected modified configuration - file changed by other user? Try again.",
        "PUT",
        "configure",
        L,
    ),
    # --- permanent: fail at once (§11 row 5) ---
    _http(
        "400-root-only-option",
        400,
        "Parameter verification failed.",
        "POST",
        "stop",
        P,
        {"skiplock": "Only root may use this option."},
    ),
    _http(
        "400-vmid-taken-errors",
        400,
        "Parameter verification failed.",
        "GET",
        None,
        P,
        {"vmid": "VM 218 already exists"},
    ),
    _http(
        "400-bad-upid",
        400,
        "Parameter verification failed.",
        "GET",
        None,
        P,
        {"upid": "unable to parse worker upid"},
    ),
    _http("400-without-errors", 400, "Parameter verification failed.", "POST", "start", P),
    _http("403-acl", 403, "Permission check failed (/vms/100, VM.PowerMgmt)", "POST", "start", P),
    _http(
        "403-token-not-allowed",
        403,
        "URI '/nodes/pve/qemu/100/status/start' not available with API token, need proper ticket.",
        "POST",
        "start",
        P,
    ),
    _http("501-not-implemented", 501, "Method 'GET /nodes/x/foo' not implemented", "GET", None, P),
    _http("501-no-such-uri", 501, "no such uri", "POST", "start", P),
    _http("404", 404, "Not Found", "GET", None, P),
    _http("paused-shutdown", 500, "VM is paused - cannot shutdown", "POST", "shutdown", P),
    _http("paused-reboot", 500, "VM is paused - cannot shutdown", "POST", "reboot", P),
    _http("shrink", 500, "shrinking disks is not supported", "PUT", "resize", P),
    _http(
        "protection",
        500,
        "can't remove VM 100 - protection mode enabled",
        "DELETE",
        "terminate",
        P,
    ),
    _http(
        "ha-purge",
        500,
        "unable to remove VM 100 - used in HA resources and purge parameter not set.",
        "DELETE",
        "terminate",
        P,
    ),
    _http("qemu-reboot-not-running", 500, "VM 100 not running", "POST", "reboot", P),
    _http("qemu-reset-not-running", 500, "VM 100 not running", "POST", "reset", P),
    _http("qemu-resume-not-running", 500, "VM 100 not running", "POST", "resume", P),
    _http("lxc-reboot-not-running-says-vm", 500, "VM 100 not running", "POST", "reboot", P),
    _http("qemu-reset-missing", 500, QEMU_NO_CONF_RUNSTATE, "POST", "reset", P),
    _http("qemu-migrate-missing", 500, QEMU_NO_CONF, "POST", "migrate", P),
    _http("lxc-stop-already-running-text", 500, "CT 100 already running", "POST", "stop", P),
    _http(
        "qemu-migrate-running-offline",
        500,
        "can't migrate running VM without --online",
        "POST",
        "migrate",
        P,
    ),
    _http(
        "lxc-migrate-running-offline",
        500,
        "can't migrate running container without --online or --restart",
        "POST",
        "migrate",
        P,
    ),
    _http(
        "ha-suspend-to-disk",
        500,
        "Cannot suspend HA managed VM to disk",
        "POST",
        "suspend",
        P,
    ),
    _http("lxc-config-no-options", 500, "no options specified", "PUT", "configure", P),
    # --- §13.12: other permanent sync texts ---
    _http("migrate-no-such-node", 500, "no such cluster node 'pve9'", "POST", "migrate", P),
    _http("clone-no-such-node", 500, "no such cluster node 'pve9'", "POST", "clone", P),
    _http(
        "lxc-resize-shrink",
        500,
        "unable to shrink disk size from 8589934592 to 4294967296",
        "PUT",
        "resize",
        P,
    ),
    # Already at the size asked for: satisfied for a resize (confirmed by reading the disk).
    _http("lxc-resize-same-size", 500, "disk is already at specified size", "PUT", "resize", S),
    _http("same-size-other-action", 500, "disk is already at specified size", "PUT", None, P),
    # --- §13.1: fork_worker's own lock: the task may already run ---
    _http("active-lock-start", 500, ACTIVE_LOCK, "POST", "start", A),
    _http("active-lock-reboot", 500, ACTIVE_LOCK, "POST", "reboot", A),
    _http("active-lock-migrate", 500, ACTIVE_LOCK, "POST", "migrate", A),
    _http("active-lock-destroy", 500, ACTIVE_LOCK, "DELETE", "terminate", A),
    _http("active-lock-read", 500, ACTIVE_LOCK, "GET", None, T),
    _http("guest-lock-file-reboot", 500, QEMU_LOCK_FILE, "POST", "reboot", T),
    # --- an answer that came but cannot be read (garbled, truncated, not a task id) ---
    _http("unreadable-200-post", 200, "not a JSON envelope", "POST", "reboot", A),
    _http("unreadable-200-put", 200, "not a JSON envelope", "PUT", "resize", A),
    _http("unreadable-200-delete", 200, "not a JSON envelope", "DELETE", "terminate", A),
    _http("unreadable-200-get", 200, "not a JSON envelope", "GET", None, T),
    _http("unreadable-202-post", 202, "", "POST", "start", A),
    # --- §13.2: QEMU config with background_delay: the wrapped exit status decides ---
    _http(
        "bg-delay-lock",
        500,
        "failed to update VM 100: VM is locked (backup)",
        "POST",
        "configure",
        L,
    ),
    _http(
        "bg-delay-digest",
        500,
        "failed to update VM 100: checksum mismatch (file change by other user?)",
        "POST",
        "configure",
        L,
    ),
    _http(
        "bg-delay-lock-file",
        500,
        f"failed to update VM 100: {QEMU_LOCK_FILE}",
        "POST",
        "configure",
        T,
    ),
    _http(
        "bg-delay-unknown-task-error",
        500,
        "failed to update VM 100: hotplug problem - cannot unplug",
        "POST",
        "configure",
        P,
    ),
    _http(
        "bg-delay-unexpected-status",
        500,
        "failed to update VM 100: unexpected status",
        "POST",
        "configure",
        A,
    ),
    _http(
        "bg-delay-unreadable-log",
        500,
        f"failed to update VM 100: {UNREADABLE_LOG}",
        "POST",
        "configure",
        A,
    ),
    _http(
        "bg-delay-wrapped-anywhere",
        500,
        "update failed - failed to update VM 100: VM is locked (snapshot)",
        "POST",
        "configure",
        L,
    ),
]


@pytest.mark.parametrize("case", HTTP_CASES)
def test_classify_http(case: Http) -> None:
    """Each wire failure of the reference's tables gets the class §11 assigns it."""
    got = classify_http(
        case.status,
        case.reason,
        method=case.method,
        errors=case.errors,
        sent=case.sent,
        action=case.action,
    )
    assert got is case.expected


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        pytest.param(f"{QEMU_LOCK_FILE}\n", T, id="message-with-trailing-newline"),
        pytest.param("VM is locked (backup)\nmore detail", L, id="only-first-line-counts"),
        pytest.param("  CT 100 not running  ", S, id="surrounding-whitespace"),
    ],
)
def test_classify_http_uses_first_line_of_text(reason: str, expected: ErrorClass) -> None:
    """The reason is judged by its first line, as the status line carries it (§2.2, §12.9)."""
    assert classify_http(500, reason, method="POST", action="stop") is expected


def test_action_may_be_the_enum() -> None:
    """Callers may pass an :class:`Action` member instead of its text."""
    assert classify_http(500, "CT 100 already running", method="POST", action=Action.START) is S


class Exit(NamedTuple):
    """One stopped task's exit status and the class it must get (``None`` = success)."""

    exitstatus: str
    action: str | None
    expected: ErrorClass | None


def _exit(id_: str, exitstatus: str, action: str | None, expected: ErrorClass | None) -> object:
    return pytest.param(Exit(exitstatus, action, expected), id=id_)


EXIT_CASES = [
    # success (§4.1)
    _exit("ok", "OK", "start", None),
    _exit("warnings-1", "WARNINGS: 1", "start", None),
    _exit("warnings-12", "WARNINGS: 12", "terminate", None),
    _exit("lxc-forced-destroy-warnings", "WARNINGS: 1", "terminate", None),
    # the worker died without a final line: outcome unknown (§4.1, §11 task row)
    _exit("unexpected-status", "unexpected status", "start", A),
    _exit("unexpected-status-one-shot", "unexpected status", "reboot", A),
    # in-task lock-file timeouts are common and retryable (§2.3, §10, §11)
    _exit("qemu-lock-file-start", QEMU_LOCK_FILE, "start", T),
    _exit("qemu-lock-file-resize", QEMU_LOCK_FILE, "resize", T),
    _exit("lxc-lock-file-stop", LXC_LOCK_FILE, "stop", T),
    _exit(
        "clone-prefixed-storage-lock",
        "clone failed: can't lock file '/var/lock/pve-manager/pve-storage-data-zfs' - got timeout",
        "clone",
        T,
    ),
    # already satisfied, per action (§1.3)
    _exit("qemu-start-already-running", "VM 100 already running", "start", S),
    _exit("qemu-already-running-for-stop", "VM 100 already running", "stop", P),
    _exit("qemu-already-running-for-migrate", "VM 100 already running", "migrate", P),
    _exit("qemu-already-running-for-reboot", "VM 100 already running", "reboot", P),
    _exit("qemu-already-running-no-action", "VM 100 already running", None, P),
    # guest config lock held (§2.3: in-task for start, stop, shutdown, resize; §12.4 destroy)
    _exit("qemu-locked-backup-start", "VM is locked (backup)", "start", L),
    _exit("qemu-locked-migrate-shutdown", "VM is locked (migrate)", "shutdown", L),
    _exit("qemu-destroy-locked-in-task", "VM is locked (backup)", "terminate", L),
    _exit("lxc-locked-backup", "CT is locked (backup)", "stop", L),
    _exit("resize-digest-recheck", "checksum mismatch (file change by other user?)", "resize", L),
    # a stopped task (DELETE tasks/{upid}) dies with 'received interrupt' (§4.6)
    _exit("received-interrupt-start", "received interrupt", "start", T),
    _exit("received-interrupt-migrate", "received interrupt", "migrate", T),
    # ACPI shutdown timed out without forceStop (§1.1): the guest may still power off
    _exit("shutdown-powerdown-timeout", "VM quit/powerdown failed - got timeout", "shutdown", T),
    _exit("reboot-powerdown-timeout", "VM quit/powerdown failed - got timeout", "reboot", P),
    # permanent task failures
    _exit("qemu-start-missing", QEMU_NO_CONF, "start", P),
    _exit("lxc-start-missing", LXC_NO_CONF, "start", P),
    _exit("qemu-stop-missing", QEMU_NO_CONF_RUNSTATE, "stop", P),
    _exit("qemu-template-start", "you can't start a vm if it's a template", "start", P),
    _exit("lxc-template-start", "you can't start a CT if it's a template", "start", P),
    _exit("qemu-shrink", "shrinking disks is not supported", "resize", P),
    _exit(
        "hotplug-error",
        "Parameter verification failed. cores: hotplug problem - cannot unplug",
        "configure",
        P,
    ),
    _exit("unknown-text", "storage 'local-zfs' does not exist", "create", P),
    _exit("not-success-ok-space", "OK ", "start", P),
    _exit("not-success-lowercase-warnings", "warnings: 1", "start", P),
    # §13.11: the task log could not be read: outcome unknown, never a failure by itself
    _exit("unreadable-task-log", UNREADABLE_LOG, "start", A),
    _exit("unreadable-task-log-one-shot", UNREADABLE_LOG, "reboot", A),
]


@pytest.mark.parametrize("case", EXIT_CASES)
def test_classify_exitstatus(case: Exit) -> None:
    """A stopped task's exit status is success or classified with the same table (§4.1, §11)."""
    assert classify_exitstatus(case.exitstatus, action=case.action) is case.expected


@pytest.mark.parametrize(
    ("exitstatus", "success"),
    [
        pytest.param("OK", True, id="ok"),
        pytest.param("WARNINGS: 1", True, id="warnings-1"),
        pytest.param("WARNINGS: 12", True, id="warnings-12"),
        pytest.param("WARNINGS: 0", True, id="warnings-0"),
        pytest.param("WARNINGS:", False, id="warnings-without-number"),
        pytest.param("WARNINGS: ", False, id="warnings-blank-number"),
        pytest.param("WARNINGS:1", False, id="warnings-no-space"),
        pytest.param("WARNINGS: 1 ", False, id="warnings-trailing-space"),
        pytest.param("WARNINGS: 1\n", False, id="warnings-trailing-newline"),
        pytest.param("WARNINGS: -1", False, id="warnings-negative"),
        pytest.param("WARNINGS: \u0661", False, id="warnings-non-ascii-digit"),
        pytest.param("warnings: 1", False, id="warnings-lowercase"),
        pytest.param("OK ", False, id="ok-trailing-space"),
        pytest.param(" OK", False, id="ok-leading-space"),
        pytest.param("ok", False, id="ok-lowercase"),
        pytest.param("TASK OK", False, id="log-line-not-exitstatus"),
        pytest.param("", False, id="empty"),
        pytest.param("unexpected status", False, id="unexpected-status"),
    ],
)
def test_is_success_exitstatus(exitstatus: str, success: bool) -> None:
    """Only exactly ``OK`` or ``WARNINGS: n`` is success (§4.1, §10 "WARNINGS read as failure")."""
    assert is_success_exitstatus(exitstatus) is success


@pytest.mark.parametrize(
    ("text", "action"),
    [
        pytest.param("CT 100 already running", "start", id="already-running"),
        pytest.param("CT 100 not running", "stop", id="not-running"),
        pytest.param(QEMU_NO_CONF, "terminate", id="no-conf"),
        pytest.param(QEMU_NO_CONF_RUNSTATE, "terminate", id="no-conf-on-node"),
        pytest.param(
            "unable to create VM 100 - VM 100 already exists on node 'pve'",
            "create",
            id="vmid-taken",
        ),
    ],
)
@pytest.mark.parametrize("other", ["reboot", "reset", "migrate", "configure", "resize"])
def test_satisfied_only_for_its_action(text: str, action: str, other: str) -> None:
    """A no-op text satisfies only the intent it proves; for other actions it is permanent."""
    assert classify_text(text, action=action) is S
    assert classify_text(text, action=other) is P
    assert classify_text(text) is P


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("   \n", id="blank"),
        pytest.param("the moon is made of cheese", id="unknown"),
    ],
)
def test_classify_text_unknown_is_none(text: str) -> None:
    """Texts the table does not know are left to the caller's status-code rules."""
    assert classify_text(text, action="start") is None


def test_unknown_500_is_transient_but_unknown_task_error_is_permanent() -> None:
    """A 5xx without evidence retries (SPEC §2); a task that ran and failed does not."""
    text = "something unexpected happened"
    assert classify_http(500, text, method="POST", action="start") is T
    assert classify_exitstatus(text, action="start") is P


@pytest.mark.parametrize(
    ("exitstatus", "unknown"),
    [
        pytest.param(UNREADABLE_LOG, True, id="unreadable-log"),
        pytest.param("unable to get last line from task log - ", True, id="no-detail"),
        pytest.param("unexpected status", False, id="unexpected-status"),
        pytest.param("OK", False, id="ok"),
        pytest.param(f"failed: {UNREADABLE_LOG}", False, id="not-at-start"),
    ],
)
def test_is_unknown_exitstatus(exitstatus: str, unknown: bool) -> None:
    """Only ``unable to get last line from task log …`` is an exit status with no outcome."""
    assert is_unknown_exitstatus(exitstatus) is unknown
