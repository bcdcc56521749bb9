"""The journal's guest verbs and guarded op verbs on a real SQLite file."""

from __future__ import annotations

from typing import Any

import pytest

from lifecycled.audit import AuditRecord, Decision
from lifecycled.domain.guests import (
    DesiredState,
    GuestOrigin,
    GuestRecord,
    Observation,
    ObservedState,
)
from lifecycled.domain.op import GuestKind, GuestRef, Origin
from lifecycled.domain.states import OpState
from lifecycled.errors import InvalidTransition, PolicyRefused
from lifecycled.journal import Journal, SubmitRequest

T0 = 1_000_000.0


def rec(vmid: int, origin: GuestOrigin = GuestOrigin.NATIVE, **kw: Any) -> GuestRecord:
    values: dict[str, Any] = {
        "vmid": vmid,
        "node": "pve1",
        "kind": GuestKind.QEMU,
        "origin": origin,
        "desired_state": DesiredState.RUNNING,
        "observed_state": ObservedState.RUNNING,
        "fingerprint": {"name": f"g{vmid}"},
        "created_at": T0,
        "updated_at": T0,
    }
    values.update(kw)
    return GuestRecord(**values)


def audit(vmid: int, decision: Decision = Decision.MANAGED) -> AuditRecord:
    return AuditRecord(
        at=T0, actor="test", action="manage", decision=decision, reason="t", vmid=vmid
    )


def req(vmid: int, action: str = "start", key: str | None = "k", **params: Any) -> SubmitRequest:
    return SubmitRequest(
        idempotency_key=key,
        action=action,
        guest=GuestRef(node="pve1", kind=GuestKind.QEMU, vmid=vmid),
        params=params,
        origin=Origin.API,
    )


async def counts(journal: Journal) -> tuple[int, int, int]:
    ops = sum((await journal.counts_by_state()).values())
    return ops, len(await journal.all_guests()), len((await journal.list_audit()).items)


async def test_ops_need_a_managed_guest_and_a_refusal_writes_nothing(journal: Journal) -> None:
    """Unknown, discovered, released → guest_not_managed; nothing is written."""
    await journal.apply_observations(
        now=T0,
        discovered=[Observation(vmid=102, node="pve1", kind=GuestKind.QEMU, status="running")],
    )
    before = await counts(journal)
    for vmid in (101, 102):
        with pytest.raises(PolicyRefused, match="manage or adopt it first"):
            await journal.submit_guest_op(req(vmid, key=f"k{vmid}"), now=T0)
    assert await counts(journal) == before


async def test_create_records_a_native_guest_and_refuses_a_vmid_in_use(journal: Journal) -> None:
    """create on a free vmid records it native with the expected fingerprint; on an adopted
    guest's vmid it is vmid_in_use."""
    await journal.submit_guest_op(
        req(150, "create", key="c"), now=T0, create_fingerprint={"uuid": "u-1"}
    )
    row = await journal.get_guest(150)
    assert row.origin is GuestOrigin.NATIVE and row.fingerprint == {"uuid": "u-1"}
    await journal.take_guest(rec(151, GuestOrigin.ADOPTED), audit=audit(151), now=T0)
    with pytest.raises(PolicyRefused) as refused:
        await journal.submit_guest_op(req(151, "create", key="c2"), now=T0)
    assert refused.value.code == "vmid_in_use"


async def test_every_guest_column_reads_back_as_written(journal: Journal) -> None:
    """A guest with every column set (none at its default) reads back field for field, from
    the writer's RETURNING and from the reader (the row is decoded by position)."""
    full = GuestRecord(
        vmid=170,
        node="pve2",
        kind=GuestKind.LXC,
        origin=GuestOrigin.ADOPTED,
        name="web-170",
        desired_state=DesiredState.STOPPED,
        desired_generation=7,
        observed_state=ObservedState.PAUSED,
        observed_at=T0 + 1,
        lock="backup",
        ha_managed=True,
        template=True,
        protected=True,
        fingerprint={"uuid": "u-170"},
        config_snapshot={"memory": "512"},
        config_digest="d-config",
        snapshot_at=T0 + 2,
        observed_digest="d-observed",
        digest_checked_at=T0 + 3,
        resources={"maxmem": 512},
        created_at=T0 + 4,
        updated_at=T0 + 5,
        adopted_at=T0 + 6,
        released_at=T0 + 7,
        lost_at=T0 + 8,
    )
    taken = await journal.take_guest(full, audit=audit(170, Decision.ADOPTED), now=T0)
    assert taken.guest == full
    assert await journal.get_guest(170) == full


def reconcile_start(vmid: int) -> SubmitRequest:
    """The start reconcile enqueues for a guest desired running (generation 0)."""
    return SubmitRequest(
        idempotency_key=f"reconcile:{vmid}:0:start:1",
        action="start",
        guest=GuestRef(node="pve1", kind=GuestKind.QEMU, vmid=vmid),
        params={},
        origin=Origin.RECONCILE,
        actor="reconcile",
    )


async def test_submission_sets_desired_state_and_supersedes_reconcile_ops(
    journal: Journal,
) -> None:
    """A stop sets desired stopped (generation + 1) and cancels a pending reconcile start."""
    await journal.take_guest(rec(101), audit=audit(101), now=T0)
    start = reconcile_start(101)
    queued = await journal.enqueue_reconcile(start, now=T0, generation=0, after=None)
    assert queued is not None
    await journal.submit_guest_op(
        req(101, "stop", key="s"), now=T0 + 1, desired=DesiredState.STOPPED
    )
    row = await journal.get_guest(101)
    assert row.desired_state is DesiredState.STOPPED and row.desired_generation == 1
    assert (await journal.get(queued.id)).state is OpState.CANCELLED


async def test_a_guest_op_is_returned_as_its_row_reads(journal: Journal) -> None:
    """submit_guest_op returns the op as a fresh read shows it, params included (their
    canonical JSON is made once and reused by the insert)."""
    await journal.take_guest(rec(101), audit=audit(101), now=T0)
    result = await journal.submit_guest_op(
        req(101, "stop", key="p", timeout=30, skiplock=0), now=T0, desired=DesiredState.STOPPED
    )
    assert result.op.params == {"skiplock": 0, "timeout": 30}
    assert result.op == await journal.get(result.op.id)


async def test_reconcile_enqueue_rechecks_what_the_plan_saw(journal: Journal) -> None:
    """A reconcile op is not journaled when an op is open, the generation moved on, or
    another reconcile op came in between."""
    await journal.take_guest(rec(101), audit=audit(101), now=T0)
    r = SubmitRequest(
        idempotency_key="reconcile:101:0:start:1",
        action="start",
        guest=GuestRef(node="pve1", kind=GuestKind.QEMU, vmid=101),
        params={},
        origin=Origin.RECONCILE,
    )
    assert await journal.enqueue_reconcile(r, now=T0, generation=5, after=None) is None
    assert await journal.enqueue_reconcile(r, now=T0, generation=0, after=77) is None
    first = await journal.enqueue_reconcile(r, now=T0, generation=0, after=None)
    assert first is not None
    again = SubmitRequest(
        idempotency_key="reconcile:101:0:start:2",
        action="start",
        guest=r.guest,
        params={},
        origin=Origin.RECONCILE,
    )
    assert await journal.enqueue_reconcile(again, now=T0, generation=0, after=first.id) is None


async def test_a_deduplicated_key_answers_even_after_release_but_a_rearm_is_refused(
    journal: Journal,
) -> None:
    """Dedup comes before the ownership check (the client's retry gets its op); re-arming a
    failed op of a released guest is refused."""
    await journal.take_guest(rec(101), audit=audit(101), now=T0)
    op = (await journal.submit_guest_op(req(101, key="a"), now=T0)).op
    claimed = await journal.claim_next(now=T0 + 1)
    assert claimed is not None
    await journal.finish(op.id, OpState.FAILED, now=T0 + 2, reason="x")
    op2 = (await journal.submit_guest_op(req(101, "stop", key="b"), now=T0 + 3)).op
    await journal.release_guest(101, audit=audit(101, Decision.RELEASED), now=T0 + 4)
    assert (await journal.get(op2.id)).state is OpState.PENDING  # not a reconcile op: kept
    again = await journal.submit_guest_op(req(101, "stop", key="b"), now=T0 + 5)
    assert again.deduplicated and again.op.id == op2.id
    with pytest.raises(PolicyRefused):
        await journal.submit_guest_op(req(101, key="a"), now=T0 + 6)
    assert (await journal.get(op.id)).state is OpState.FAILED


async def test_ownership_changes_are_idempotent_and_audited(journal: Journal) -> None:
    """Taking a guest twice with the same origin changes nothing; release of a discovered
    guest is refused; each change has exactly one audit record."""
    first = await journal.take_guest(rec(101), audit=audit(101), now=T0)
    second = await journal.take_guest(rec(101, name="new"), audit=audit(101), now=T0 + 1)
    assert first.changed and not second.changed and second.guest.name is None
    released = await journal.release_guest(101, audit=audit(101, Decision.RELEASED), now=T0 + 2)
    assert released.changed and released.guest.desired_state is None
    assert not (await journal.release_guest(101, audit=audit(101), now=T0 + 3)).changed
    await journal.apply_observations(
        now=T0,
        discovered=[Observation(vmid=102, node="pve1", kind=GuestKind.LXC, status="stopped")],
    )
    with pytest.raises(InvalidTransition):
        await journal.release_guest(102, audit=audit(102), now=T0)
    assert len((await journal.list_audit()).items) == 2
    with pytest.raises(PolicyRefused):
        await journal.set_desired(101, DesiredState.RUNNING, now=T0)


async def test_defer_does_not_count_the_attempt_and_journals_the_child(journal: Journal) -> None:
    """A deferred terminate goes back to pending with its attempt count unchanged, its stop
    op journaled in the same transaction."""
    await journal.take_guest(rec(101), audit=audit(101), now=T0)
    term = (await journal.submit_guest_op(req(101, "terminate", key="t"), now=T0)).op
    claimed = await journal.claim_next(now=T0 + 1)
    assert claimed is not None and claimed.attempts == 1
    op, child = await journal.defer(
        term.id,
        now=T0 + 2,
        next_attempt_at=T0 + 3,
        reason="wait",
        child=req(101, "stop", key="t:stop"),
    )
    assert op.state is OpState.PENDING and op.attempts == 0
    assert child is not None and child.action == "stop" and child.state is OpState.PENDING


async def test_soft_delete_and_lost_write_their_audit_in_the_same_transaction(
    journal: Journal,
) -> None:
    """soft_delete: op succeeded + guest released + audit; LOST: row kept + audit; each
    produces its push event (push on)."""
    await journal.set_push(enabled=True)
    await journal.take_guest(rec(101, GuestOrigin.ADOPTED), audit=audit(101), now=T0)
    await journal.take_guest(rec(102), audit=audit(102), now=T0)
    term = (await journal.submit_guest_op(req(101, "terminate", key="t"), now=T0)).op
    await journal.claim_next(now=T0 + 1)
    done = await journal.soft_delete(
        term.id, now=T0 + 2, reason="soft", audit=audit(101, Decision.SOFT_DELETED)
    )
    assert done.state is OpState.SUCCEEDED
    assert (await journal.get_guest(101)).origin is GuestOrigin.RELEASED
    await journal.apply_observations(now=T0 + 3, lost=[audit(102, Decision.LOST)])
    assert (await journal.get_guest(102)).observed_state is ObservedState.LOST
    decisions = [r.decision for r in (await journal.list_audit()).items]
    assert decisions[:2] == [Decision.LOST, Decision.SOFT_DELETED]
    kinds = [e.type for e in await journal.unsent_events(limit=100)]
    assert "guest.released" in kinds and "guest.lost" in kinds


async def test_janitor_note_keeps_the_state_and_moves_updated_at(journal: Journal) -> None:
    """note_stuck appends a same-state history row; nothing for an op no longer in flight."""
    await journal.take_guest(rec(101), audit=audit(101), now=T0)
    op = (await journal.submit_guest_op(req(101, key="n"), now=T0)).op
    assert not await journal.note_stuck(op.id, now=T0, reason="x")  # pending: not in flight
    await journal.claim_next(now=T0 + 1)
    assert await journal.note_stuck(op.id, now=T0 + 50, reason="janitor: stuck")
    after = await journal.get(op.id)
    history = await journal.history(op.id)
    assert after.state is OpState.DISPATCHING and after.updated_at == T0 + 50
    assert history[-1].from_state is history[-1].to_state is OpState.DISPATCHING
    assert history[-1].reason == "janitor: stuck"


async def test_the_supersede_rule_sees_the_op_the_submission_itself_journals(
    journal: Journal,
) -> None:
    """With no pending reconcile op before it, a submission's own reconcile op (new, or
    re-armed by its key) is still judged by the supersede rule in the same transaction."""
    await journal.take_guest(rec(101), audit=audit(101), now=T0)
    start = reconcile_start(101)
    new = await journal.submit_guest_op(start, now=T0, desired=DesiredState.STOPPED)
    assert (await journal.get(new.op.id)).state is OpState.CANCELLED
    await journal.set_desired(101, DesiredState.RUNNING, now=T0 + 1)
    rearmed = await journal.submit_guest_op(start, now=T0 + 2, desired=DesiredState.STOPPED)
    assert rearmed.rearmed and rearmed.op.id == new.op.id
    assert (await journal.get(new.op.id)).state is OpState.CANCELLED
    history = await journal.history(new.op.id)
    assert [h.to_state for h in history] == [
        OpState.PENDING,
        OpState.CANCELLED,
        OpState.PENDING,
        OpState.CANCELLED,
    ]


async def _succeed(journal: Journal, request: SubmitRequest, at: float) -> None:
    await journal.submit_guest_op(request, now=at)
    op = await journal.claim_next(now=at)
    assert op is not None
    await journal.record_upid(op.id, f"UPID:pve1:{op.id:08X}:t:", now=at)
    await journal.finish(op.id, OpState.SUCCEEDED, now=at, reason="OK", exitstatus="OK")


async def test_a_success_sets_on_the_guest_only_what_its_action_made_true(
    journal: Journal,
) -> None:
    """A start sets the observed state (and when it was seen), not the node; a migrate sets
    the node, not the observed state; a resize sets neither (the row is not written)."""
    await journal.take_guest(rec(101), audit=audit(101), now=T0)
    await _succeed(journal, req(101, "start", key="a"), T0 + 10)
    row = await journal.get_guest(101)
    assert row is not None
    assert (row.observed_state, row.observed_at, row.node) == ("running", T0 + 10, "pve1")
    await _succeed(journal, req(101, "migrate", key="b", target="pve2"), T0 + 20)
    row = await journal.get_guest(101)
    assert row is not None
    assert (row.observed_state, row.observed_at, row.node) == ("running", T0 + 10, "pve2")
    assert row.updated_at == T0 + 20
    await _succeed(
        journal,
        SubmitRequest(
            idempotency_key="c",
            action="resize",
            guest=GuestRef(node="pve2", kind=GuestKind.QEMU, vmid=101),
            params={"disk": "scsi0", "size": "+1G"},
            origin=Origin.API,
        ),
        T0 + 30,
    )
    after = await journal.get_guest(101)
    assert after is not None
    assert (after.observed_state, after.observed_at, after.node, after.updated_at) == (
        "running",
        T0 + 10,
        "pve2",
        T0 + 20,
    )
