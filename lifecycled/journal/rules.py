"""Which op states each journal verb accepts, and where it takes them (pure data).

The journal checks every state change against these rules *and* against
:func:`lifecycled.domain.states.is_legal`; a verb can only narrow the state machine,
never widen it. Two verbs annotate an op without changing its state (``discard`` marks a
dead letter as discarded, ``set_upid`` replaces the task id of an in-flight op); they are
the only "transitions" whose source and target are the same state.
"""

from __future__ import annotations

import enum

import attrs

from lifecycled.domain.states import IN_FLIGHT, REARMABLE, OpState, is_legal


class Verb(enum.StrEnum):
    """The journal's state-changing operations on an existing op."""

    CLAIM = "claim"
    RECORD_UPID = "record_upid"
    SET_UPID = "set_upid"
    FINISH = "finish"
    REQUEUE = "requeue"
    DEAD_LETTER = "dead_letter"
    CANCEL = "cancel"
    RETRY = "retry"
    REARM = "rearm"
    DISCARD = "discard"


@attrs.frozen(kw_only=True)
class Rule:
    """The states a verb accepts, the states it may produce, and how to say no."""

    sources: frozenset[OpState]
    targets: frozenset[OpState]
    requirement: str
    #: The verb may leave the op in the state it found it in (an annotation).
    annotates: bool = False


_S = OpState
RULES: dict[Verb, Rule] = {
    Verb.CLAIM: Rule(
        sources=frozenset({_S.PENDING}),
        targets=frozenset({_S.DISPATCHING}),
        requirement="only a pending op can be claimed",
    ),
    Verb.RECORD_UPID: Rule(
        sources=frozenset({_S.DISPATCHING}),
        targets=frozenset({_S.RUNNING}),
        requirement="a task id can only be recorded for a dispatching op",
    ),
    Verb.SET_UPID: Rule(
        sources=IN_FLIGHT,
        targets=frozenset({_S.RUNNING}),
        requirement="only an in-flight op can adopt a task id",
        annotates=True,
    ),
    Verb.FINISH: Rule(
        sources=IN_FLIGHT,
        targets=frozenset({_S.SUCCEEDED, _S.FAILED, _S.DEAD_LETTERED}),
        requirement="only an in-flight op can finish",
    ),
    Verb.REQUEUE: Rule(
        sources=IN_FLIGHT,
        targets=frozenset({_S.PENDING}),
        requirement="only an in-flight op can be re-queued",
    ),
    Verb.DEAD_LETTER: Rule(
        sources=IN_FLIGHT,
        targets=frozenset({_S.DEAD_LETTERED}),
        requirement="only an in-flight op can be dead-lettered",
    ),
    Verb.CANCEL: Rule(
        sources=frozenset({_S.PENDING}),
        targets=frozenset({_S.CANCELLED}),
        requirement="only a pending op can be cancelled",
    ),
    Verb.RETRY: Rule(
        sources=REARMABLE,
        targets=frozenset({_S.PENDING}),
        requirement="only a failed, dead-lettered or cancelled op can be retried",
    ),
    Verb.REARM: Rule(
        sources=REARMABLE,
        targets=frozenset({_S.PENDING}),
        requirement="only a failed, dead-lettered or cancelled op can be re-armed",
    ),
    Verb.DISCARD: Rule(
        sources=frozenset({_S.DEAD_LETTERED}),
        targets=frozenset({_S.DEAD_LETTERED}),
        requirement="only a dead-lettered op can be discarded",
        annotates=True,
    ),
}


def refusal(verb: Verb, src: OpState, dst: OpState) -> str | None:
    """Why ``verb`` may not take an op from ``src`` to ``dst``; ``None`` when it may."""
    rule = RULES[verb]
    if src not in rule.sources:
        return rule.requirement
    if dst not in rule.targets:
        return f"{verb} cannot take an op to {dst}"
    if src == dst:
        return None if rule.annotates else f"{src} → {dst} is not a state change"
    if not is_legal(src, dst):
        return f"{src} → {dst} is not a legal transition"
    return None


#: The ``phase`` code stored beside ``state`` for the small partial indexes:
#: 0 terminal, 1 pending, 2 in flight.
PHASE: dict[OpState, int] = {
    state: (1 if state is _S.PENDING else 2 if state in IN_FLIGHT else 0) for state in OpState
}
PHASE_TERMINAL = 0
PHASE_PENDING = 1
PHASE_IN_FLIGHT = 2
