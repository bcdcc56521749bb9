"""The reconcile plan (SPEC §3) — pure: one cluster read, the journal's view, ``now`` in;
what to write, what to enqueue, what to cancel and what to look at more closely out.

The shell (:mod:`lifecycled.engine.reconcile`) carries the plan out; ``lifecycled reconcile
--dry-run`` prints it. Rules:

* only guests on the served nodes are acted on, by their live power state (each node's own
  guest list, never ``/cluster/resources``' lagging one); known guests seen anywhere are
  observed;
* a managed guest whose observed power state differs from its desired state, with no op
  open, no lock, not HA-managed and not a template, gets one convergent op (``start``,
  ``resume`` or ``shutdown`` — never a destructive one), at most ``max_commands`` per pass,
  keyed ``reconcile:{vmid}:{generation}:{action}:{n}``;
* a pending reconcile op whose target is no longer desired is cancelled (superseded,
  :func:`lifecycled.domain.guests.superseded`);
* a guest on a node whose lifecycle state refuses the op (draining, decommissioned: the
  submission's admission rule) gets none: it is listed as skipped, so the dry run and the
  real pass come from the same plan;
* a managed guest gone from the cluster is an *expected* orphan (desired absent, a
  terminate/migrate/create/clone open, a transient lock) or *anomalous*: LOST — reported by
  exactly one daemon of the cluster (:func:`lifecycled.domain.cluster.lost_reporter`); the
  others only mark it ``missing``;
* an unknown guest on the node becomes ``discovered`` (or managed, with
  ``--manage-discovered``); a LOST guest that reappears is re-checked by its fingerprint;
* config drift is looked for by reading a few managed guests' configs per pass.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from lifecycled.domain.actions import Action
from lifecycled.domain.cluster import lost_reporter
from lifecycled.domain.guests import (
    MANAGED_ORIGINS,
    TRANSIENT_LOCKS,
    DesiredState,
    GuestOrigin,
    GuestRecord,
    Observation,
    ObservedState,
    superseded,
)
from lifecycled.domain.node import NodeState, Refusal, admission_refusal
from lifecycled.domain.op import GuestKind, GuestRef, Op
from lifecycled.domain.states import OpState

#: Failed reconcile ops block the same desired generation until an operator acts.
_BLOCKING = frozenset({OpState.FAILED, OpState.DEAD_LETTERED, OpState.CANCELLED})
#: Open ops under which a guest may vanish without alarm.
_VANISHING = frozenset({Action.TERMINATE, Action.MIGRATE, Action.CREATE, Action.CLONE})
#: Reconcile never sends anything but these.
RECONCILE_ACTIONS = frozenset({Action.START, Action.RESUME, Action.SHUTDOWN})


class OrphanKind(enum.StrEnum):
    EXPECTED = "expected"
    ANOMALOUS = "anomalous"


@attrs.frozen(kw_only=True)
class ReconcileInput:
    """Everything one pass decides from."""

    node: str
    now: float
    observations: Sequence[Observation]
    #: Every node this daemon serves (``node`` alone when empty).
    served: frozenset[str] = frozenset()
    #: Every cluster node and whether it is online (``GET /nodes``); empty: unknown.
    online: Mapping[str, bool] = attrs.field(factory=dict)
    #: Guests whose identity did not match their record after a move (SPEC §7): never acted on.
    suspect: frozenset[int] = frozenset()
    #: Guests whose tags hold an ownership record: a request decided their ownership, so
    #: ``--manage-discovered`` never takes them (SPEC §1, §7) — a managed one is followed
    #: (unless its identity does not match), a released one stays released.
    recorded: frozenset[int] = frozenset()
    guests: Mapping[int, GuestRecord]
    open_ops: Mapping[int, Sequence[Op]] = attrs.field(factory=dict)
    latest_reconcile: Mapping[int, Op] = attrs.field(factory=dict)
    config_changes: Mapping[int, float] = attrs.field(factory=dict)
    #: The lifecycle state of each served node (the journal's rows; a node without one is
    #: not refused): a draining node takes no new guests from reconcile either (SPEC §4).
    node_states: Mapping[str, NodeState] = attrs.field(factory=dict)
    max_commands: int = 20
    manage_discovered: str = "off"
    drift_checks: int = 10

    @property
    def nodes(self) -> frozenset[str]:
        return self.served or frozenset({self.node})


@attrs.frozen(kw_only=True)
class Command:
    """One convergent op to enqueue."""

    guest: GuestRef
    action: Action
    key: str
    generation: int
    #: The guest's latest reconcile op when planned (the enqueue re-checks it).
    after: int | None
    params: dict[str, object] = attrs.field(factory=dict)
    reason: str = ""


@attrs.frozen(kw_only=True)
class Orphan:
    vmid: int
    kind: OrphanKind
    reason: str


@attrs.frozen(kw_only=True)
class Plan:
    """What one pass does (empty lists: nothing to do)."""

    seen: list[Observation] = attrs.field(factory=list)
    discovered: list[Observation] = attrs.field(factory=list)
    to_manage: list[tuple[Observation, GuestOrigin]] = attrs.field(factory=list)
    orphans: list[Orphan] = attrs.field(factory=list)
    recheck_lost: list[Observation] = attrs.field(factory=list)
    commands: list[Command] = attrs.field(factory=list)
    cancels: list[tuple[int, str]] = attrs.field(factory=list)
    skipped: list[tuple[int, str]] = attrs.field(factory=list)
    #: Convergent ops the node's lifecycle state refuses (also in ``skipped``, with why).
    held: list[tuple[int, Action]] = attrs.field(factory=list)
    digest_checks: list[int] = attrs.field(factory=list)
    rebaseline: list[int] = attrs.field(factory=list)
    drifted: list[int] = attrs.field(factory=list)
    #: Unmanaged (or never observed) rows gone from the cluster: simply ``missing``.
    vanished: list[int] = attrs.field(factory=list)

    @property
    def missing(self) -> list[int]:
        """Rows to mark ``missing``: expected orphans and vanished unmanaged guests."""
        return [o.vmid for o in self.orphans if o.kind is OrphanKind.EXPECTED] + self.vanished

    @property
    def lost(self) -> list[Orphan]:
        return [o for o in self.orphans if o.kind is OrphanKind.ANOMALOUS]


def reconcile_key(vmid: int, generation: int, action: Action, seq: int) -> str:
    return f"reconcile:{vmid}:{generation}:{action}:{seq}"


def parse_key(key: str) -> tuple[int, int] | None:
    """``(generation, seq)`` of a reconcile key, or ``None`` for any other key."""
    parts = key.split(":")
    if len(parts) != 5 or parts[0] != "reconcile":
        return None
    try:
        return int(parts[2]), int(parts[4])
    except ValueError:
        return None


def convergence(guest: GuestRecord, observed: ObservedState) -> tuple[Action | None, str]:
    """The op that takes ``guest`` from ``observed`` to its desired state (or why none)."""
    desired = guest.desired_state
    if desired is None:
        return None, "no desired state"
    if desired is DesiredState.ABSENT:
        return None, "desired absent: reconcile never destroys; the terminate op decides"
    if observed is ObservedState.UNKNOWN:
        return None, "observed state unknown (node unreadable?)"
    if desired is DesiredState.RUNNING:
        if observed is ObservedState.RUNNING:
            return None, "converged"
        if observed is ObservedState.PAUSED:
            return Action.RESUME, "paused, desired running"
        return Action.START, f"{observed}, desired running"
    if observed is ObservedState.STOPPED:
        return None, "converged"
    if observed in (ObservedState.PAUSED, ObservedState.SUSPENDED):
        return None, f"{observed}: not shut down by reconcile (stop it explicitly)"
    return Action.SHUTDOWN, f"{observed}, desired stopped"


def with_live_status(
    observations: Sequence[Observation],
    *,
    node: str,
    live: Mapping[tuple[GuestKind, int], tuple[str, str | None]],
) -> list[Observation]:
    """The served node's guests with the power state and lock of the node's live guest list
    (``live``: (kind, vmid) → (status, lock)) instead of ``/cluster/resources``', whose
    status lags by up to ~10 s (reference §13.10): acted on, it would re-start a guest a
    just-finished op stopped, or shut down one it started. Guests of other nodes keep the
    cluster's view (they are observed, never acted on). A guest the live list lacks reads
    ``unknown``, so nothing is done to it this pass.

    The list shows a paused VM as ``running`` (its run state needs ``full=1``): a
    ``paused`` from the cluster's view is kept then — the worst it can cause is a
    ``resume`` that the dispatcher's live Check finds already held, so nothing is sent.
    """
    out: list[Observation] = []
    for obs in observations:
        if obs.node != node:
            out.append(obs)
            continue
        found = live.get((obs.kind, obs.vmid))
        if found is None:
            out.append(attrs.evolve(obs, status="unknown"))
            continue
        status, lock = found
        if status == "running" and obs.status == "paused":
            status = obs.status
        out.append(attrs.evolve(obs, status=status, lock=lock))
    return out


def node_refusal(
    state: NodeState | None, *, node: str, action: Action, params: Mapping[str, object]
) -> Refusal | None:
    """Why the state of ``node`` refuses a reconcile op for a guest on it (the submission's
    admission rule, :func:`lifecycled.domain.node.admission_refusal`), or ``None``."""
    if state is None:
        return None
    return admission_refusal(state, served=node, action=str(action), guest_node=node, params=params)


def plan(inp: ReconcileInput) -> Plan:
    """The pass's decisions."""
    out = Plan()
    by_vmid = {o.vmid: o for o in inp.observations}
    budget = inp.max_commands
    for obs in sorted(inp.observations, key=lambda o: o.vmid):
        guest = inp.guests.get(obs.vmid)
        if guest is None:
            if obs.node in inp.nodes:
                take_as = next((o for o in MANAGED_ORIGINS if o == inp.manage_discovered), None)
                if take_as is not None and obs.vmid not in inp.recorded:
                    out.to_manage.append((obs, take_as))
                else:
                    out.discovered.append(obs)
            continue
        if guest.observed_state is ObservedState.LOST:
            out.recheck_lost.append(obs)
            continue
        out.seen.append(obs)
        if obs.node not in inp.nodes or not guest.managed:
            continue
        if obs.vmid in inp.suspect:
            out.skipped.append((obs.vmid, "identity does not match its record: not acted on"))
            continue
        budget = _converge(inp, guest, obs, out, budget)
        _drift(inp, guest, obs, out)
    for guest in sorted(inp.guests.values(), key=lambda g: g.vmid):
        if guest.vmid not in by_vmid:
            _gone(inp, guest, out)
    out.digest_checks.sort(key=lambda v: (inp.guests[v].digest_checked_at or 0.0, v))
    del out.digest_checks[max(inp.drift_checks, 0) :]
    return out


def _converge(
    inp: ReconcileInput, guest: GuestRecord, obs: Observation, out: Plan, budget: int
) -> int:
    vmid = guest.vmid
    if obs.template:
        out.skipped.append((vmid, "template"))
        return budget
    if obs.ha_managed:
        out.skipped.append((vmid, f"HA-managed ({obs.hastate}): left to the HA manager"))
        return budget
    open_ops = inp.open_ops.get(vmid, ())
    if open_ops:
        out.cancels.extend((op.id, why) for op, why in superseded(open_ops, guest.desired_state))
        out.skipped.append((vmid, f"op {open_ops[0].id} ({open_ops[0].action}) is open"))
        return budget
    if obs.lock:
        out.skipped.append((vmid, f"locked ({obs.lock})"))
        return budget
    action, why = convergence(guest, obs.observed)
    if action is None:
        if why != "converged" and guest.desired_state is not None:
            out.skipped.append((vmid, why))
        return budget
    latest = inp.latest_reconcile.get(vmid)
    seq = 1
    if latest is not None:
        parsed = parse_key(latest.idempotency_key)
        if parsed is not None and parsed[0] == guest.desired_generation:
            if latest.state in _BLOCKING:
                out.skipped.append(
                    (
                        vmid,
                        f"reconcile op {latest.id} ended {latest.state}; waiting for an operator",
                    )
                )
                return budget
            seq = parsed[1] + 1
    params: dict[str, object] = {}
    if action is Action.SHUTDOWN and guest.origin is GuestOrigin.NATIVE:
        params["force_stop"] = True
    refusal = node_refusal(
        inp.node_states.get(obs.node), node=obs.node, action=action, params=params
    )
    if refusal is not None:
        # The same admission rule as a submission: the dry run shows what the pass skips.
        out.skipped.append((vmid, f"{refusal.code}: {refusal.reason}"))
        out.held.append((vmid, action))
        return budget
    if budget <= 0:
        out.skipped.append((vmid, "reconcile_max_commands reached for this pass"))
        return budget
    out.commands.append(
        Command(
            guest=GuestRef(node=obs.node, kind=obs.kind, vmid=vmid),
            action=action,
            key=reconcile_key(vmid, guest.desired_generation, action, seq),
            generation=guest.desired_generation,
            after=latest.id if latest is not None else None,
            params=params,
            reason=why,
        )
    )
    return budget - 1


def _drift(inp: ReconcileInput, guest: GuestRecord, obs: Observation, out: Plan) -> None:
    if obs.lock or inp.open_ops.get(guest.vmid):
        return  # a task holds the config: its digest is in flux
    changed = inp.config_changes.get(guest.vmid)
    if guest.config_digest is None or (
        changed is not None and changed > (guest.snapshot_at or 0.0)
    ):
        out.rebaseline.append(guest.vmid)  # first snapshot, or after lifecycled's own change
        return
    if guest.drifted:
        out.drifted.append(guest.vmid)
    out.digest_checks.append(guest.vmid)


def _gone(inp: ReconcileInput, guest: GuestRecord, out: Plan) -> None:
    if guest.observed_state in (ObservedState.LOST, ObservedState.MISSING):
        return
    vmid = guest.vmid
    reporter = (
        lost_reporter(guest.node, inp.online, inp.nodes) if inp.online else guest.node in inp.nodes
    )
    if not guest.managed or guest.observed_state is None or not reporter:
        # Not ours to report (SPEC §7 "one reporter"), or never ours: simply missing here.
        if guest.managed or guest.node in inp.nodes:
            out.vanished.append(vmid)
        return
    why = _expected_absence(inp, guest)
    if why is not None:
        out.orphans.append(Orphan(vmid=vmid, kind=OrphanKind.EXPECTED, reason=why))
        return
    out.orphans.append(
        Orphan(
            vmid=vmid,
            kind=OrphanKind.ANOMALOUS,
            reason=(
                f"managed guest {vmid} ({guest.origin}, last seen {guest.observed_state}) is "
                "missing from the cluster with no terminate in flight"
            ),
        )
    )


def _expected_absence(inp: ReconcileInput, guest: GuestRecord) -> str | None:
    if guest.desired_state is DesiredState.ABSENT:
        return "desired absent"
    for op in inp.open_ops.get(guest.vmid, ()):
        try:
            action = Action(op.action)
        except ValueError:
            continue
        if action in _VANISHING:
            return f"{action} op {op.id} is open"
    if guest.lock in TRANSIENT_LOCKS:
        return f"was in a transient state (lock {guest.lock})"
    return None


@attrs.frozen(kw_only=True)
class ReconcileReport:
    """What one pass did (also the body of ``reconcile --dry-run``)."""

    outcome: str  # ok | error
    started_at: float
    finished_at: float
    dry_run: bool = False
    enqueued: list[dict[str, Any]] = attrs.field(factory=list)
    cancelled: list[int] = attrs.field(factory=list)
    lost: list[int] = attrs.field(factory=list)
    found: list[int] = attrs.field(factory=list)
    missing: list[int] = attrs.field(factory=list)
    discovered: list[int] = attrs.field(factory=list)
    managed: list[int] = attrs.field(factory=list)
    drifted: list[int] = attrs.field(factory=list)
    skipped: list[dict[str, Any]] = attrs.field(factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        from lifecycled.domain.serialize import rfc3339

        out = attrs.asdict(self)
        out["started_at"] = rfc3339(self.started_at)
        out["finished_at"] = rfc3339(self.finished_at)
        return out


def command_dict(cmd: Command) -> dict[str, Any]:
    return {
        "vmid": cmd.guest.vmid,
        "node": cmd.guest.node,
        "action": str(cmd.action),
        "idempotency_key": cmd.key,
        "params": dict(cmd.params),
        "reason": cmd.reason,
    }


def report_of(p: Plan, started: float, *, dry_run: bool) -> ReconcileReport:
    """The plan as a report (what a dry run prints; a real pass fills in what happened)."""
    return ReconcileReport(
        outcome="ok",
        started_at=started,
        finished_at=started,
        dry_run=dry_run,
        enqueued=[command_dict(c) for c in p.commands],
        cancelled=[op_id for op_id, _ in p.cancels],
        lost=[o.vmid for o in p.lost],
        found=[o.vmid for o in p.recheck_lost],
        missing=p.missing,
        discovered=[o.vmid for o in p.discovered],
        managed=[o.vmid for o, _ in p.to_manage],
        drifted=p.drifted,
        skipped=[{"vmid": vmid, "reason": why} for vmid, why in p.skipped],
    )
