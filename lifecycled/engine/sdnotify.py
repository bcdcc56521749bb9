"""The systemd notification protocol (sd_notify(3)): READY, STATUS, WATCHDOG, STOPPING.

A datagram to ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). Outside
systemd (no socket) every call does nothing. Sending never raises: a notification that cannot
be delivered is logged once and dropped, it must never stop the daemon.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping

log = logging.getLogger("lifecycled.engine.sdnotify")


class Notifier:
    """Sends ``KEY=VALUE`` lines to systemd; a no-op without ``NOTIFY_SOCKET``."""

    def __init__(self, address: str | None = None, *, watchdog_usec: int | None = None) -> None:
        self._address = "\0" + address[1:] if address and address.startswith("@") else address
        self.watchdog_usec = watchdog_usec
        self._failed = False
        self._last_status: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, pid: int) -> Notifier:
        """From the variables systemd sets for ``Type=notify`` (``WATCHDOG_PID`` must be ours)."""
        usec: int | None = None
        raw = env.get("WATCHDOG_USEC", "")
        owner = env.get("WATCHDOG_PID", "")
        if raw.isdigit() and int(raw) > 0 and (not owner or owner == str(pid)):
            usec = int(raw)
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog_usec=usec)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """How often to send ``WATCHDOG=1``: half the unit's ``WatchdogSec=``."""
        return None if not self.enabled or not self.watchdog_usec else self.watchdog_usec / 2e6

    def notify(self, **fields: str) -> None:
        if self._address is None:
            return
        message = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self._address)
                sock.sendall(message)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("sdnotify.failed", extra={"error": str(exc)})

    def ready(self, status: str) -> None:
        self._last_status = status
        self.notify(READY="1", STATUS=status)

    def status(self, status: str) -> None:
        """``STATUS=`` when it changed (``systemctl status`` shows it)."""
        if status != self._last_status:
            self._last_status = status
            self.notify(STATUS=status)

    def watchdog(self) -> None:
        self.notify(WATCHDOG="1")

    def stopping(self) -> None:
        self.notify(STOPPING="1", STATUS="stopping: letting dispatches journal their UPID")
