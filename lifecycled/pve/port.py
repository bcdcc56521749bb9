"""What the engine needs from Proxmox: the :class:`PveClient` Protocol and its records.

Adapters (the aiohttp client, the proxmoxer backend) satisfy the Protocol structurally.
Every method raises :class:`lifecycled.errors.PveError` (with its ``error_class`` set by
:func:`lifecycled.domain.classify.classify_http`) on failure; nothing else escapes except
cancellation.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any, Protocol

import attrs

from lifecycled.domain.actions import Action, GuestView
from lifecycled.domain.check import Listed
from lifecycled.domain.op import GuestKind
from lifecycled.domain.upid import Upid
from lifecycled.errors import PveError

#: Called once per HTTP request: (method, endpoint template, status code or "error", seconds).
RequestHook = Callable[[str, str, str, float], None]


@attrs.frozen(kw_only=True)
class TaskStatus:
    """``GET /nodes/{node}/tasks/{upid}/status`` (reference §4.1)."""

    upid: Upid
    status: str  # "running" | "stopped"
    exitstatus: str | None = None

    @property
    def running(self) -> bool:
        return self.status == "running"


@attrs.frozen(kw_only=True)
class TaskEntry:
    """One item of ``GET /nodes/{node}/tasks`` (reference §4.3)."""

    upid: Upid
    starttime: int
    endtime: int | None = None
    #: ``RUNNING`` for active tasks, else the exit status text; None if absent.
    status: str | None = None

    @property
    def type(self) -> str:
        return self.upid.type

    @property
    def id(self) -> str:
        return self.upid.id

    @property
    def user(self) -> str:
        return self.upid.user


@attrs.frozen(kw_only=True)
class TaskList:
    """One page of ``GET /nodes/{node}/tasks`` (reference §13.9)."""

    items: tuple[TaskEntry, ...]
    #: The node's count of all matching tasks (the envelope's ``total``); None when the
    #: backend cannot see it (proxmoxer's serializers return ``data`` only).
    total: int | None
    #: Entries on this page as Proxmox sent them (``items`` leaves out unreadable ones).
    received: int

    def more_after(self, *, start: int, limit: int) -> bool:
        """Whether matching tasks may follow this page (read from ``start`` with ``limit``).

        With ``total`` the listing says so itself; without it a full page means "maybe".
        """
        if self.received == 0:
            return False
        if self.total is not None:
            return start + self.received < self.total
        return self.received >= limit


@attrs.frozen(kw_only=True)
class GuestStatus:
    """``GET …/{vmid}/status/current`` (reference §5.1–5.2), or one item of the node's
    listing ``GET /nodes/{node}/qemu|lxc`` (no ``ha`` there, and QEMU items carry no
    ``qmpstatus`` unless ``full=1``: see :mod:`lifecycled.domain.check`)."""

    vmid: int
    status: str
    qmpstatus: str | None = None
    name: str | None = None
    lock: str | None = None
    template: bool = False
    ha_managed: bool = False
    ha_state: str | None = None
    cpus: float | None = None
    maxmem: int | None = None
    maxdisk: int | None = None
    uptime: int | None = None
    #: The guest's Proxmox tags (``;``-separated), when set.
    tags: str | None = None

    def listed(self) -> Listed:
        """This item as the pure Check sees a listing entry."""
        return Listed(
            status=self.status, lock=self.lock, template=self.template, qmpstatus=self.qmpstatus
        )


@attrs.frozen(kw_only=True)
class GuestConfig:
    """``GET …/{vmid}/config``: the key/values and the config ``digest``."""

    values: Mapping[str, Any]
    digest: str


@attrs.frozen(kw_only=True)
class ClusterResource:
    """One ``/cluster/resources?type=vm`` item (reference §5.4)."""

    vmid: int
    kind: GuestKind
    node: str
    status: str
    name: str | None = None
    lock: str | None = None
    template: bool = False
    hastate: str | None = None
    maxcpu: float | None = None
    maxmem: int | None = None
    maxdisk: int | None = None
    #: The guest's Proxmox tags (``;``-separated), where lifecycled keeps its ownership record.
    tags: str | None = None


@attrs.frozen(kw_only=True)
class NodeEntry:
    """One ``GET /nodes`` item: a cluster node and whether it is ``online``."""

    node: str
    status: str


class PveClient(Protocol):
    """The Proxmox operations lifecycled uses. All are coroutines; all raise ``PveError``."""

    @property
    def user(self) -> str:
        """The effective Proxmox user, as it appears in UPIDs (``user@realm!tokenid``)."""
        ...

    async def dispatch(
        self,
        node: str,
        kind: GuestKind,
        action: Action,
        vmid: int,
        params: Mapping[str, Any],
    ) -> Upid | None:
        """Call the catalogued endpoint; the UPID, or ``None`` when the endpoint was sync."""
        ...

    async def task_status(self, upid: Upid) -> TaskStatus:
        """Status of a task, read on the UPID's own node."""
        ...

    async def task_log(self, upid: Upid, *, start: int = 0, limit: int = 50) -> list[str]:
        """Lines of a task log (line ``start`` onwards)."""
        ...

    async def tasks(
        self,
        node: str,
        *,
        source: str = "all",
        vmid: int | None = None,
        typefilter: str | None = None,
        since: int | None = None,
        userfilter: str | None = None,
        start: int = 0,
        limit: int = 50,
    ) -> TaskList:
        """The node's task list with Proxmox's own filters."""
        ...

    async def stop_task(self, upid: Upid) -> None:
        """``DELETE /nodes/{node}/tasks/{upid}``."""
        ...

    async def guest_status(self, node: str, kind: GuestKind, vmid: int) -> GuestStatus: ...

    async def guest_config(
        self, node: str, kind: GuestKind, vmid: int, *, current: bool = False
    ) -> GuestConfig: ...

    async def cluster_resources(self) -> list[ClusterResource]:
        """``GET /cluster/resources?type=vm``: finds guests; its status lags (§13.10)."""
        ...

    async def node_guests(
        self, node: str, kind: GuestKind, *, only: Collection[int] | None = None
    ) -> list[GuestStatus]:
        """``GET /nodes/{node}/qemu|lxc`` (no ``full``): every guest of that kind whose config
        is on the node and which the caller may audit, with its live ``status``, ``lock``,
        ``template`` and ``tags`` — never ``ha``, and no QEMU ``qmpstatus``. ``only``: just
        these vmids (the rest of the answer is not decoded into statuses)."""
        ...

    async def set_tags(self, node: str, kind: GuestKind, vmid: int, tags: str, digest: str) -> None:
        """``PUT …/{vmid}/config`` with ``tags`` and the config ``digest`` read before (a stale
        digest is refused by Proxmox: the compare-and-swap of the ownership record)."""
        ...

    async def node_status(self, node: str) -> Mapping[str, Any]: ...

    async def ha_resource(self, sid: str) -> Mapping[str, Any] | None:
        """``GET /cluster/ha/resources/{sid}``; ``None`` when the guest is not HA-managed."""
        ...

    async def ha_set_state(self, sid: str, state: str) -> None:
        """``PUT /cluster/ha/resources/{sid}`` with ``state`` (started/stopped/…)."""
        ...

    async def version(self) -> Mapping[str, Any]:
        """``GET /version`` (any authenticated user may read it)."""
        ...

    async def nodes(self) -> list[NodeEntry]:
        """``GET /nodes``: the cluster's nodes."""
        ...

    async def node_config(self, node: str) -> tuple[str, str]:
        """``GET /nodes/{node}/config``: the node's ``description`` and config ``digest``."""
        ...

    async def set_node_description(self, node: str, description: str, digest: str) -> None:
        """``PUT /nodes/{node}/config`` with ``description`` and the ``digest`` read before."""
        ...

    async def node_time(self, node: str) -> float:
        """``GET /nodes/{node}/time``: the node's clock (Unix time)."""
        ...

    async def permissions(self) -> dict[str, frozenset[str]]:
        """``GET /access/permissions``: the caller's privileges per ACL path."""
        ...

    async def close(self) -> None: ...


#: Tasks asked for per page when a whole listing is read (:func:`all_tasks`).
TASK_PAGE = 500


async def all_tasks(
    client: PveClient,
    node: str,
    *,
    source: str = "all",
    vmid: int | None = None,
    since: int | None = None,
    userfilter: str | None = None,
    page: int = TASK_PAGE,
) -> tuple[TaskEntry, ...]:
    """Every matching task of ``node``, paging with ``start`` until the listing is complete.

    Proxmox returns at most ``limit`` tasks per call (reference §13.9); a search that read
    only the first page would miss an older task on a busy node. Pages overlap harmlessly
    when new tasks arrive meanwhile (the list is newest first): entries are kept once.
    """
    seen: dict[str, TaskEntry] = {}
    start = 0
    while True:
        listing = await client.tasks(
            node,
            source=source,
            vmid=vmid,
            since=since,
            userfilter=userfilter,
            start=start,
            limit=page,
        )
        for item in listing.items:
            seen.setdefault(str(item.upid), item)
        if not listing.more_after(start=start, limit=page):
            return tuple(seen.values())
        start += listing.received


def is_no_such_task(err: PveError) -> bool:
    """Whether a task read failed because the node has no such task (reference §4.1, §4.5)."""
    if err.status != 400:
        return False
    return err.errors.get("upid") == "no such task" or "no such task" in err.reason


_MISSING_MARKERS = ("does not exist", "unable to find configuration file")


def is_guest_missing(err: PveError) -> bool:
    """Whether a guest read failed because the guest's config is not on that node."""
    return err.status == 500 and any(m in err.reason for m in _MISSING_MARKERS)


async def read_guest_status(client: PveClient, node: str, kind: GuestKind, vmid: int) -> GuestView:
    """The guest from ``status/current`` alone (no config): one request instead of two.

    Enough for the power actions' targets and checks — status, qmpstatus, the config
    ``lock`` (status/current carries it when set), template and HA flags — but not for a
    fingerprint, a protection flag or config values: :func:`read_guest` has those.
    """
    try:
        status = await client.guest_status(node, kind, vmid)
    except PveError as err:
        if is_guest_missing(err):
            return GuestView.absent()
        raise
    return GuestView(
        exists=True,
        node=node,
        status=status.status,
        qmpstatus=status.qmpstatus,
        lock=status.lock,
        ha_managed=status.ha_managed,
        template=status.template,
    )


async def read_guest(client: PveClient, node: str, kind: GuestKind, vmid: int) -> GuestView:
    """Status and config of a guest as one :class:`GuestView`; absent when it is missing."""
    try:
        status = await client.guest_status(node, kind, vmid)
        config = await client.guest_config(node, kind, vmid)
    except PveError as err:
        if is_guest_missing(err):
            return GuestView.absent()
        raise
    return GuestView(
        exists=True,
        node=node,
        status=status.status,
        qmpstatus=status.qmpstatus,
        lock=status.lock if status.lock is not None else config.values.get("lock"),
        ha_managed=status.ha_managed,
        template=status.template,
        config=dict(config.values),
        digest=config.digest,
    )
