"""The cluster as one sidecar sees it (SPEC §7): which nodes it serves, where a guest is now,
and the ownership record kept in the guest's Proxmox tags.

Reads: ``GET /nodes`` (the cluster's nodes and whether they are online), ``/cluster/resources``
(where every guest is, with its tags — used to FIND guests and read their records, never as
proof of power state), ``…/config`` (the tags with the config ``digest``). Writes: ``PUT
…/config`` with ``tags`` and that ``digest``: Proxmox refuses a stale digest, so two sidecars
(or an operator) racing for one record never lose an update; the loser re-reads and retries.
A caller that has just read the config hands it to :meth:`Cluster.write` (one read per op).
The local journal keeps its guest rows as a cache of the record; every ownership change is
written to the tags first, then to the journal. The write spends no read on the digest it
produced: the journal's drift baseline awaits it (``domain/ownership.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from lifecycled.domain.actions import fingerprint_matches, fingerprint_of
from lifecycled.domain.classify import ErrorClass
from lifecycled.domain.cluster import WrongNode, missing_nodes, node_mark, serves, with_node_mark
from lifecycled.domain.node import NodeState
from lifecycled.domain.op import GuestKind
from lifecycled.domain.ownership import (
    OwnershipRecord,
    decode,
    encode,
    fingerprint_digest,
    record_dict,
)
from lifecycled.engine.clock import Clock, SystemClock
from lifecycled.errors import (
    ConfigError,
    JournalError,
    NotFound,
    OwnershipLocked,
    OwnershipUnavailable,
    PveError,
)
from lifecycled.journal import Journal
from lifecycled.pve.port import ClusterResource, GuestConfig, NodeEntry, PveClient, is_guest_missing

log = logging.getLogger("lifecycled.cluster")

#: Attempts of one ownership write when the config keeps changing under it (digest mismatch).
WRITE_ATTEMPTS = 5
_DIGEST_TEXTS = ("checksum mismatch", "file changed by other user")

#: ``change(old record, config) -> new record`` (``None``: remove the record).
Change = Callable[[OwnershipRecord | None, GuestConfig], OwnershipRecord | None]


def is_digest_mismatch(err: PveError) -> bool:
    return any(t in err.reason for t in _DIGEST_TEXTS)


class Cluster:
    """Placement and the shared ownership record, for the nodes this daemon serves."""

    def __init__(
        self,
        *,
        pve: PveClient,
        journal: Journal | None,
        served: tuple[str, ...],
        clock: Clock | None = None,
    ) -> None:
        self.pve = pve
        self.journal = journal
        self.clock: Clock = clock or SystemClock()
        self.served = served
        #: The cluster's nodes as ``GET /nodes`` last listed them (empty: not read yet).
        self.known: frozenset[str] = frozenset()

    # --- placement ------------------------------------------------------------------------

    def serves(self, node: str) -> bool:
        return serves(self.served, node)

    def require_served(self, vmid: int, node: str) -> None:
        """Raise :class:`WrongNode` (HTTP 421) when ``node`` is another node of the cluster,
        :class:`NotFound` when the cluster has no such node."""
        if self.serves(node):
            return
        if self.known and node not in self.known:
            raise NotFound(f"guest {vmid}: the cluster has no node {node!r}")
        raise WrongNode(vmid, node, self.served)

    async def check_nodes(self) -> list[NodeEntry]:
        """At start: every served node must be a node of the cluster (else ConfigError).

        When ``GET /nodes`` cannot be read (Proxmox down) the daemon starts degraded and
        says so; a node list that lacks a served node always stops the start."""
        try:
            nodes = await self.pve.nodes()
        except PveError as err:
            log.warning("cluster.nodes_unreadable", extra={"error": err.text})
            return []
        self.known = frozenset(n.node for n in nodes)
        missing = missing_nodes(self.served, [n.node for n in nodes])
        if missing:
            names = ", ".join(sorted(n.node for n in nodes)) or "none"
            raise ConfigError(
                f"--node names {', '.join(missing)}, not a node of this cluster (nodes: {names})"
            )
        return nodes

    async def online(self) -> dict[str, bool]:
        """Every cluster node and whether ``GET /nodes`` says it is online (empty: the list
        could not be read)."""
        try:
            online = {n.node: n.status == "online" for n in await self.pve.nodes()}
            self.known = frozenset(online)
            return online
        except PveError as err:
            log.warning("cluster.nodes_unreadable", extra={"error": err.text})
            return {}

    async def view(
        self, *, node: str | None = None, managed: bool | None = None
    ) -> list[dict[str, Any]]:
        """Every guest of the cluster (``GET /v1/guests?scope=cluster``): where it is and its
        Proxmox status (live, though ``/cluster/resources`` lags a few seconds), the record
        in its tags, and whether this daemon serves its node. One request (two when ``node``
        has no guest: it must name a node of the cluster, else :class:`NotFound`)."""
        resources = await self.pve.cluster_resources()
        if node is not None and all(res.node != node for res in resources):
            nodes = await self.online()
            if nodes and node not in nodes:
                raise NotFound(f"the cluster has no node {node!r}")
        out: list[dict[str, Any]] = []
        for res in sorted(resources, key=lambda r: r.vmid):
            if node is not None and res.node != node:
                continue
            record = decode(res.tags)
            entry = {
                "vmid": res.vmid,
                "node": res.node,
                "kind": str(res.kind),
                "name": res.name,
                "status": res.status,
                "lock": res.lock,
                "ha_managed": bool(res.hastate) and res.hastate != "ignored",
                **record_dict(record),
                "served_here": self.serves(res.node),
            }
            if managed is not None and entry["managed"] is not managed:
                continue
            out.append(entry)
        return out

    # --- node lifecycle, cluster-wide -----------------------------------------------------

    async def node_state(self, node: str) -> NodeState | None:
        """The lifecycle state published in ``node``'s description (draining,
        decommissioned), or ``None``; ``None`` too when the node cannot be read."""
        try:
            description, _ = await self.pve.node_config(node)
        except PveError as err:
            log.info("cluster.node_unreadable", extra={"node": node, "error": err.text})
            return None
        return node_mark(description)

    async def publish_node_state(self, node: str, state: NodeState) -> bool:
        """Make ``node``'s description carry its state (published states only, the rest
        clears the mark); True when it was written. Digest compare-and-swap, retried."""
        for _ in range(WRITE_ATTEMPTS):
            description, digest = await self.pve.node_config(node)
            wanted = with_node_mark(description, state)
            if node_mark(wanted) == node_mark(description):
                return False
            try:
                await self.pve.set_node_description(node, wanted, digest)
            except PveError as err:
                if is_digest_mismatch(err):
                    continue
                raise
            log.info("cluster.node_state_published", extra={"node": node, "state": str(state)})
            return True
        return False

    async def locate(self, vmid: int) -> ClusterResource | None:
        """Where the guest is now (``/cluster/resources``), with its tags; ``None``: nowhere."""
        for res in await self.pve.cluster_resources():
            if res.vmid == vmid:
                return res
        return None

    async def placed(self, vmid: int) -> ClusterResource:
        """The guest's resource when it is on a served node; NotFound or WrongNode else."""
        res = await self.locate(vmid)
        if res is None:
            raise NotFound(f"guest {vmid} not found in the cluster")
        self.require_served(vmid, res.node)
        return res

    # --- the record -----------------------------------------------------------------------

    async def read(
        self, node: str, kind: GuestKind, vmid: int
    ) -> tuple[OwnershipRecord | None, GuestConfig]:
        """The record in the guest's tags and the config it was read from."""
        try:
            config = await self.pve.guest_config(node, kind, vmid)
        except PveError as err:
            if is_guest_missing(err):
                res = await self.locate(vmid)
                if res is not None and res.node != node and not self.serves(res.node):
                    raise WrongNode(vmid, res.node, self.served) from None
                raise NotFound(f"guest {vmid} not found on node {node}") from None
            raise
        return decode(_tags(config)), config

    async def write(
        self,
        node: str,
        kind: GuestKind,
        vmid: int,
        change: Change,
        *,
        config: GuestConfig | None = None,
    ) -> OwnershipRecord | None:
        """Apply ``change`` to the guest's record with the config digest as compare-and-swap;
        re-read and retry when the config changed meanwhile. ``config``: the guest's config
        the caller has just read — the first attempt works from it (its record and digest)
        instead of reading again; a stale one only costs the retry.

        Raises :class:`OwnershipUnavailable` when the cluster refuses the write (no quorum,
        pmxcfs read-only, a config lock such as a migration's) or the config keeps changing.
        """
        self.require_served(vmid, node)
        for _ in range(WRITE_ATTEMPTS):
            if config is None:
                old, config = await self.read(node, kind, vmid)
            else:
                old = decode(_tags(config))
            new = change(old, config)
            if new == old:
                return old
            tags = encode(new, _tags(config))
            try:
                await self.pve.set_tags(node, kind, vmid, tags, config.digest)
            except PveError as err:
                if is_digest_mismatch(err):
                    log.info("ownership.retry", extra={"vmid": vmid, "node": node})
                    config = None
                    continue
                error = (
                    OwnershipLocked
                    if err.error_class is ErrorClass.LOCKED
                    else OwnershipUnavailable
                )
                raise error(
                    f"the ownership record of guest {vmid} cannot be written to its Proxmox "
                    f"config now ({err.text}); nothing was changed, retry later"
                ) from None
            if self.journal is not None:
                # Our own write changed the digest: not drift. The baseline follows the
                # values it left; the next read of the config learns the digest (no read
                # here — domain/ownership.py "the drift baseline around own tag writes").
                # The record is written whatever the journal says: its caller must know.
                try:
                    await self.journal.follow_digest(
                        vmid, config.digest, config.values, tags, now=self.clock.now()
                    )
                except JournalError as err:
                    log.warning(
                        "ownership.baseline_unsaved", extra={"vmid": vmid, "error": str(err)}
                    )
            log.info(
                "ownership.written",
                extra={
                    "vmid": vmid,
                    "node": node,
                    "origin": str(new.origin) if new else None,
                    "generation": new.generation if new else None,
                },
            )
            return new
        raise OwnershipUnavailable(
            f"the config of guest {vmid} kept changing while its ownership record was written; "
            "retry later"
        )

    def identity_holds(
        self, record: OwnershipRecord, kind: GuestKind, config: GuestConfig
    ) -> tuple[bool, dict[str, str]]:
        """Whether the guest's config still has the identity its record names (SPEC §7
        "identity follows the guest"), and the fingerprint read now."""
        current = fingerprint_of(kind, config.values)
        if record.fingerprint is None:
            return True, current
        return fingerprint_digest(current) == record.fingerprint, current


def _tags(config: GuestConfig) -> str | None:
    value = config.values.get("tags")
    return str(value) if value is not None else None


def same_identity(recorded: dict[str, str], current: dict[str, str]) -> bool:
    """Whether a cached full fingerprint still matches (empty: nothing to compare)."""
    return not recorded or fingerprint_matches(recorded, current)
