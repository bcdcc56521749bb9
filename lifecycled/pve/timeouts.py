"""Per-call-kind time limits of the Proxmox adapters."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from lifecycled.domain.actions import ActionSpec
from lifecycled.errors import ConfigError


def _positive(_inst: object, attr: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ConfigError(f"timeout {attr.name} must be positive, got {value!r}")


@attrs.frozen(kw_only=True)
class Timeouts:
    """Seconds allowed per kind of call (whole request, answer included).

    * ``connect`` — TCP/TLS connect; a failure here means nothing was sent (transient);
    * ``read`` — guest, cluster, node and HA reads;
    * ``task_read`` — task status, log and list reads (the poller's hot path: fail fast);
    * ``write`` — calls that fork a worker and answer with a UPID. pveproxy gives up on
      pvedaemon after 30 s (596), and a lock wait before the fork can take 10 s;
    * ``sync_write`` — calls that do the work inside the request (LXC ``PUT config``,
      ``PUT resize`` on servers older than qemu-server 8.0.2), which can take long.

    A timeout after a write was sent is *ambiguous*: the task may have started.
    """

    connect: float = attrs.field(default=5.0, validator=_positive)
    read: float = attrs.field(default=30.0, validator=_positive)
    task_read: float = attrs.field(default=10.0, validator=_positive)
    write: float = attrs.field(default=60.0, validator=_positive)
    sync_write: float = attrs.field(default=300.0, validator=_positive)

    def for_dispatch(self, spec: ActionSpec, form: Mapping[str, str]) -> float:
        """The limit of one lifecycle call; ``background_delay`` extends an async config POST."""
        base = self.sync_write if spec.sync or spec.method == "PUT" else self.write
        try:
            delay = float(form.get("background_delay", 0))
        except ValueError:
            delay = 0.0
        return base + max(delay, 0.0)
