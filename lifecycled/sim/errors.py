"""Errors the simulator answers with, and Proxmox's exact message texts (reference §2.3)."""

from __future__ import annotations

from collections.abc import Mapping


class SimError(Exception):
    """An API error: HTTP status, message (its first line is the reason phrase), ``errors``."""

    def __init__(self, status: int, message: str, errors: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = dict(errors) if errors else None


class TaskFailed(Exception):
    """Raised inside a task body: the task ends with ``TASK ERROR: <text>``."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class TaskKilled(Exception):
    """Raised inside a task body: the worker dies without a final line (``unexpected status``)."""


PARAM_FAILED = "Parameter verification failed."


def param_error(errors: Mapping[str, str]) -> SimError:
    """400 ``Parameter verification failed.`` with per-parameter texts."""
    return SimError(400, PARAM_FAILED, errors)


def fail(message: str) -> SimError:
    """A plain ``die`` in a handler: HTTP 500 with the text."""
    return SimError(500, message)


# --- message texts ---------------------------------------------------------------------------


def guest_word(kind: str) -> str:
    """``VM`` for QEMU, ``CT`` for containers (``guest_type()`` in pve-guest-common)."""
    return "VM" if kind == "qemu" else "CT"


def config_path(kind: str, node: str, vmid: int) -> str:
    sub = "qemu-server" if kind == "qemu" else "lxc"
    return f"nodes/{node}/{sub}/{vmid}.conf"


def no_config(kind: str, node: str, vmid: int) -> str:
    """``load_config`` on a missing guest."""
    return f"Configuration file '{config_path(kind, node, vmid)}' does not exist"


def no_config_on_node(vmid: int, node: str) -> str:
    """QEMU ``assert_config_exists_on_node`` (run-state checks)."""
    return f"unable to find configuration file for VM {vmid} on node '{node}'"


def lock_file(kind: str, vmid: int) -> str:
    if kind == "qemu":
        return f"/var/lock/qemu-server/lock-{vmid}.conf"
    return f"/run/lock/lxc/pve-config-{vmid}.lock"


def lock_timeout(kind: str, vmid: int) -> str:
    return f"can't lock file '{lock_file(kind, vmid)}' - got timeout"


def locked(kind: str, lock: str) -> str:
    return f"{guest_word(kind)} is locked ({lock})"


def digest_mismatch(kind: str) -> str:
    if kind == "qemu":
        return "checksum mismatch (file change by other user?)"
    return "detected modified configuration - file changed by other user? Try again."


ROOT_ONLY = "Only root may use this option."
PAUSED_SHUTDOWN = "VM is paused - cannot shutdown"
SHRINK = "shrinking disks is not supported"
INTERRUPTED = "received interrupt"
NO_SUCH_TASK = "no such task"
BAD_UPID = "unable to parse worker upid"
