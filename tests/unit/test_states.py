"""The op state machine and the journal's verb rules (pure: no I/O)."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from lifecycled.domain.states import IN_FLIGHT, REARMABLE, TERMINAL, TRANSITIONS, OpState, is_legal
from lifecycled.journal.rules import PHASE, RULES, Verb, refusal

ALL_STATES = list(OpState)


def test_terminal_and_in_flight_partition_the_states() -> None:
    """Every state is exactly one of pending, in flight or terminal."""
    for state in OpState:
        kinds = [state is OpState.PENDING, state in IN_FLIGHT, state in TERMINAL]
        assert kinds.count(True) == 1, state


def test_only_the_spec_transitions_are_legal() -> None:
    """is_legal accepts exactly the transitions of SPEC §1."""
    s = OpState
    spec = {
        (s.PENDING, s.DISPATCHING),
        (s.PENDING, s.CANCELLED),
        *((src, dst) for src in IN_FLIGHT for dst in (s.SUCCEEDED, s.FAILED, s.DEAD_LETTERED)),
        *((src, s.PENDING) for src in IN_FLIGHT),
        (s.DISPATCHING, s.RUNNING),
        *((src, s.PENDING) for src in REARMABLE),
    }
    legal = {(a, b) for a, b in itertools.product(OpState, OpState) if is_legal(a, b)}
    assert legal == spec


def test_succeeded_is_final() -> None:
    """Nothing leaves succeeded: its idempotency key is applied for good."""
    assert TRANSITIONS[OpState.SUCCEEDED] == frozenset()


def test_every_verb_rule_stays_inside_the_state_machine() -> None:
    """Each (source, target) a verb accepts is legal, or a declared same-state annotation."""
    for verb, rule in RULES.items():
        for src, dst in itertools.product(rule.sources, rule.targets):
            assert refusal(verb, src, dst) is None
            assert is_legal(src, dst) or (src == dst and rule.annotates), (verb, src, dst)


def test_every_legal_transition_has_a_verb() -> None:
    """No legal transition is unreachable through the journal's verbs."""
    for src, dst in itertools.product(OpState, OpState):
        if is_legal(src, dst):
            assert any(refusal(v, src, dst) is None for v in Verb), (src, dst)


def test_refusals_name_what_the_verb_needs() -> None:
    """A refused verb says what state it requires."""
    assert refusal(Verb.CANCEL, OpState.RUNNING, OpState.CANCELLED) == (
        "only a pending op can be cancelled"
    )
    assert refusal(Verb.FINISH, OpState.PENDING, OpState.SUCCEEDED) is not None
    assert refusal(Verb.RETRY, OpState.SUCCEEDED, OpState.PENDING) is not None


def test_phase_codes_match_the_partial_indexes() -> None:
    """phase is 1 for pending, 2 in flight, 0 terminal (the SQL repeats these literals)."""
    assert PHASE[OpState.PENDING] == 1
    assert {PHASE[s] for s in IN_FLIGHT} == {2}
    assert {PHASE[s] for s in TERMINAL} == {0}


@given(st.lists(st.tuples(st.sampled_from(list(Verb)), st.sampled_from(ALL_STATES)), max_size=60))
def test_no_illegal_transition_is_reachable_through_the_verbs(
    steps: list[tuple[Verb, OpState]],
) -> None:
    """Any sequence of verb attempts from pending only ever makes legal moves."""
    state = OpState.PENDING
    seen_succeeded = False
    for verb, target in steps:
        if refusal(verb, state, target) is not None:
            continue
        assert is_legal(state, target) or (state == target and RULES[verb].annotates)
        if seen_succeeded:
            raise AssertionError(f"{verb} moved a succeeded op")
        state = target
        seen_succeeded = state is OpState.SUCCEEDED


@given(st.sampled_from(list(Verb)), st.sampled_from(ALL_STATES), st.sampled_from(ALL_STATES))
def test_refusal_agrees_with_the_rule_table(verb: Verb, src: OpState, dst: OpState) -> None:
    """refusal() says yes exactly for the sources and targets the rule lists."""
    rule = RULES[verb]
    allowed = src in rule.sources and dst in rule.targets
    assert (refusal(verb, src, dst) is None) == allowed
