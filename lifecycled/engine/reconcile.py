"""The reconcile loop (SPEC §3): read, plan (:mod:`lifecycled.domain.reconcile`), apply.

Each pass makes ONE ``/cluster/resources?type=vm`` read to find the guests and reads the
served node's live guest lists (``/nodes/{node}/qemu|lxc``) for the power states it acts on
(the cluster's lag, reference §13.10); config reads
are bounded (a few drift checks, LOST guests that reappear, newly found guests with
``--manage-discovered``). It never calls a mutating Proxmox endpoint itself: convergent work
is journaled as ops (``origin: reconcile``) that the dispatcher carries out like any other.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any

import attrs
from prometheus_async import aio

from lifecycled.audit import AuditRecord, Decision
from lifecycled.domain.actions import fingerprint_matches, fingerprint_of
from lifecycled.domain.guests import GuestRecord, Observation
from lifecycled.domain.node import NodeRecord, NodeState
from lifecycled.domain.op import GuestKind, Origin
from lifecycled.domain.ownership import decode
from lifecycled.domain.reconcile import (
    OrphanKind,
    Plan,
    ReconcileInput,
    ReconcileReport,
    command_dict,
    node_refusal,
    plan,
    report_of,
    with_live_status,
)
from lifecycled.engine.clock import Clock
from lifecycled.engine.cluster import Cluster
from lifecycled.engine.executor import internal_text
from lifecycled.engine.guests import GuestService, IdentityMismatch, ahead_of, needs_sync
from lifecycled.errors import InvalidTransition, LifecycledError, PveError, RequestNotSent
from lifecycled.journal import Journal, SubmitRequest
from lifecycled.metrics import Metrics
from lifecycled.pve.port import ClusterResource, PveClient

log = logging.getLogger("lifecycled.reconcile")

#: The reason prefix of an ``unhealthy`` state set by the health check (cleared by it too).
AUTO_UNHEALTHY = "auto:"

#: Config reads per pass looking for drift (oldest check first).
DRIFT_CHECKS_PER_PASS = 10


def observations_from(resources: list[Any]) -> list[Observation]:
    return [
        Observation(
            vmid=r.vmid,
            node=r.node,
            kind=r.kind,
            status=r.status,
            name=r.name,
            lock=r.lock,
            template=r.template,
            hastate=r.hastate,
        )
        for r in resources
    ]


class Reconciler:
    """Runs reconcile passes on the served node."""

    def __init__(
        self,
        *,
        journal: Journal,
        pve: PveClient,
        guests: GuestService,
        clock: Clock,
        metrics: Metrics,
        node: str,
        max_commands: int,
        manage_discovered: str,
        notify: Callable[[], None] = lambda: None,
        served: tuple[str, ...] = (),
        cluster: Cluster | None = None,
    ) -> None:
        self.served = served or (node,)
        self.cluster = cluster
        #: Guests whose identity failed the check after a move (kept until it passes).
        self.suspect: set[int] = set()
        self.journal = journal
        self.pve = pve
        self.guests = guests
        self.clock = clock
        self.metrics = metrics
        self.node = node
        self.max_commands = max_commands
        self.manage_discovered = manage_discovered
        self.notify = notify
        self.last_report: ReconcileReport | None = None

    async def gather(self, *, sync: bool = False) -> ReconcileInput:
        """One cluster read (which guests, where, and their ownership records in the tags),
        the served nodes' live guest lists (their power state: the cluster's lags, reference
        §13.10) and the journal's view. ``sync`` first brings the journal's cache up to the
        records (hand-off, SPEC §7)."""
        resources = await self.pve.cluster_resources()
        online: dict[str, bool] = {}
        if self.cluster is not None:
            online = await self.cluster.online()
            if sync:
                await self.node_lifecycle(online)
                await self.sync_records(resources)
        suspect = frozenset(self.suspect)
        observations = observations_from(resources)
        for served in self.served:
            live: dict[tuple[GuestKind, int], tuple[str, str | None]] = {}
            try:
                for kind in GuestKind:
                    for status in await self.pve.node_guests(served, kind):
                        live[(kind, status.vmid)] = (
                            status.qmpstatus or status.status,
                            status.lock,
                        )
            except PveError as err:
                # No live state: the node's guests read "unknown"; nothing is done to them.
                log.warning("reconcile.live_unreadable", extra={"node": served, "error": err.text})
                live.clear()
            observations = with_live_status(observations, node=served, live=live)
        return ReconcileInput(
            node=self.node,
            served=frozenset(self.served),
            online=online,
            suspect=suspect,
            recorded=frozenset(r.vmid for r in resources if decode(r.tags) is not None),
            now=self.clock.now(),
            observations=observations,
            guests={g.vmid: g for g in await self.journal.all_guests()},
            open_ops=await self.journal.open_ops_by_vmid(),
            latest_reconcile=await self.journal.latest_reconcile_ops(),
            config_changes=await self.journal.config_changes(),
            node_states=await self._node_states(),
            max_commands=self.max_commands,
            manage_discovered=self.manage_discovered,
            drift_checks=DRIFT_CHECKS_PER_PASS,
        )

    async def _node_states(self) -> dict[str, NodeState]:
        """The lifecycle state of each served node that has a journal row."""
        states: dict[str, NodeState] = {}
        for node in self.served:
            record = await self.journal.get_node(node)
            if record is not None:
                states[node] = record.state
        return states

    async def pass_once(self, *, dry_run: bool = False) -> ReconcileReport:
        """One pass; ``dry_run`` reads Proxmox and the journal and changes nothing."""
        if dry_run:
            return await self._pass(dry_run=True)
        return await aio.time(self.metrics.reconcile_duration, self._pass(dry_run=False))

    async def _pass(self, *, dry_run: bool) -> ReconcileReport:
        started = self.clock.now()
        try:
            inp = await self.gather(sync=not dry_run)
            the_plan = plan(inp)
            report = report_of(the_plan, started, dry_run=dry_run)
            if not dry_run:
                report = await self._apply(inp, the_plan, report)
        except (PveError, LifecycledError) as err:
            log.warning("reconcile.failed", extra={"node": self.node, "error": str(err)})
            report = ReconcileReport(
                outcome="error", started_at=started, finished_at=self.clock.now(), error=str(err)
            )
        except Exception as exc:  # a bug on one guest's data must not stop the daemon
            text = internal_text(exc)
            log.exception("reconcile.internal_error", extra={"node": self.node, "error": text})
            report = ReconcileReport(
                outcome="error",
                started_at=started,
                finished_at=self.clock.now(),
                error=f"internal error: {text}",
            )
        report = attrs.evolve(report, finished_at=self.clock.now())
        if not dry_run:
            self.metrics.reconcile_run(report.outcome)
            self.last_report = report
            await self.refresh_gauges()
            log.info(
                "reconcile.pass",
                extra={
                    "node": self.node,
                    "outcome": report.outcome,
                    "enqueued": len(report.enqueued),
                    "cancelled": len(report.cancelled),
                    "lost": len(report.lost),
                    "drifted": len(report.drifted),
                },
            )
        return report

    async def node_lifecycle(self, online: dict[str, bool]) -> NodeRecord | None:
        """SPEC §7 "node lifecycle is cluster-wide", for every served node: its
        drain/decommission is published in its Proxmox description for every daemon to
        respect; a node ``GET /nodes`` lists offline is marked ``unhealthy`` (reason
        ``auto: …``), and cleared back (to draining when its description says so, else
        active) once it is online again. Returns the primary node's record."""
        primary: NodeRecord | None = None
        for node in self.served:
            record = await self._node_lifecycle(node, online)
            if node == self.node:
                primary = record
        return primary

    async def _node_lifecycle(self, node: str, online: dict[str, bool]) -> NodeRecord | None:
        assert self.cluster is not None
        record = await self.journal.get_node(node)
        if record is None:
            return None
        now = self.clock.now()
        up = online.get(node)
        if up is False and record.state not in (NodeState.UNHEALTHY, NodeState.DECOMMISSIONED):
            change = await self.journal.transition_node(
                node,
                NodeState.UNHEALTHY,
                now=now,
                actor="reconcile",
                action="health",
                reason=f"{AUTO_UNHEALTHY} Proxmox lists node {node} offline",
            )
            log.warning("node.unhealthy", extra={"node": node})
            return change.record
        if up and record.state is NodeState.UNHEALTHY and record.reason.startswith(AUTO_UNHEALTHY):
            back = await self.cluster.node_state(node)
            target = NodeState.DRAINING if back is NodeState.DRAINING else NodeState.ACTIVE
            change = await self.journal.transition_node(
                node,
                target,
                now=now,
                actor="reconcile",
                action="health",
                reason=f"Proxmox lists node {node} online again",
            )
            log.warning("node.healthy", extra={"node": node, "state": str(target)})
            return change.record
        if up is not False and record.state is not NodeState.UNHEALTHY:
            try:
                await self.cluster.publish_node_state(node, record.state)
            except PveError as err:
                log.warning("node.publish_failed", extra={"node": node, "error": err.text})
        return record

    async def sync_records(self, resources: list[ClusterResource]) -> list[int]:
        """The journal's cache of every guest on a served node brought up to the record in
        its tags: a guest that arrived (a migration, ours or out of band) is taken over with
        its desired state — after its identity check — so this pass enforces it; a managed
        guest without tags gets them (backfill). Returns the vmids whose cache changed."""
        if self.cluster is None:
            return []
        cached = {g.vmid: g for g in await self.journal.all_guests()}
        changed: list[int] = []
        for res in resources:
            if not self.cluster.serves(res.node):
                continue
            record = decode(res.tags)
            guest = cached.get(res.vmid)
            try:
                if ahead_of(guest, record):  # backfill, or an op accepted without the tags
                    assert guest is not None
                    if guest.node == res.node:
                        try:
                            await self.guests.push(guest)
                        except IdentityMismatch as err:  # a reused VMID: not our guest
                            log.critical(
                                "guest.identity_mismatch",
                                extra={"vmid": res.vmid, "error": str(err)},
                            )
                            self.suspect.add(res.vmid)
                            continue
                        changed.append(res.vmid)
                    continue
                if record is None:
                    continue
                if needs_sync(guest, record, res.node) or res.vmid in self.suspect:
                    if await self.guests.follow(
                        res.vmid,
                        res.node,
                        res.kind,
                        record,
                        name=res.name,
                        verify=res.vmid in self.suspect,
                    ):
                        changed.append(res.vmid)
                        self.suspect.discard(res.vmid)
                    else:
                        self.suspect.add(res.vmid)
            except (PveError, LifecycledError) as err:
                log.warning(
                    "guest.sync_failed",
                    extra={"vmid": res.vmid, "node": res.node, "error": str(err)},
                )
        return changed

    async def refresh_gauges(self) -> None:
        self.metrics.set_guests(await self.journal.guest_counts(nodes=self.served))
        drifted = await self.journal.list_guests(drifted=True, limit=1000)
        self.metrics.config_drift.set(len(drifted.items))

    async def run(
        self, stopping: asyncio.Event, *, interval: float, first_delay: float | None
    ) -> None:
        """Passes every ``interval`` until ``stopping``; the first after ``first_delay``
        (``None``: no pass at start)."""
        delay = first_delay if first_delay is not None else interval
        while not await self.clock.wait_or_stop(stopping, delay):
            await self.pass_once()
            delay = interval

    # --- applying a plan ---------------------------------------------------------------

    async def _apply(
        self, inp: ReconcileInput, p: Plan, report: ReconcileReport
    ) -> ReconcileReport:
        now = self.clock.now()
        found, still_lost = await self._recheck_lost(inp, p.recheck_lost)
        lost = [self._audit(inp.guests[o.vmid], Decision.LOST, o.reason) for o in p.lost]
        await self.journal.apply_observations(
            now=now,
            seen=p.seen,
            discovered=p.discovered,
            missing=p.missing,
            lost=lost,
            found=found,
        )
        for orphan in p.orphans:
            if orphan.kind is OrphanKind.ANOMALOUS:
                self.metrics.orphan("anomalous")
                log.critical(
                    "guest.lost",
                    extra={"vmid": orphan.vmid, "node": self.node, "reason": orphan.reason},
                )
            else:
                self.metrics.orphan("expected")
                log.info(
                    "guest.orphan_expected", extra={"vmid": orphan.vmid, "reason": orphan.reason}
                )
        for _vmid, action in p.held:  # refused by the node's state (draining, …)
            self.metrics.reconcile_command(str(action), "skipped")
        managed = await self._manage_new(p)
        cancelled = await self._cancel(p.cancels)
        enqueued = await self._enqueue(inp, p)
        drifted = await self._drift(inp, p)
        return attrs.evolve(
            report,
            found=[obs.vmid for obs, _ in found],
            lost=[o.vmid for o in p.lost] + still_lost,
            managed=managed,
            cancelled=cancelled,
            enqueued=enqueued,
            drifted=drifted,
        )

    def _audit(self, guest: GuestRecord, decision: Decision, reason: str) -> AuditRecord:
        return AuditRecord(
            at=self.clock.now(),
            actor="reconcile",
            action="reconcile",
            decision=decision,
            reason=reason,
            vmid=guest.vmid,
            node=guest.node,
            snapshot={
                "origin": str(guest.origin),
                "observed_state": guest.observed_state,
                "desired_state": guest.desired_state,
                "lock": guest.lock,
                "fingerprint": guest.fingerprint,
                "observed_at": guest.observed_at,
            },
        )

    async def _recheck_lost(
        self, inp: ReconcileInput, back: list[Observation]
    ) -> tuple[list[tuple[Observation, AuditRecord]], list[int]]:
        """LOST guests seen again leave LOST only with the same fingerprint."""
        found: list[tuple[Observation, AuditRecord]] = []
        still: list[int] = []
        for obs in back:
            guest = inp.guests[obs.vmid]
            try:
                config = await self.pve.guest_config(obs.node, obs.kind, obs.vmid)
            except PveError as err:
                log.warning(
                    "guest.lost_recheck_failed", extra={"vmid": obs.vmid, "error": err.text}
                )
                still.append(obs.vmid)
                continue
            current = fingerprint_of(obs.kind, config.values)
            if guest.fingerprint and fingerprint_matches(guest.fingerprint, current):
                reason = f"LOST guest {obs.vmid} reappeared on {obs.node} with its fingerprint"
                found.append((obs, self._audit(guest, Decision.FOUND, reason)))
                log.warning("guest.found", extra={"vmid": obs.vmid, "node": obs.node})
            else:
                still.append(obs.vmid)
                log.critical(
                    "guest.vmid_reused",
                    extra={
                        "vmid": obs.vmid,
                        "node": obs.node,
                        "recorded": guest.fingerprint,
                        "found": current,
                    },
                )
        return found, still

    async def _manage_new(self, p: Plan) -> list[int]:
        done = []
        for obs, origin in p.to_manage:
            try:
                await self.guests.take(
                    obs.vmid,
                    origin,
                    actor="reconcile",
                    reason=f"--manage-discovered {origin}: first seen on {obs.node}",
                )
            except (PveError, LifecycledError) as err:
                log.warning("guest.manage_failed", extra={"vmid": obs.vmid, "error": str(err)})
                continue
            done.append(obs.vmid)
        return done

    async def _cancel(self, cancels: list[tuple[int, str]]) -> list[int]:
        done = []
        for op_id, reason in cancels:
            try:
                op = await self.journal.cancel(op_id, now=self.clock.now(), reason=reason)
            except InvalidTransition:
                continue  # claimed meanwhile: the dispatcher's policy sees the new desired state
            self.metrics.reconcile_command(op.action, "cancelled")
            self.metrics.command(op.action, "cancelled")
            log.info(
                "reconcile.superseded",
                extra={"op_id": op_id, "vmid": op.guest.vmid, "action": op.action},
            )
            done.append(op_id)
        return done

    async def _enqueue(self, inp: ReconcileInput, p: Plan) -> list[dict[str, Any]]:
        done = []
        # The plan already left out what the node states refused; a drain that landed since
        # the plan was made is honoured too (the same rule on the fresh state).
        states = await self._node_states() if p.commands else {}
        for cmd in p.commands:
            node = cmd.guest.node
            if states.get(node) != inp.node_states.get(node):
                refusal = node_refusal(
                    states.get(node), node=node, action=cmd.action, params=cmd.params
                )
                if refusal is not None:
                    self.metrics.reconcile_command(str(cmd.action), "skipped")
                    log.info(
                        "reconcile.skipped",
                        extra={
                            "vmid": cmd.guest.vmid,
                            "action": str(cmd.action),
                            "reason": refusal.reason,
                        },
                    )
                    continue
            req = SubmitRequest(
                idempotency_key=cmd.key,
                action=str(cmd.action),
                guest=cmd.guest,
                params=dict(cmd.params),
                origin=Origin.RECONCILE,
                actor="reconcile",
            )
            op = await self.journal.enqueue_reconcile(
                req, now=self.clock.now(), generation=cmd.generation, after=cmd.after
            )
            if op is None:
                self.metrics.reconcile_command(str(cmd.action), "skipped")
                continue
            self.metrics.reconcile_command(str(cmd.action), "enqueued")
            log.info(
                "reconcile.enqueued",
                extra={
                    "op_id": op.id,
                    "vmid": cmd.guest.vmid,
                    "node": cmd.guest.node,
                    "action": str(cmd.action),
                    "reason": cmd.reason,
                },
            )
            done.append({"op_id": op.id, **command_dict(cmd)})
        if done:
            self.notify()
        return done

    async def _drift(self, inp: ReconcileInput, p: Plan) -> list[int]:
        """Re-baseline after lifecycled's own config changes; read a few configs for drift."""
        now = self.clock.now()
        for vmid in p.rebaseline:
            guest = inp.guests[vmid]
            try:
                config = await self.pve.guest_config(guest.node, guest.kind, vmid)
            except (PveError, RequestNotSent):  # unreadable now, or a row no request can name
                continue
            current = fingerprint_of(guest.kind, config.values)
            if guest.fingerprint and not fingerprint_matches(guest.fingerprint, current):
                continue  # not the guest we know: never take its config as ours
            await self.journal.rebaseline(
                vmid, config.values, config.digest, now=now, fingerprint=current
            )
        reads: dict[int, tuple[str, dict[str, Any]]] = {}
        for vmid in p.digest_checks:
            guest = inp.guests[vmid]
            try:
                config = await self.pve.guest_config(guest.node, guest.kind, vmid)
            except (PveError, RequestNotSent):  # unreadable now, or a row no request can name
                continue
            reads[vmid] = (config.digest, dict(config.values))
        # Taken against each row as it is now: an own tag write since the plan was made
        # leaves a baseline awaiting its digest, which this read may be (domain/ownership).
        now_drifted = await self.journal.record_digests(reads, now=now) if reads else []
        for vmid in now_drifted:
            guest = inp.guests[vmid]
            if not guest.drifted:
                log.warning(
                    "guest.config_drift",
                    extra={
                        "vmid": vmid,
                        "node": guest.node,
                        "snapshot_digest": guest.config_digest,
                        "digest": reads[vmid][0],
                    },
                )
        drifted = await self.journal.list_guests(drifted=True, limit=1000)
        return [g.vmid for g in drifted.items]


def first_delay(jitter: float, rand: Callable[[], float] = random.random) -> float:
    """The random start-up delay before the first pass (``0 ≤ delay ≤ jitter``)."""
    return rand() * max(jitter, 0.0)
