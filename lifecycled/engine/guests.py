"""Ownership requests (SPEC §1 "Ownership"): manage, adopt, release, set desired state.

``manage`` and ``adopt`` read the guest from Proxmox first — its full config (the snapshot
whose digest later tells config drift), its resources, its real status and its identity
fingerprint — and record all of it with an audit record in one transaction. The CLI, the
HTTP API and ``--manage-discovered`` all come through here.
"""

from __future__ import annotations

import logging
from typing import Any

from lifecycled.audit import AuditRecord, Decision
from lifecycled.domain.actions import fingerprint_of
from lifecycled.domain.guests import (
    DesiredState,
    GuestOrigin,
    GuestRecord,
    ObservedState,
    guest_name,
    observed_from,
    resources_of,
)
from lifecycled.domain.op import GuestKind
from lifecycled.engine.clock import Clock
from lifecycled.errors import NotFound, PveError, ValidationError
from lifecycled.journal import Journal
from lifecycled.journal.guest_rows import snapshot_json
from lifecycled.journal.guests import Ownership
from lifecycled.pve.port import PveClient, is_guest_missing

log = logging.getLogger("lifecycled.guests")

_DECISION = {
    GuestOrigin.NATIVE: Decision.MANAGED,
    GuestOrigin.ADOPTED: Decision.ADOPTED,
}


class GuestService:
    """Ownership changes and desired state, over the journal and (for capture) Proxmox."""

    def __init__(
        self,
        *,
        journal: Journal,
        pve: PveClient | None,
        clock: Clock,
        protected_vmids: frozenset[int] = frozenset(),
    ) -> None:
        self.journal = journal
        self.pve = pve
        self.clock = clock
        self.protected_vmids = protected_vmids

    async def locate(self, vmid: int) -> tuple[str, GuestKind]:
        """The guest's node and kind from ``/cluster/resources``; NotFound when absent."""
        if self.pve is None:
            raise ValidationError("Proxmox is not configured here", {"vmid": "cannot read"})
        for res in await self.pve.cluster_resources():
            if res.vmid == vmid:
                return res.node, res.kind
        raise NotFound(f"guest {vmid} not found in the cluster")

    async def capture(
        self,
        vmid: int,
        origin: GuestOrigin,
        *,
        node: str | None = None,
        kind: GuestKind | None = None,
    ) -> GuestRecord:
        """Everything lifecycled records when a guest becomes managed, read from Proxmox."""
        if node is None or kind is None:
            node, kind = await self.locate(vmid)
        assert self.pve is not None
        try:
            status = await self.pve.guest_status(node, kind, vmid)
            config = await self.pve.guest_config(node, kind, vmid)
        except PveError as err:
            if is_guest_missing(err):
                raise NotFound(f"guest {vmid} not found on node {node}") from None
            raise
        values = dict(config.values)
        lock = status.lock if status.lock is not None else values.get("lock")
        observed = observed_from(status.qmpstatus or status.status, lock)
        desired = {
            ObservedState.RUNNING: DesiredState.RUNNING,
            ObservedState.STOPPED: DesiredState.STOPPED,
        }.get(observed)
        now = self.clock.now()
        return GuestRecord(
            vmid=vmid,
            node=node,
            kind=kind,
            origin=origin,
            name=guest_name(kind, values) or status.name,
            desired_state=desired,
            observed_state=observed,
            observed_at=now,
            lock=lock,
            ha_managed=status.ha_managed,
            template=status.template,
            protected=vmid in self.protected_vmids or str(values.get("protection", "0")) == "1",
            fingerprint=fingerprint_of(kind, values),
            config_snapshot=snapshot_json(values),
            config_digest=config.digest,
            snapshot_at=now,
            observed_digest=config.digest,
            digest_checked_at=now,
            resources=resources_of(kind, values, cpus=status.cpus, maxmem=status.maxmem),
            created_at=now,
            updated_at=now,
            adopted_at=now if origin is GuestOrigin.ADOPTED else None,
        )

    async def take(
        self, vmid: int, origin: GuestOrigin, *, actor: str, reason: str = ""
    ) -> Ownership:
        """``manage`` (native) or ``adopt``: capture the guest and record it, audited."""
        rec = await self.capture(vmid, origin)
        why = reason or f"{_DECISION[origin]} by {actor}"
        audit = AuditRecord(
            at=rec.created_at,
            actor=actor,
            action="manage" if origin is GuestOrigin.NATIVE else "adopt",
            decision=_DECISION[origin],
            reason=why,
            vmid=vmid,
            node=rec.node,
            snapshot=_snapshot(rec),
        )
        result = await self.journal.take_guest(rec, audit=audit, now=self.clock.now())
        if result.changed:
            log.warning(
                "guest.managed" if origin is GuestOrigin.NATIVE else "guest.adopted",
                extra={"vmid": vmid, "node": rec.node, "actor": actor, "origin": str(origin)},
            )
        return result

    async def manage(self, vmid: int, *, actor: str) -> Ownership:
        return await self.take(vmid, GuestOrigin.NATIVE, actor=actor)

    async def adopt(self, vmid: int, *, actor: str) -> Ownership:
        return await self.take(vmid, GuestOrigin.ADOPTED, actor=actor)

    async def release(self, vmid: int, *, actor: str) -> Ownership:
        """Release a managed guest (kept as ``released``; never acted on again), audited."""
        guest = await self.journal.get_guest(vmid)
        now = self.clock.now()
        audit = AuditRecord(
            at=now,
            actor=actor,
            action="release",
            decision=Decision.RELEASED,
            reason=f"released by {actor}",
            vmid=vmid,
            node=guest.node,
            snapshot=_snapshot(guest),
        )
        result = await self.journal.release_guest(vmid, audit=audit, now=now)
        if result.changed:
            log.warning("guest.released", extra={"vmid": vmid, "node": guest.node, "actor": actor})
        return result

    async def set_desired(self, vmid: int, state: DesiredState, *, actor: str) -> GuestRecord:
        guest = await self.journal.set_desired(vmid, state, now=self.clock.now())
        log.info(
            "guest.desired_set",
            extra={
                "vmid": vmid,
                "node": guest.node,
                "actor": actor,
                "desired": str(state),
                "generation": guest.desired_generation,
            },
        )
        return guest


def _snapshot(rec: GuestRecord) -> dict[str, Any]:
    return {
        "origin": str(rec.origin),
        "node": rec.node,
        "kind": str(rec.kind),
        "name": rec.name,
        "observed_state": rec.observed_state,
        "desired_state": rec.desired_state,
        "lock": rec.lock,
        "fingerprint": rec.fingerprint,
        "config_digest": rec.config_digest,
        "resources": rec.resources,
    }
