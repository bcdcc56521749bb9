"""Attacks on the submission unit's one read: whether the guest has a pending
reconcile op a new desired state supersedes is read once, at the start of the unit. An op
journaled just before — by an earlier unit of the same group commit, or by another
journal on the file — must still be cancelled."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest_journal import T0, manage_audit, managed_guest

from lifecycled.domain.guests import DesiredState
from lifecycled.domain.op import GuestKind, GuestRef, Origin
from lifecycled.domain.states import OpState
from lifecycled.journal import Journal, SubmitRequest

pytestmark = pytest.mark.timeout(60)


def _op(key: str, action: str, origin: Origin) -> SubmitRequest:
    return SubmitRequest(
        idempotency_key=key,
        action=action,
        guest=GuestRef(node="pve1", kind=GuestKind.QEMU, vmid=101),
        params={},
        origin=origin,
        actor=str(origin),
    )


async def test_a_reconcile_op_journaled_earlier_in_the_same_batch_is_superseded(
    tmp_path: Path,
) -> None:
    """A reconcile `start` and an operator's `stop` (desired: stopped) in one group commit:
    the stop's unit sees the start its batch journaled first and cancels it."""
    async with await Journal.open(tmp_path / "j.sqlite3") as j:
        await j.take_guest(
            managed_guest(101, desired=DesiredState.RUNNING), audit=manage_audit(101), now=T0
        )
        await j.set_desired(101, DesiredState.STOPPED, now=T0)
        start, stop = await asyncio.gather(
            j.submit_guest_op(
                _op("reconcile:101:0:start:1", "start", Origin.RECONCILE),
                now=T0 + 1,
                desired=DesiredState.RUNNING,
            ),
            j.submit_guest_op(
                _op("op-stop", "stop", Origin.API), now=T0 + 1, desired=DesiredState.STOPPED
            ),
        )
        assert (await j.get(start.op.id)).state is OpState.CANCELLED
        assert (await j.get(stop.op.id)).state is OpState.PENDING
        claimed = await j.claim_next(now=T0 + 2)
        assert claimed is not None and claimed.id == stop.op.id


async def test_a_reconcile_op_another_journal_wrote_is_superseded(tmp_path: Path) -> None:
    """Another journal (another process) journals a pending reconcile `start`; this
    writer's operator `stop` (desired: stopped) cancels it, and claims only the stop."""
    db = tmp_path / "j.sqlite3"
    async with await Journal.open(db) as mine:
        await mine.take_guest(
            managed_guest(101, desired=DesiredState.RUNNING), audit=manage_audit(101), now=T0
        )
        warm = await mine.submit_guest_op(
            _op("op-warm", "start", Origin.API), now=T0, desired=DesiredState.RUNNING
        )
        await mine.cancel(warm.op.id, now=T0, reason="warm")
        async with await Journal.open(db) as other:
            start = await other.submit_guest_op(
                _op("reconcile:101:0:start:1", "start", Origin.RECONCILE),
                now=T0 + 1,
                desired=DesiredState.RUNNING,
            )
        stop = await mine.submit_guest_op(
            _op("op-stop", "stop", Origin.API), now=T0 + 2, desired=DesiredState.STOPPED
        )
        assert (await mine.get(start.op.id)).state is OpState.CANCELLED
        claimed = await mine.claim_next(now=T0 + 3)
        assert claimed is not None and claimed.id == stop.op.id
        assert await mine.claim_next(now=T0 + 3) is None
