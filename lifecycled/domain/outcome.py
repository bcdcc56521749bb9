"""What to do with an op after each thing Proxmox tells us — pure decisions.

The dispatcher, the task tracker, Recover and the janitor all meet the same situations (a
task stopped with some exit status, a call failed with some error class, a task search found
0, 1 or several tasks, a task log was rotated away). Each situation maps to a
:class:`Decision` here, so the rules of SPEC §2 live in one place:

* ``OK`` / ``WARNINGS: n`` succeed (HA tasks are confirmed by observed state instead);
* a one-shot op whose task was created is never dispatched again;
* ``satisfied`` is confirmed by reading the guest before it counts as success;
* ``ambiguous`` never re-POSTs blindly: search, adopt, else re-check the guest;
* a task whose exit status cannot be read (``unable to get last line from task log``) has no
  outcome yet: it is read again later, like a status read that failed;
* transient and locked failures are retried with backoff until their budget is spent.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Iterable, Sequence

import attrs

from lifecycled.domain.actions import ActionSpec
from lifecycled.domain.backoff import backoff_delay
from lifecycled.domain.classify import (
    ErrorClass,
    classify_exitstatus,
    is_success_exitstatus,
    is_unknown_exitstatus,
)
from lifecycled.domain.op import Op, OpError
from lifecycled.domain.upid import Upid


class Verdict(enum.StrEnum):
    SUCCEED = "succeed"
    FAIL = "fail"
    RETRY = "retry"  # back to pending with backoff, or dead-lettered when the budget is spent
    ADOPT = "adopt"  # a matching task was found: journal its UPID and track it
    SEARCH = "search"  # the outcome of a write is unknown: search the node's task list
    CHECK = "check"  # read the guest: if the target holds → ``if_holds``, else → ``otherwise``
    LEAVE = "leave"  # cannot decide now (node offline): leave in flight, look again later


@attrs.frozen(kw_only=True)
class Decision:
    verdict: Verdict
    reason: str
    error: OpError | None = None
    exitstatus: str | None = None
    upid: str | None = None
    ambiguous: bool = False
    #: For CHECK: what to do when the target does not hold.
    otherwise: Decision | None = None


def succeed(reason: str, exitstatus: str | None = None) -> Decision:
    return Decision(verdict=Verdict.SUCCEED, reason=reason, exitstatus=exitstatus)


def fail(reason: str, cls: ErrorClass, message: str, exitstatus: str | None = None) -> Decision:
    return Decision(
        verdict=Verdict.FAIL,
        reason=reason,
        error=OpError(error_class=cls, message=message),
        exitstatus=exitstatus,
    )


def retry(
    reason: str,
    cls: ErrorClass,
    message: str,
    *,
    ambiguous: bool = False,
    exitstatus: str | None = None,
) -> Decision:
    return Decision(
        verdict=Verdict.RETRY,
        reason=reason,
        error=OpError(error_class=cls, message=message),
        ambiguous=ambiguous,
        exitstatus=exitstatus,
    )


def check(reason: str, otherwise: Decision, exitstatus: str | None = None) -> Decision:
    return Decision(
        verdict=Verdict.CHECK, reason=reason, otherwise=otherwise, exitstatus=exitstatus
    )


def after_exit(op: Op, spec: ActionSpec, exitstatus: str, *, confirm_by_state: bool) -> Decision:
    """A tracked task stopped with ``exitstatus``."""
    if is_unknown_exitstatus(exitstatus):
        return Decision(
            verdict=Verdict.LEAVE,
            reason="task ended but its log is unreadable; reading it again later",
            exitstatus=exitstatus,
        )
    if is_success_exitstatus(exitstatus):
        if confirm_by_state and spec.convergent:
            # HA tasks end OK before the CRM acts (reference §1.3): confirm by observed state.
            return check(
                "HA task ended; confirming by observed state",
                retry(
                    "HA request accepted; target not reached yet",
                    ErrorClass.TRANSIENT,
                    "target not reached after HA task",
                    exitstatus=exitstatus,
                ),
                exitstatus=exitstatus,
            )
        return succeed(f"task ended {exitstatus}", exitstatus)
    cls = classify_exitstatus(exitstatus, action=spec.action) or ErrorClass.PERMANENT
    return _after_failure(op, spec, cls, exitstatus, task_created=True, exitstatus=exitstatus)


def after_call_error(op: Op, spec: ActionSpec, cls: ErrorClass, text: str) -> Decision:
    """The dispatch call itself failed with error class ``cls`` (no UPID came back).

    ``cls`` is the class the adapter's error already carries (``PveError.error_class``,
    decided by :mod:`lifecycled.domain.classify` with the op's action); it is not re-decided.
    """
    return _after_failure(op, spec, cls, text, task_created=False, exitstatus=None)


def _after_failure(
    op: Op,
    spec: ActionSpec,
    cls: ErrorClass,
    text: str,
    *,
    task_created: bool,
    exitstatus: str | None,
) -> Decision:
    where = "task" if task_created else "call"
    if cls is ErrorClass.SATISFIED:
        return check(
            f"{where} says the target already holds",
            fail(
                "target does not hold after a 'satisfied' answer",
                ErrorClass.PERMANENT,
                text,
                exitstatus,
            ),
            exitstatus=exitstatus,
        )
    if cls is ErrorClass.PERMANENT:
        return fail(f"{where} failed permanently", cls, text, exitstatus)
    if cls is ErrorClass.AMBIGUOUS:
        if task_created:
            # The worker died without a final line: only the guest can tell.
            otherwise = (
                retry("task outcome unknown; target not held", cls, text, exitstatus=exitstatus)
                if spec.convergent
                else fail(
                    "task outcome unknown; one-shot op is not dispatched twice",
                    cls,
                    text,
                    exitstatus,
                )
            )
            return check(
                "task outcome unknown; reading the guest", otherwise, exitstatus=exitstatus
            )
        return Decision(
            verdict=Verdict.SEARCH,
            reason="call outcome unknown; searching tasks",
            error=OpError(error_class=cls, message=text),
            ambiguous=True,
        )
    # transient or locked
    if task_created and spec.one_shot:
        return fail(f"{where} failed; one-shot op is not dispatched twice", cls, text, exitstatus)
    return retry(f"{where} failed ({cls})", cls, text, exitstatus=exitstatus)


def task_matches(
    spec: ActionSpec,
    task_vmid: int | str,
    listed: Iterable[Upid],
    *,
    user: str,
    floor_start: int,
    recorded: Collection[str],
) -> list[str]:
    """The UPIDs of a node's task list that may be an op's task (SPEC §2 "ambiguous").

    A match has a worker type of the action (or its HA request), the task's vmid, our own
    user, started no earlier than ``floor_start``, and is recorded by no op: a UPID belongs
    to one op, so a task any op journaled — another op's, or this op's earlier attempt — is
    never adopted.
    """
    types = set(spec.worker_types)
    if spec.ha_worker_type:
        types.add(spec.ha_worker_type)
    found = {
        str(upid)
        for upid in listed
        if upid.type in types
        and upid.id == str(task_vmid)
        and upid.user == user
        and upid.starttime >= floor_start
    }
    return sorted(found - set(recorded))


def after_search(op: Op, spec: ActionSpec, matches: Sequence[str], *, recovering: bool) -> Decision:
    """A task-list search for this op's task found ``matches`` (UPIDs).

    ``recovering``: the search is Recover's (crash between claim and UPID): none found means
    the POST never took effect (SPEC §2); otherwise it follows an ambiguous call.
    """
    if len(matches) == 1:
        return Decision(
            verdict=Verdict.ADOPT,
            reason="adopted the task found in the node's task list",
            upid=matches[0],
        )
    if len(matches) > 1:
        return fail(
            f"{len(matches)} matching tasks found; cannot tell which is ours",
            ErrorClass.AMBIGUOUS,
            "several matching tasks in the node's task list",
        )
    text = "no matching task in the node's task list"
    if recovering:
        otherwise = fail(
            "no task found after restart; treated as never sent", ErrorClass.AMBIGUOUS, text
        )
    elif spec.one_shot:
        otherwise = fail(
            "call outcome unknown; one-shot op is not dispatched twice", ErrorClass.AMBIGUOUS, text
        )
    else:
        otherwise = retry(
            "call outcome unknown; no task found", ErrorClass.AMBIGUOUS, text, ambiguous=True
        )
    if spec.convergent:
        return check("no task found; reading the guest", otherwise)
    return otherwise


def after_no_such_task(op: Op, spec: ActionSpec) -> Decision:
    """The task's log is gone (rotated): decide from the guest for a convergent op (SPEC §2)."""
    text = "no such task"
    if spec.convergent:
        return check(
            "task log rotated; deciding from the guest",
            retry("task log rotated and target not held", ErrorClass.TRANSIENT, text),
        )
    return fail("task log rotated; one-shot outcome unknown", ErrorClass.AMBIGUOUS, text)


@attrs.frozen(kw_only=True)
class RetryBudget:
    max_retries: int
    base: float
    maximum: float
    lock_wait_max: float


def next_attempt(
    op: Op,
    cls: ErrorClass,
    *,
    now: float,
    budget: RetryBudget,
    rand: Callable[[], float],
) -> float | None:
    """When to try again, or ``None`` when the op must be dead-lettered.

    Transient and ambiguous failures spend ``max_retries`` attempts; a held lock is waited
    on (with the same backoff) for up to ``lock_wait_max`` since the op was created.
    """
    attempt = max(op.attempts, 1)
    if cls is ErrorClass.LOCKED:
        if now - op.created_at > budget.lock_wait_max:
            return None
    elif op.attempts >= budget.max_retries:
        return None
    return now + backoff_delay(attempt, base=budget.base, maximum=budget.maximum, rand=rand)
