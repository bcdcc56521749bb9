"""The pure outcome rules of SPEC §2, shared by dispatcher, tracker, Recover and janitor."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lifecycled.domain.actions import Action, ActionSpec, spec_for
from lifecycled.domain.classify import ErrorClass
from lifecycled.domain.op import GuestKind, GuestRef, Op
from lifecycled.domain.outcome import (
    RetryBudget,
    Verdict,
    after_call_error,
    after_exit,
    after_no_such_task,
    after_search,
    next_attempt,
    task_matches,
)
from lifecycled.domain.upid import Upid


def make_op(
    action: str = "start", kind: GuestKind = GuestKind.QEMU, attempts: int = 1, created: float = 0.0
) -> Op:
    return Op(
        id=1,
        idempotency_key="k",
        action=action,
        guest=GuestRef(node="pve1", kind=kind, vmid=100),
        attempts=attempts,
        created_at=created,
        updated_at=created,
    )


START = spec_for(GuestKind.QEMU, Action.START)
REBOOT = spec_for(GuestKind.QEMU, Action.REBOOT)
BUDGET = RetryBudget(max_retries=3, base=1.0, maximum=8.0, lock_wait_max=60.0)


@pytest.mark.parametrize("status", ["OK", "WARNINGS: 1", "WARNINGS: 17"])
def test_ok_and_warnings_succeed(status: str) -> None:
    """A task ending OK or WARNINGS: n succeeds, and the exit status is kept."""
    d = after_exit(make_op(), START, status, confirm_by_state=False)
    assert d.verdict is Verdict.SUCCEED
    assert d.exitstatus == status


def test_ha_task_ok_is_confirmed_by_state() -> None:
    """An HA task ending OK is confirmed by the guest's observed state, not trusted (§1.3)."""
    d = after_exit(make_op(), START, "OK", confirm_by_state=True)
    assert d.verdict is Verdict.CHECK
    assert d.otherwise is not None and d.otherwise.verdict is Verdict.RETRY


def test_in_task_lock_timeout_is_retried_for_convergent_ops() -> None:
    """A lock timeout inside a task is transient: a convergent op goes back to pending."""
    d = after_exit(
        make_op(),
        START,
        "can't lock file '/var/lock/qemu-server/lock-100.conf' - got timeout",
        confirm_by_state=False,
    )
    assert d.verdict is Verdict.RETRY
    assert d.error is not None and d.error.error_class is ErrorClass.TRANSIENT


def test_one_shot_task_failure_is_never_redispatched() -> None:
    """A one-shot op whose task was created fails instead of being dispatched again."""
    d = after_exit(
        make_op("reboot"),
        REBOOT,
        "can't lock file '/var/lock/qemu-server/lock-100.conf' - got timeout",
        confirm_by_state=False,
    )
    assert d.verdict is Verdict.FAIL


def test_one_shot_sync_transient_error_may_retry() -> None:
    """A sync transient error created no task, so even a one-shot op may be retried."""
    d = after_call_error(
        make_op("reboot"), REBOOT, ErrorClass.TRANSIENT, "got no worker upid - start worker failed"
    )
    assert d.verdict is Verdict.RETRY


def test_already_running_task_error_is_checked_for_start() -> None:
    """`VM 100 already running` for a start is confirmed by state, failing if it does not hold."""
    d = after_exit(make_op(), START, "VM 100 already running", confirm_by_state=False)
    assert d.verdict is Verdict.CHECK
    assert d.otherwise is not None and d.otherwise.verdict is Verdict.FAIL


def test_unexpected_status_checks_state_then_retries_convergent() -> None:
    """A worker that died (`unexpected status`) is judged by the guest; convergent ops retry."""
    d = after_exit(make_op(), START, "unexpected status", confirm_by_state=False)
    assert d.verdict is Verdict.CHECK
    assert d.otherwise is not None and d.otherwise.verdict is Verdict.RETRY
    d1 = after_exit(make_op("reboot"), REBOOT, "unexpected status", confirm_by_state=False)
    assert d1.otherwise is not None and d1.otherwise.verdict is Verdict.FAIL


@pytest.mark.parametrize("spec", [START, REBOOT], ids=["convergent", "one-shot"])
def test_unreadable_task_log_is_read_again_later(spec: ActionSpec) -> None:
    """``unable to get last line from task log`` decides nothing: the op stays in flight."""
    status = "unable to get last line from task log - open failed"
    d = after_exit(make_op(str(spec.action)), spec, status, confirm_by_state=False)
    assert d.verdict is Verdict.LEAVE
    assert d.error is None


def test_ambiguous_call_searches_tasks() -> None:
    """An ambiguous dispatch is never re-POSTed: it searches the node's task list first."""
    d = after_call_error(make_op(), START, ErrorClass.AMBIGUOUS, "no answer")
    assert d.verdict is Verdict.SEARCH
    assert d.ambiguous


def test_search_outcomes() -> None:
    """One match is adopted; several fail; none re-checks a convergent op and fails a one-shot."""
    up = "UPID:pve1:00001234:00005678:65000000:qmstart:100:root@pam!x:"
    assert after_search(make_op(), START, [up], recovering=False).verdict is Verdict.ADOPT
    assert after_search(make_op(), START, [up, up + "x"], recovering=False).verdict is Verdict.FAIL
    none = after_search(make_op(), START, [], recovering=False)
    assert none.verdict is Verdict.CHECK
    assert none.otherwise is not None and none.otherwise.verdict is Verdict.RETRY
    rec = after_search(make_op(), START, [], recovering=True)
    assert rec.otherwise is not None and rec.otherwise.verdict is Verdict.FAIL
    assert after_search(make_op("reboot"), REBOOT, [], recovering=False).verdict is Verdict.FAIL


def test_no_such_task() -> None:
    """A rotated task log: decided from state for convergent ops, failed for one-shot ops."""
    assert after_no_such_task(make_op(), START).verdict is Verdict.CHECK
    assert after_no_such_task(make_op("reboot"), REBOOT).verdict is Verdict.FAIL


def test_permanent_fails_at_once() -> None:
    """A permanent error fails the op with its text and no retry."""
    d = after_call_error(make_op(), START, ErrorClass.PERMANENT, "Parameter verification failed.")
    assert d.verdict is Verdict.FAIL
    assert d.error is not None and d.error.message == "Parameter verification failed."


def test_retry_budget_dead_letters_after_max_retries() -> None:
    """After max_retries transient attempts the op is dead-lettered (None)."""
    assert (
        next_attempt(
            make_op(attempts=2), ErrorClass.TRANSIENT, now=100, budget=BUDGET, rand=lambda: 0.5
        )
        == 101.0
    )
    assert (
        next_attempt(
            make_op(attempts=3), ErrorClass.TRANSIENT, now=100, budget=BUDGET, rand=lambda: 0.5
        )
        is None
    )


def test_locks_are_waited_on_up_to_lock_wait_max() -> None:
    """A held lock is waited on past max_retries, until lock_wait_max since creation."""
    op = make_op(attempts=10, created=0.0)
    assert next_attempt(op, ErrorClass.LOCKED, now=30, budget=BUDGET, rand=lambda: 0.0) == 30
    assert next_attempt(op, ErrorClass.LOCKED, now=61, budget=BUDGET, rand=lambda: 0.0) is None


@given(
    attempts=st.integers(min_value=0, max_value=10_000),
    r=st.floats(min_value=0, max_value=0.999999),
)
def test_next_attempt_is_never_in_the_past_nor_beyond_max_backoff(attempts: int, r: float) -> None:
    """A retry is scheduled between now and now + max_backoff, whatever the attempt count."""
    when = next_attempt(
        make_op(attempts=attempts), ErrorClass.LOCKED, now=10.0, budget=BUDGET, rand=lambda: r
    )
    assert when is not None
    assert 10.0 <= when <= 10.0 + BUDGET.maximum


def _task(kind: str = "qmstart", vmid: int = 100, start: int = 1000, user: str = "u@pve!t") -> Upid:
    return Upid(node="pve1", pid=1, pstart=1, starttime=start, type=kind, id=str(vmid), user=user)


def test_task_matches_never_returns_a_recorded_upid() -> None:
    """A task some op already recorded is no candidate: a UPID belongs to one op."""
    ours, theirs = _task(start=1001), _task(start=1000)
    listed = [ours, theirs, _task("vncproxy"), _task(vmid=101), _task(user="x@pve"), _task(start=9)]
    found = task_matches(
        START, 100, listed, user="u@pve!t", floor_start=1000, recorded={str(theirs)}
    )
    assert found == [str(ours)]
