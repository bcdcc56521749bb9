"""The op state machine, domain/lifecycle.py (pure: no I/O)."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from lifecycled.domain.classify import ErrorClass
from lifecycled.domain.lifecycle import (
    FINISHING,
    INITIAL,
    TABLE,
    Change,
    Refused,
    Verb,
    legal,
    sources,
    step,
)
from lifecycled.domain.op import GuestKind, GuestRef, Op, OpError
from lifecycled.domain.states import IN_FLIGHT, TRANSITIONS, OpState, is_legal
from lifecycled.journal.rules import RULES, refusal
from lifecycled.journal.rules import Verb as OldVerb

S = OpState
T0 = 1_700_000_000.0
BOOM = OpError(error_class=ErrorClass.TRANSIENT, message="boom")


def _new_verb(old: OldVerb, dst: OpState) -> Verb:
    """The new verb for an old (verb, target): FINISH split by the state it ends in."""
    if old is OldVerb.FINISH:
        return FINISHING.get(dst, Verb.SUCCEED)
    return Verb(str(old))


def test_every_old_rule_decision_is_the_same_in_the_table() -> None:
    """For every old (verb, from, to), journal.rules said yes exactly when step() allows
    that verb from that state and goes to that state."""
    for old, src, dst in itertools.product(OldVerb, OpState, OpState):
        before = refusal(old, src, dst) is None
        verb = _new_verb(old, dst)
        now = TABLE.get((verb, src))
        if old is OldVerb.FINISH and dst not in FINISHING:
            assert not before, (old, src, dst)
            continue
        assert before == (now is not None and now.to is dst), (old, src, dst)


def test_the_table_moves_exactly_along_the_old_transitions() -> None:
    """Every state change in the table is one of the old TRANSITIONS, and every one of
    those has a verb; same-state rows are only the annotations."""
    changes = {(src, t.to) for (_, src), t in TABLE.items() if src is not t.to}
    old = {(a, b) for a, b in itertools.product(OpState, OpState) if is_legal(a, b)}
    assert changes == old
    assert all(legal(a, b) for a, b in old)
    assert TRANSITIONS[S.SUCCEEDED] == frozenset()
    annotations = {(v, src) for (v, src), t in TABLE.items() if src is t.to}
    assert annotations == {
        (Verb.SET_UPID, S.RUNNING),
        (Verb.DISCARD, S.DEAD_LETTERED),
        (Verb.NOTE_STUCK, S.DISPATCHING),
        (Verb.NOTE_STUCK, S.RUNNING),
    }


def test_the_verbs_written_by_hand_before_accept_what_they_accepted() -> None:
    """defer took requeue's rule; note_stuck took any in-flight op and kept its state."""
    assert sources(Verb.DEFER) == RULES[OldVerb.REQUEUE].sources
    assert sources(Verb.NOTE_STUCK) == IN_FLIGHT
    assert INITIAL is S.PENDING


def _op(state: OpState, **kw: object) -> Op:
    fields: dict[str, object] = {
        "id": 7,
        "idempotency_key": "k",
        "action": "start",
        "guest": GuestRef(node="pve1", kind=GuestKind.QEMU, vmid=101),
        "state": state,
        "created_at": T0,
        "updated_at": T0,
    }
    fields.update(kw)
    return Op(**fields)  # type: ignore[arg-type]


def _sets(verb: Verb, op: Op, **inputs: object) -> dict[str, object]:
    change = step(op, verb, now=T0 + 10, **inputs)  # type: ignore[arg-type]
    assert isinstance(change, Change), change
    return dict(change.sets)


def test_each_step_sets_the_columns_its_verb_always_set() -> None:
    """Effects, verb by verb, as the journal's units wrote them before."""
    now = T0 + 10
    pending = _op(S.PENDING, attempts=1)
    assert _sets(Verb.CLAIM, pending) == {
        "state": "dispatching",
        "updated_at": now,
        "attempts": 2,
        "claimed_at": now,
        "next_attempt_at": None,
    }
    assert _sets(Verb.RECORD_UPID, _op(S.DISPATCHING), upid="U") == {
        "state": "running",
        "updated_at": now,
        "upid": "U",
        "dispatched": 1,
        "ambiguous_since": None,
    }
    running = _op(S.RUNNING, upid="U", exitstatus="x", attempts=2, claimed_at=T0 + 1)
    assert _sets(Verb.SUCCEED, running) == {
        "state": "succeeded",
        "updated_at": now,
        "finished_at": now,
        "next_attempt_at": None,
        "exitstatus": "x",
        "error_class": None,
        "error_message": None,
    }
    failed = _sets(Verb.FAIL, running, exitstatus="bad")
    assert failed["exitstatus"] == "bad" and "error_class" not in failed  # last error kept
    requeued = _sets(Verb.REQUEUE, running, next_attempt_at=T0 + 50, error=BOOM, ambiguous=True)
    assert requeued == {
        "state": "pending",
        "updated_at": now,
        "next_attempt_at": T0 + 50,
        "due_at": T0 + 50,
        "upid": None,
        "error_class": "transient",
        "error_message": "boom",
        "ambiguous_since": T0 + 1,
    }
    deferred = _sets(Verb.DEFER, running, next_attempt_at=T0 + 50)
    assert deferred["attempts"] == 1 and deferred["upid"] is None
    assert _sets(Verb.CANCEL, pending) == {
        "state": "cancelled",
        "updated_at": now,
        "finished_at": now,
        "next_attempt_at": None,
    }
    retried = _sets(Verb.RETRY, _op(S.FAILED, attempts=3, error=BOOM, upid="U"))
    assert retried["attempts"] == 0 and retried["due_at"] == now and retried["upid"] is None
    assert _sets(Verb.DISCARD, _op(S.DEAD_LETTERED)) == {
        "state": "dead_lettered",
        "updated_at": now,
        "discarded_at": now,
    }
    assert _sets(Verb.NOTE_STUCK, running) == {"state": "running", "updated_at": now}


def test_the_history_row_keeps_the_task_and_the_error_it_ended_with() -> None:
    """A requeue's history names the task it cleared; a retry's keeps the op's last error."""
    running = _op(S.RUNNING, upid="U")
    requeued = step(running, Verb.REQUEUE, now=T0, next_attempt_at=T0 + 5)
    assert isinstance(requeued, Change) and requeued.history_upid == "U"
    retried = step(_op(S.FAILED, error=BOOM), Verb.RETRY, now=T0)
    assert isinstance(retried, Change) and retried.history_error == BOOM


def test_a_refusal_says_what_the_verb_needs() -> None:
    """A refused verb names the states it requires and changes nothing."""
    refused = step(_op(S.RUNNING), Verb.CANCEL, now=T0)
    assert refused == Refused(
        verb=Verb.CANCEL, state=S.RUNNING, reason="only a pending op can be cancelled"
    )


@given(st.lists(st.sampled_from(list(Verb)), max_size=60))
def test_no_sequence_of_verbs_leaves_the_state_machine(verbs: list[Verb]) -> None:
    """Any sequence of verbs from pending makes only legal moves, and the op step() returns
    is in the state it says; nothing ever leaves succeeded."""
    op = _op(S.PENDING)
    for verb in verbs:
        result = step(op, verb, now=T0, upid="U", next_attempt_at=T0)
        if isinstance(result, Refused):
            assert (verb, op.state) not in TABLE
            continue
        assert op.state is not S.SUCCEEDED
        assert legal(op.state, result.op.state)
        assert str(result.op.state) == result.sets["state"]
        op = result.op
