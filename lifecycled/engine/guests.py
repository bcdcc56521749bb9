"""Ownership requests (SPEC §1 "Ownership"): manage, adopt, release, set desired state.

``manage`` and ``adopt`` read the guest from Proxmox first — its full config (the snapshot
whose digest later tells config drift), its resources, its real status and its identity
fingerprint — and record all of it with an audit record in one transaction. The CLI, the
HTTP API and ``--manage-discovered`` all come through here.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import AsyncIterator
from typing import Any

import attrs

from lifecycled.audit import AuditRecord, Decision
from lifecycled.domain.actions import fingerprint_of
from lifecycled.domain.guests import (
    DesiredState,
    GuestHead,
    GuestOrigin,
    GuestRecord,
    ObservedState,
    guest_name,
    observed_from,
    resources_of,
)
from lifecycled.domain.op import GuestKind
from lifecycled.domain.ownership import OwnershipRecord, fingerprint_digest
from lifecycled.engine.clock import Clock
from lifecycled.engine.cluster import Cluster, same_identity
from lifecycled.errors import (
    NotFound,
    OwnershipLocked,
    PolicyRefused,
    PveError,
    ValidationError,
)
from lifecycled.journal import Journal
from lifecycled.journal.guests import Ownership, not_managed, snapshot_json
from lifecycled.pve.port import GuestConfig, PveClient, is_guest_missing

log = logging.getLogger("lifecycled.guests")


class IdentityMismatch(PolicyRefused):
    """The guest under the VMID has no ownership record and is not the guest the journal
    manages (its fingerprint differs: the VMID was reused, SPEC §1): lifecycled writes no
    record to it and does not act on it."""

    def __init__(self, vmid: int, node: str) -> None:
        super().__init__(
            "identity_mismatch",
            f"guest {vmid} on node {node} is not the guest lifecycled manages under that vmid "
            "(its identity fingerprint differs: the vmid was reused); nothing is done to it",
        )
        self.vmid = vmid


class Unread(enum.Enum):
    """The caller did not read the guest's journal row."""

    UNREAD = "unread"


UNREAD = Unread.UNREAD

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
        cluster: Cluster | None = None,
    ) -> None:
        self.journal = journal
        self.pve = pve
        self.clock = clock
        self.protected_vmids = protected_vmids
        #: The shared ownership record (tags); ``None``: journal only (admin CLI, old tests).
        self.cluster = cluster
        #: Idempotency keys being submitted now: a lock and how many submissions hold or
        #: await it (see :meth:`key_turn`).
        self._key_turns: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def key_turn(self, key: str) -> AsyncIterator[None]:
        """One submission of an idempotency key at a time in this daemon: the key goes to
        the guest's record and its op to the journal within one turn, so a resend of the key
        meanwhile waits and finds the op (deduplicated) instead of taking the key in the
        record for another daemon's (SPEC §1, §7: one key, one run)."""
        lock, users = self._key_turns.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._key_turns[key]

    async def locate(self, vmid: int) -> tuple[str, GuestKind]:
        """The guest's node and kind from ``/cluster/resources``; NotFound when absent,
        WrongNode when it is on a node this daemon does not serve."""
        if self.cluster is not None:
            res = await self.cluster.placed(vmid)
            return res.node, res.kind
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
        try:
            taken = await self._write_taken(vmid, origin) if self.cluster is not None else None
        except OwnershipLocked as err:
            # A backup or snapshot holds the config (and no migration can run meanwhile):
            # the journal takes the guest now, reconcile writes its record once unlocked.
            log.warning("ownership.deferred", extra={"vmid": vmid, "error": str(err)})
            taken = None
        if taken is not None:
            record, node, kind = taken
            rec = await self.capture(vmid, origin, node=node, kind=kind)
            rec = attrs.evolve(
                rec,
                desired_state=record.desired,
                desired_generation=record.generation,
                protected=rec.protected or record.protected,
            )
        else:
            rec = await self.capture(vmid, origin)
            if self.cluster is not None:  # deferred: one generation ahead of the tags
                old, _ = await self.cluster.read(rec.node, rec.kind, vmid)
                rec = attrs.evolve(rec, desired_generation=old.generation + 1 if old else 1)
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

    async def _write_taken(
        self, vmid: int, origin: GuestOrigin
    ) -> tuple[OwnershipRecord, str, GuestKind]:
        """SPEC §7: the record goes to the guest's tags before anything is journaled (then
        the capture reads the config with its tags, so the snapshot digest is the final one).
        A guest the record already names as managed keeps its desired state."""
        assert self.cluster is not None and self.pve is not None
        node, kind = await self.locate(vmid)
        try:
            status = await self.pve.guest_status(node, kind, vmid)
        except PveError as err:
            if is_guest_missing(err):
                raise NotFound(f"guest {vmid} not found on node {node}") from None
            raise
        observed = observed_from(status.qmpstatus or status.status, status.lock)
        desired = {
            ObservedState.RUNNING: DesiredState.RUNNING,
            ObservedState.STOPPED: DesiredState.STOPPED,
        }.get(observed)

        def change(old: OwnershipRecord | None, config: GuestConfig) -> OwnershipRecord:
            if old is not None and old.origin is origin:
                return old
            keep = old is not None and old.managed
            values = config.values
            return (old or OwnershipRecord(origin=origin)).bumped(
                origin=origin,
                desired=old.desired if keep and old is not None else desired,
                protected=vmid in self.protected_vmids or str(values.get("protection", "0")) == "1",
                fingerprint=fingerprint_digest(fingerprint_of(kind, values)),
            )

        record = await self.cluster.write(node, kind, vmid, change)
        assert record is not None
        return record, node, kind

    async def manage(self, vmid: int, *, actor: str) -> Ownership:
        return await self.take(vmid, GuestOrigin.NATIVE, actor=actor)

    async def adopt(self, vmid: int, *, actor: str) -> Ownership:
        return await self.take(vmid, GuestOrigin.ADOPTED, actor=actor)

    async def release(self, vmid: int, *, actor: str) -> Ownership:
        """Release a managed guest (kept as ``released``; never acted on again), audited."""
        guest = await self.journal.get_guest(vmid)
        generation = 0
        placed: tuple[str, GuestKind] | None = None
        if self.cluster is not None and guest.managed:
            try:
                placed = await self.locate(vmid)
            except NotFound:  # gone from the whole cluster (LOST): no record to write
                log.info("guest.release_untagged", extra={"vmid": vmid})
        if placed is not None and self.cluster is not None:
            node, kind = placed

            def change(old: OwnershipRecord | None, _config: GuestConfig) -> OwnershipRecord:
                base = old or OwnershipRecord(
                    origin=guest.origin, generation=guest.desired_generation
                )
                return base.released()

            record = await self.cluster.write(node, kind, vmid, change)
            generation = record.generation if record is not None else 0
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
        result = await self.journal.release_guest(vmid, audit=audit, now=now, generation=generation)
        if result.changed:
            log.warning("guest.released", extra={"vmid": vmid, "node": guest.node, "actor": actor})
        return result

    async def set_desired(self, vmid: int, state: DesiredState, *, actor: str) -> GuestRecord:
        generation = 0
        if self.cluster is not None:
            node, kind = await self.locate(vmid)
            record, config = await self.read_record(vmid, node, kind)
            if record is None or not record.managed:
                cached = await self.journal.find_guest(vmid)
                raise not_managed(vmid, cached.origin if cached else None)

            def change(old: OwnershipRecord | None, _config: GuestConfig) -> OwnershipRecord:
                base = old or record
                if not base.managed or base.desired is state:
                    return base
                return base.bumped(desired=state)

            written = await self.cluster.write(node, kind, vmid, change, config=config)
            generation = written.generation if written is not None else 0
        guest = await self.journal.set_desired(
            vmid, state, now=self.clock.now(), generation=generation
        )
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

    # --- the shared record (SPEC §7) ---------------------------------------------------------

    async def read_record(
        self,
        vmid: int,
        node: str,
        kind: GuestKind,
        *,
        cached: GuestRecord | GuestHead | Unread | None = UNREAD,
    ) -> tuple[OwnershipRecord | None, GuestConfig | None]:
        """The guest's record from its tags, the journal's cache brought up to date with it
        first (hand-off on demand); a managed cached guest without tags gets them (backfill).
        With it the config it was read from, for the caller's own write of the record
        (:meth:`Cluster.write`'s ``config``: one read per op); ``None`` when the record was
        just pushed (that config is no longer the guest's).

        ``cached``: the guest's journal row as the caller read it moments before (a
        submission reads it for the guest's placement). When the record agrees with it,
        the row is not read again; a push or a follow is only ever decided on a row read
        after the record (the whole row: ``cached`` may be its head only)."""
        assert self.cluster is not None
        record, config = await self.cluster.read(node, kind, vmid)
        if not isinstance(cached, Unread) and not _acts(cached, record, node):
            return record, config  # None unless the row names a managed guest: nothing to do
        row = await self.journal.find_guest(vmid)
        if record is None and (row is None or not row.managed):
            return None, config
        if ahead_of(row, record):
            assert row is not None
            try:
                return await self.push(row), None
            except IdentityMismatch as err:  # no record written; the op's own checks decide
                log.critical("guest.identity_mismatch", extra={"vmid": vmid, "error": str(err)})
                return None, config
        assert record is not None
        if needs_sync(row, record, node):
            await self.follow(vmid, node, kind, record, config=config)
        return record, config

    async def push(self, cached: GuestRecord) -> OwnershipRecord | None:
        """Write the journal's newer ownership of a guest to its tags (backfill of a managed
        guest without a record, or an op accepted while the tags could not be written).
        A guest without a record must be the one the journal manages (its fingerprint):
        else :class:`IdentityMismatch` and nothing is written (a reused VMID)."""
        assert self.cluster is not None

        def change(old: OwnershipRecord | None, config: GuestConfig) -> OwnershipRecord | None:
            if old is not None and old.generation >= cached.desired_generation:
                return old  # someone wrote a newer record meanwhile: it wins
            if old is None and not same_identity(
                cached.fingerprint, fingerprint_of(cached.kind, config.values)
            ):
                raise IdentityMismatch(cached.vmid, cached.node)
            return OwnershipRecord(
                origin=cached.origin,
                desired=cached.desired_state,
                generation=max(cached.desired_generation, old.generation + 1 if old else 1),
                protected=cached.protected,
                fingerprint=fingerprint_digest(cached.fingerprint),
                last_keys=old.last_keys if old else (),
            )

        record = await self.cluster.write(cached.node, cached.kind, cached.vmid, change)
        if record is not None and record.generation > cached.desired_generation:
            await self.journal.sync_ownership(
                cached.vmid,
                changes={"desired_generation": record.generation},
                fresh=cached,
                now=self.clock.now(),
            )
        return record

    async def follow(
        self,
        vmid: int,
        node: str,
        kind: GuestKind,
        record: OwnershipRecord,
        *,
        name: str | None = None,
        config: GuestConfig | None = None,
        verify: bool = False,
    ) -> GuestRecord | None:
        """Bring the journal's cached row of a guest on a served node up to its record in
        the tags — the hand-off after a migration (SPEC §7). When the cached node or name
        changed (or there is no cached identity) the guest's identity is checked first: a
        guest whose fingerprint is not the record's is reported and never taken over."""
        assert self.cluster is not None
        cached = await self.journal.find_guest(vmid)
        now = self.clock.now()
        fingerprint: dict[str, str] | None = None
        if (
            verify
            or cached is None
            or not cached.fingerprint
            or cached.node != node
            or (name is not None and cached.name != name)
        ):
            if config is None:
                try:
                    config = await self.cluster.pve.guest_config(node, kind, vmid)
                except PveError as err:
                    log.warning("guest.follow_failed", extra={"vmid": vmid, "error": err.text})
                    return None
            ok, fingerprint = self.cluster.identity_holds(record, kind, config)
            if cached is not None and cached.managed:
                ok = ok and same_identity(cached.fingerprint, fingerprint)
            if not ok:
                log.critical(
                    "guest.identity_mismatch",
                    extra={
                        "vmid": vmid,
                        "node": node,
                        "recorded": record.fingerprint,
                        "found": fingerprint,
                    },
                )
                return None
            if name is None:
                name = guest_name(kind, config.values)
        changes: dict[str, Any] = {
            "origin": record.origin,
            "desired_state": record.desired if record.managed else None,
            "desired_generation": max(
                record.generation, cached.desired_generation if cached else 0
            ),
            "protected": record.protected or vmid in self.protected_vmids,
            "node": node,
            "kind": kind,
            "lost_at": None,
        }
        if name is not None:
            changes["name"] = name
        if fingerprint:
            changes["fingerprint"] = fingerprint
        if cached is not None and cached.node != node:
            changes["config_digest"] = None  # a new baseline on the new node (not drift)
        fresh = GuestRecord(
            vmid=vmid,
            node=node,
            kind=kind,
            origin=record.origin,
            name=name,
            desired_state=changes["desired_state"],
            desired_generation=record.generation,
            protected=changes["protected"],
            fingerprint=fingerprint or {},
            created_at=now,
            updated_at=now,
        )
        guest = await self.journal.sync_ownership(vmid, changes=changes, fresh=fresh, now=now)
        if cached is None or cached.node != node or cached.origin is not record.origin:
            log.warning(
                "guest.handed_off",
                extra={
                    "vmid": vmid,
                    "node": node,
                    "previous_node": cached.node if cached else None,
                    "origin": str(record.origin),
                    "generation": record.generation,
                },
            )
        return guest


def _acts(
    cached: GuestRecord | GuestHead | None, record: OwnershipRecord | None, node: str
) -> bool:
    """Whether :meth:`GuestService.read_record` would push or follow with this row."""
    if record is None:
        return cached is not None and cached.managed
    return ahead_of(cached, record) or needs_sync(cached, record, node)


def ahead_of(cached: GuestRecord | GuestHead | None, record: OwnershipRecord | None) -> bool:
    """Whether the journal holds a newer ownership than the tags (an op accepted while the
    record could not be written, or a release journaled alone — by the CLI on the journal
    file): the tags are to be brought up to the journal."""
    if cached is None:
        return False
    if cached.origin is GuestOrigin.RELEASED:
        return (
            record is not None and record.managed and cached.desired_generation > record.generation
        )
    if not cached.managed:
        return False
    return record is None or cached.desired_generation > record.generation


def needs_sync(cached: GuestRecord | GuestHead | None, record: OwnershipRecord, node: str) -> bool:
    """Whether the journal's cached row lags the guest's record (or its node)."""
    if cached is None:
        return record.managed
    if ahead_of(cached, record):
        return False
    return (
        cached.origin is not record.origin
        or cached.node != node
        or cached.desired_generation < record.generation
        or (record.managed and cached.desired_state != record.desired)
    )


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
