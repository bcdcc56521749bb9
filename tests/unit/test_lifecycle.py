"""The op state machine, domain/lifecycle.py (pure: no I/O)."""

from __future__ import annotations

import ast
import itertools
import re
from pathlib import Path

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
from lifecycled.domain.states import IN_FLIGHT, REARMABLE, TERMINAL, OpState

S = OpState
T0 = 1_700_000_000.0
BOOM = OpError(error_class=ErrorClass.TRANSIENT, message="boom")

# The two tables domain/lifecycle.py replaced, as they stood at af6c039 (domain/states.py
# TRANSITIONS and journal/rules.py RULES): the table below must decide exactly as they did.
OLD_TRANSITIONS: dict[OpState, frozenset[OpState]] = {
    S.PENDING: frozenset({S.DISPATCHING, S.CANCELLED}),
    S.DISPATCHING: frozenset({S.RUNNING, S.SUCCEEDED, S.FAILED, S.DEAD_LETTERED, S.PENDING}),
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.DEAD_LETTERED, S.PENDING}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset({S.PENDING}),
    S.DEAD_LETTERED: frozenset({S.PENDING}),
    S.CANCELLED: frozenset({S.PENDING}),
}
_ONE = frozenset
#: verb → (sources, targets, annotates)
OLD_RULES: dict[str, tuple[frozenset[OpState], frozenset[OpState], bool]] = {
    "claim": (_ONE({S.PENDING}), _ONE({S.DISPATCHING}), False),
    "record_upid": (_ONE({S.DISPATCHING}), _ONE({S.RUNNING}), False),
    "set_upid": (IN_FLIGHT, _ONE({S.RUNNING}), True),
    "finish": (IN_FLIGHT, _ONE({S.SUCCEEDED, S.FAILED, S.DEAD_LETTERED}), False),
    "requeue": (IN_FLIGHT, _ONE({S.PENDING}), False),
    "dead_letter": (IN_FLIGHT, _ONE({S.DEAD_LETTERED}), False),
    "cancel": (_ONE({S.PENDING}), _ONE({S.CANCELLED}), False),
    "retry": (REARMABLE, _ONE({S.PENDING}), False),
    "rearm": (REARMABLE, _ONE({S.PENDING}), False),
    "discard": (_ONE({S.DEAD_LETTERED}), _ONE({S.DEAD_LETTERED}), True),
}


def _old_allowed(verb: str, src: OpState, dst: OpState) -> bool:
    """journal.rules.refusal(verb, src, dst) is None, as it was written."""
    sources_, targets, annotates = OLD_RULES[verb]
    if src not in sources_ or dst not in targets:
        return False
    return annotates if src == dst else dst in OLD_TRANSITIONS[src]


def _new_verb(old: str, dst: OpState) -> Verb:
    """The new verb for an old (verb, target): finish is split by the state it ends in."""
    if old == "finish":
        return FINISHING.get(dst, Verb.SUCCEED)
    return Verb(old)


def test_every_old_rule_decision_is_the_same_in_the_table() -> None:
    """For every old (verb, from, to), the old rules said yes exactly when the table lets
    that verb act from that state and go to that state."""
    for old, src, dst in itertools.product(OLD_RULES, OpState, OpState):
        before = _old_allowed(old, src, dst)
        now = TABLE.get((_new_verb(old, dst), src))
        if old == "finish" and dst not in FINISHING:
            assert not before, (old, src, dst)
            continue
        assert before == (now is not None and now.to is dst), (old, src, dst)


def test_the_table_moves_exactly_along_the_old_transitions() -> None:
    """Every state change in the table is one of the old TRANSITIONS, and every one of
    those has a verb; same-state rows are only the annotations; succeeded is final."""
    changes = {(src, t.to) for (_, src), t in TABLE.items() if src is not t.to}
    old = {(a, b) for a in OpState for b in OLD_TRANSITIONS[a]}
    assert changes == old
    assert all(legal(a, b) for a, b in old)
    assert not any(src is S.SUCCEEDED for (_, src) in TABLE)
    annotations = {(v, src) for (v, src), t in TABLE.items() if src is t.to}
    assert annotations == {
        (Verb.SET_UPID, S.RUNNING),
        (Verb.DISCARD, S.DEAD_LETTERED),
        (Verb.NOTE_STUCK, S.DISPATCHING),
        (Verb.NOTE_STUCK, S.RUNNING),
    }


def test_the_verbs_written_by_hand_before_accept_what_they_accepted() -> None:
    """defer took requeue's rule; note_stuck took any in-flight op and kept its state."""
    assert sources(Verb.DEFER) == OLD_RULES["requeue"][0]
    assert sources(Verb.NOTE_STUCK) == IN_FLIGHT
    assert INITIAL is S.PENDING


def test_terminal_and_in_flight_partition_the_states() -> None:
    """Every state is exactly one of pending, in flight or terminal."""
    for state in OpState:
        kinds = [state is OpState.PENDING, state in IN_FLIGHT, state in TERMINAL]
        assert kinds.count(True) == 1, state


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
    running = _op(S.RUNNING, upid_text="U", exitstatus="x", attempts=2, claimed_at=T0 + 1)
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
    retried = _sets(Verb.RETRY, _op(S.FAILED, attempts=3, error=BOOM, upid_text="U"))
    assert retried["attempts"] == 0 and retried["due_at"] == now and retried["upid"] is None
    assert _sets(Verb.DISCARD, _op(S.DEAD_LETTERED)) == {
        "state": "dead_lettered",
        "updated_at": now,
        "discarded_at": now,
    }
    assert _sets(Verb.NOTE_STUCK, running) == {"state": "running", "updated_at": now}


def test_the_history_row_keeps_the_task_and_the_error_it_ended_with() -> None:
    """A requeue's history names the task it cleared; a retry's keeps the op's last error."""
    running = _op(S.RUNNING, upid_text="U")
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


def _text(node: ast.AST) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(_text(v) for v in node.values)
    return ""


def _sql_sites(folder: Path) -> list[tuple[str, str]]:
    """(module, enclosing function or ``<module>``) of every string in ``folder`` that
    updates the ops table."""
    found: list[tuple[str, str]] = []

    def visit(node: ast.AST, module: str, where: str) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            where = node.name
        if re.search(r"UPDATE\s+ops\b", _text(node), re.IGNORECASE):
            found.append((module, where))
            return
        for child in ast.iter_child_nodes(node):
            visit(child, module, where)

    for path in sorted(folder.glob("*.py")):
        visit(ast.parse(path.read_text()), path.name, "<module>")
    return found


def test_only_the_persist_function_updates_an_op_row() -> None:
    """The journal's SQL updates ops rows in one place: the guarded UPDATE persist() runs
    with what step() decided (no state written as an SQL literal anywhere else)."""
    import lifecycled.journal

    folder = Path(lifecycled.journal.__file__).parent
    sites = _sql_sites(folder)
    assert set(sites) == {("ops.py", "_update_sql")}
    callers = [
        (path.name, n)
        for path in sorted(folder.glob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "_update_sql(" in line and "def _update_sql" not in line
    ]
    assert len(callers) == 1, callers
    for path in folder.glob("*.py"):
        assert not re.search(r"SET[^;\"]*\bstate\s*=\s*'", path.read_text()), path.name
