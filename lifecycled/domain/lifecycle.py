"""The op state machine, whole: which verb may take an op from which state to which, and
what else each step changes (SPEC §1 "Op states"). Pure: ops and inputs in, a change or a
refusal out; the journal only persists what :func:`step` returns.

The table :data:`TABLE` maps ``(verb, from_state)`` to the ``to_state`` and the column
*effects* of that step. Two verbs annotate an op without changing its state (``set_upid``
on a running op adopts another task id, ``discard`` marks a dead letter as discarded,
``note_stuck`` records why an in-flight op is stuck): their ``to_state`` is the
``from_state``. Creating an op is not a step: a new op starts in :data:`INITIAL`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import attrs

from lifecycled.domain.classify import ErrorClass
from lifecycled.domain.op import Op, OpError
from lifecycled.domain.states import IN_FLIGHT, REARMABLE, OpState

#: The state every new op starts in.
INITIAL = OpState.PENDING


class Verb(enum.StrEnum):
    """Every way an existing op changes."""

    CLAIM = "claim"
    RECORD_UPID = "record_upid"
    SET_UPID = "set_upid"
    SUCCEED = "succeed"
    FAIL = "fail"
    DEAD_LETTER = "dead_letter"
    REQUEUE = "requeue"
    DEFER = "defer"
    CANCEL = "cancel"
    RETRY = "retry"
    REARM = "rearm"
    DISCARD = "discard"
    NOTE_STUCK = "note_stuck"


class Effect(enum.Enum):
    """What a step changes besides ``state`` and ``updated_at`` (always set to ``now``)."""

    #: ``attempts + 1``, ``claimed_at = now``, ``next_attempt_at = NULL``.
    CLAIM = enum.auto()
    #: ``upid`` = the task id given, ``dispatched = 1``, ``ambiguous_since = NULL``.
    TAKE_UPID = enum.auto()
    #: ``finished_at = now``, ``next_attempt_at = NULL``; ``exitstatus`` = the one given
    #: (else kept); the error given is recorded (else the last one kept).
    FINISH = enum.auto()
    #: Like :attr:`FINISH`'s error rule, except a success with no error clears it.
    CLEAR_ERROR_ON_SUCCESS = enum.auto()
    #: ``next_attempt_at = due_at`` = the time given, ``upid = NULL``.
    SCHEDULE = enum.auto()
    #: The error given is recorded (else the last one kept).
    RECORD_ERROR = enum.auto()
    #: When the attempt ended ambiguously: ``ambiguous_since`` = when it was claimed (kept
    #: if already set), so the next attempt searches the task list since then.
    MARK_AMBIGUOUS = enum.auto()
    #: ``attempts - 1`` (not below 0): the claimed attempt sent nothing.
    UNCOUNT_ATTEMPT = enum.auto()
    #: ``finished_at = now``, ``next_attempt_at = NULL``.
    CLOSE = enum.auto()
    #: A new attempt series: attempts 0, due now, task, exit status, error and times cleared;
    #: the history row keeps the error the op ended with.
    FRESH_SERIES = enum.auto()
    #: ``discarded_at = now``.
    DISCARD = enum.auto()


@attrs.frozen(kw_only=True)
class Transition:
    """Where ``(verb, from_state)`` goes and what else it changes."""

    to: OpState
    effects: tuple[Effect, ...]


_S = OpState
_E = Effect


def _rows() -> dict[tuple[Verb, OpState], Transition]:
    table: dict[tuple[Verb, OpState], Transition] = {}

    def add(verb: Verb, sources: frozenset[OpState], to: OpState | None, *eff: Effect) -> None:
        for src in sources:
            table[verb, src] = Transition(to=src if to is None else to, effects=eff)

    one = frozenset
    add(Verb.CLAIM, one({_S.PENDING}), _S.DISPATCHING, _E.CLAIM)
    add(Verb.RECORD_UPID, one({_S.DISPATCHING}), _S.RUNNING, _E.TAKE_UPID)
    add(Verb.SET_UPID, IN_FLIGHT, _S.RUNNING, _E.TAKE_UPID)
    add(Verb.SUCCEED, IN_FLIGHT, _S.SUCCEEDED, _E.FINISH, _E.CLEAR_ERROR_ON_SUCCESS)
    add(Verb.FAIL, IN_FLIGHT, _S.FAILED, _E.FINISH)
    add(Verb.DEAD_LETTER, IN_FLIGHT, _S.DEAD_LETTERED, _E.FINISH)
    add(Verb.REQUEUE, IN_FLIGHT, _S.PENDING, _E.SCHEDULE, _E.RECORD_ERROR, _E.MARK_AMBIGUOUS)
    add(Verb.DEFER, IN_FLIGHT, _S.PENDING, _E.SCHEDULE, _E.UNCOUNT_ATTEMPT)
    add(Verb.CANCEL, one({_S.PENDING}), _S.CANCELLED, _E.CLOSE)
    add(Verb.RETRY, REARMABLE, _S.PENDING, _E.FRESH_SERIES)
    add(Verb.REARM, REARMABLE, _S.PENDING, _E.FRESH_SERIES)
    add(Verb.DISCARD, one({_S.DEAD_LETTERED}), None, _E.DISCARD)
    add(Verb.NOTE_STUCK, IN_FLIGHT, None)
    return table


#: The whole state machine: ``(verb, from_state)`` → where it goes and what it changes.
TABLE: Mapping[tuple[Verb, OpState], Transition] = _rows()

#: How each verb says no (the states it accepts, in words).
REQUIREMENTS: Mapping[Verb, str] = {
    Verb.CLAIM: "only a pending op can be claimed",
    Verb.RECORD_UPID: "a task id can only be recorded for a dispatching op",
    Verb.SET_UPID: "only an in-flight op can adopt a task id",
    Verb.SUCCEED: "only an in-flight op can finish",
    Verb.FAIL: "only an in-flight op can finish",
    Verb.DEAD_LETTER: "only an in-flight op can be dead-lettered",
    Verb.REQUEUE: "only an in-flight op can be re-queued",
    Verb.DEFER: "only an in-flight op can be deferred",
    Verb.CANCEL: "only a pending op can be cancelled",
    Verb.RETRY: "only a failed, dead-lettered or cancelled op can be retried",
    Verb.REARM: "only a failed, dead-lettered or cancelled op can be re-armed",
    Verb.DISCARD: "only a dead-lettered op can be discarded",
    Verb.NOTE_STUCK: "only an in-flight op can be noted as stuck",
}

#: The verb that ends an in-flight op in each final state (``Journal.finish``).
FINISHING: Mapping[OpState, Verb] = {
    _S.SUCCEEDED: Verb.SUCCEED,
    _S.FAILED: Verb.FAIL,
    _S.DEAD_LETTERED: Verb.DEAD_LETTER,
}


def sources(verb: Verb) -> frozenset[OpState]:
    """The states ``verb`` accepts."""
    return frozenset(src for (v, src) in TABLE if v is verb)


def legal(src: OpState, dst: OpState) -> bool:
    """Whether some verb takes an op from ``src`` to ``dst`` (annotations included)."""
    return any(src is s and t.to is dst for (_, s), t in TABLE.items())


@attrs.frozen(kw_only=True)
class Refused:
    """``verb`` may not act on an op in ``state``."""

    verb: Verb
    state: OpState
    reason: str


@attrs.frozen(kw_only=True)
class Change:
    """What to persist: the op's columns to set (guarded by ``before``), the op as it reads
    afterwards, and the values of its history row."""

    before: OpState
    op: Op
    #: Column → value to set on the op's row (``state`` and ``updated_at`` included).
    sets: Mapping[str, Any]
    history_error: OpError | None
    history_upid: str | None


def error_columns(error: OpError | None) -> dict[str, Any]:
    """The ops/history columns for ``error`` (``None`` clears them)."""
    if error is None:
        return {"error_class": None, "error_message": None}
    return {"error_class": str(error.error_class), "error_message": error.message}


def _fresh_series(now: float) -> dict[str, Any]:
    return {
        "attempts": 0,
        "next_attempt_at": None,
        "due_at": now,
        "upid": None,
        "exitstatus": None,
        "finished_at": None,
        "claimed_at": None,
        "ambiguous_since": None,
        "dispatched": 0,
        "discarded_at": None,
        **error_columns(None),
    }


def step(
    op: Op,
    verb: Verb,
    *,
    now: float,
    upid: str | None = None,
    exitstatus: str | None = None,
    error: OpError | None = None,
    next_attempt_at: float | None = None,
    ambiguous: bool = False,
) -> Change | Refused:
    """What ``verb`` does to ``op`` at ``now``, or why it may not.

    ``upid`` (record/set a task id), ``exitstatus`` and ``error`` (finish, requeue),
    ``next_attempt_at`` (requeue, defer) and ``ambiguous`` (requeue) are the verb's inputs;
    a verb ignores the ones it does not use.
    """
    transition = TABLE.get((verb, op.state))
    if transition is None:
        return Refused(verb=verb, state=op.state, reason=REQUIREMENTS[verb])
    sets: dict[str, Any] = {"state": str(transition.to), "updated_at": now}
    history_error: OpError | None = None
    for effect in transition.effects:
        if effect is Effect.CLAIM:
            sets.update(attempts=op.attempts + 1, claimed_at=now, next_attempt_at=None)
        elif effect is Effect.TAKE_UPID:
            if upid is None:
                raise ValueError(f"{verb} needs the task id")
            sets.update(upid=upid, dispatched=1, ambiguous_since=None)
        elif effect is Effect.FINISH:
            sets.update(finished_at=now, next_attempt_at=None)
            sets["exitstatus"] = exitstatus if exitstatus is not None else op.exitstatus
            if error is not None:
                sets.update(error_columns(error))
            history_error = error
        elif effect is Effect.CLEAR_ERROR_ON_SUCCESS:
            sets.update(error_columns(error))
        elif effect is Effect.SCHEDULE:
            if next_attempt_at is None:
                raise ValueError(f"{verb} needs the next attempt's time")
            sets.update(next_attempt_at=next_attempt_at, due_at=next_attempt_at, upid=None)
        elif effect is Effect.RECORD_ERROR:
            if error is not None:
                sets.update(error_columns(error))
            history_error = error
        elif effect is Effect.MARK_AMBIGUOUS:
            if ambiguous and op.ambiguous_since is None:
                sets["ambiguous_since"] = op.claimed_at if op.claimed_at is not None else now
        elif effect is Effect.UNCOUNT_ATTEMPT:
            sets["attempts"] = max(op.attempts - 1, 0)
        elif effect is Effect.CLOSE:
            sets.update(finished_at=now, next_attempt_at=None)
        elif effect is Effect.FRESH_SERIES:
            sets.update(_fresh_series(now))
            history_error = op.error
        elif effect is Effect.DISCARD:
            sets["discarded_at"] = now
    after = evolved(op, transition.to, sets)
    return Change(
        before=op.state,
        op=after,
        sets=sets,
        history_error=history_error,
        history_upid=after.upid_text if after.upid_text is not None else op.upid_text,
    )


_TIMES = (
    "updated_at",
    "next_attempt_at",
    "finished_at",
    "claimed_at",
    "ambiguous_since",
    "discarded_at",
)
#: The fields an :class:`Op` is built from (``upid`` is parsed from ``upid_text``).
_OP_FIELDS = tuple(field.name for field in attrs.fields(Op) if field.init)


def evolved(op: Op, state: OpState, sets: Mapping[str, Any]) -> Op:
    """``op`` in ``state`` with the column values ``sets`` applied (what its row then reads)."""
    fields: dict[str, Any] = {"state": state}
    for name in _TIMES:
        if name in sets:
            value = sets[name]
            fields[name] = None if value is None else float(value)
    if "attempts" in sets:
        fields["attempts"] = int(sets["attempts"])
    if "upid" in sets:
        fields["upid_text"] = sets["upid"]
    if "exitstatus" in sets:
        fields["exitstatus"] = sets["exitstatus"]
    if "dispatched" in sets:
        fields["dispatched"] = bool(sets["dispatched"])
    if "error_class" in sets:
        cls = sets["error_class"]
        fields["error"] = (
            None
            if cls is None
            else OpError(error_class=ErrorClass(cls), message=sets.get("error_message") or "")
        )
    # attrs.evolve, without its per-call introspection (this runs on every transition).
    return Op(**{name: getattr(op, name) for name in _OP_FIELDS} | fields)
