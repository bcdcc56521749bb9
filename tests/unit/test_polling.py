"""The tracker's schedule (``domain/polling``): looks at a task when it has likely ended,
learned from history, and never more than one poll interval apart."""

from __future__ import annotations

import itertools
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from lifecycled.domain.polling import (
    BACKOFF_BASE,
    FAILING_MAX,
    GRID,
    MIN_SAMPLES,
    READ_ALLOWANCE,
    READ_BURST,
    READ_RATE,
    Durations,
    after_failure,
    learn,
    likely_ended,
    next_look,
    node_failing,
    promised_tasks,
    proof_due,
    proof_window,
    read_tokens,
)
from lifecycled.domain.upid import Upid

intervals = st.floats(min_value=0.1, max_value=60.0)
ends = st.floats(min_value=0.0, max_value=300.0)
learned = st.none() | st.lists(
    st.floats(min_value=0.01, max_value=600.0), min_size=1, max_size=4, unique=True
).map(lambda ps: Durations(points=tuple(sorted(ps)), samples=MIN_SAMPLES))


def upid(node: str = "pve1", kind: str = "qmstart", n: int = 1) -> Upid:
    return Upid.parse(f"UPID:{node}:{n:08X}:00000001:6419CAF8:{kind}:100:root@pam:")


def looks_until(end: float, durations: Durations | None, poll_interval: float) -> list[float]:
    """The ages of the looks at a task, from tracking's start up to the first one at or past
    ``end``."""
    ages: list[float] = []
    age = 0.0
    while age < end or not ages:
        delay = next_look(age, durations, poll_interval)
        assert 0 < delay <= poll_interval
        age += delay
        ages.append(age)
    return ages


@settings(max_examples=200, database=None, deadline=None)
@given(durations=learned, poll_interval=intervals, end=ends)
def test_an_ended_task_is_noticed_within_one_poll_interval(
    durations: Durations | None, poll_interval: float, end: float
) -> None:
    """For any learned durations and task end, the first look after the end is at most one
    poll interval later (and no two looks are further apart)."""
    ages = looks_until(end, durations, poll_interval)
    assert ages[-1] - end <= poll_interval + 1e-9


def noticed_at(
    end: float,
    durations: Durations | None,
    poll_interval: float,
    lists: list[bool],
    list_gap: float,
) -> float:
    """The age at which a task ending at ``end`` is noticed when its looks are, in turn, task
    lists (``True``) or status reads, a list never showing it ended (the archiver has not
    run) — and, as the tracker does, read instead once :func:`proof_due`."""
    age = 0.0
    read_by = proof_window(poll_interval, after_read=False)
    listed = False
    for look in itertools.islice(itertools.cycle(lists), 100_000):
        left = read_by - age
        delay = next_look(
            age, durations, poll_interval, left=left, at_least=list_gap if listed else 0
        )
        assert 0 <= delay <= min(left, poll_interval) + 1e-9
        assert delay > 0 or proof_due(left)
        age += delay
        listed = look and not proof_due(read_by - age)
        if listed:
            continue  # "RUNNING" in the list: it may have ended, not yet archived
        if age >= end:
            return age
        read_by = age + proof_window(poll_interval, after_read=True)
    return math.inf  # never noticed


@settings(max_examples=300, database=None, deadline=None)
@given(
    durations=learned,
    poll_interval=intervals,
    end=ends,
    lists=st.lists(st.booleans(), min_size=1, max_size=8),
    gap=st.floats(min_value=0.0, max_value=1.0),
)
def test_an_ended_task_is_read_within_one_poll_interval_whatever_lists_say(
    durations: Durations | None, poll_interval: float, end: float, lists: list[bool], gap: float
) -> None:
    """However looks alternate between task lists (which cannot prove an end) and status
    reads, a status read comes at most one poll interval after the task's end — and, once
    a read found it running, early enough to leave READ_ALLOWANCE of it for the read itself
    and the journal write."""
    found = noticed_at(end, durations, poll_interval, lists, gap * poll_interval)
    late = poll_interval if end < poll_interval else poll_interval * (1 - READ_ALLOWANCE)
    assert found - end <= late + 1e-9


@settings(max_examples=200, database=None, deadline=None)
@given(
    points=st.lists(st.floats(min_value=0.1, max_value=10.0), min_size=1, max_size=3, unique=True),
    share=st.floats(min_value=0.0, max_value=1.0),
)
def test_a_task_ending_by_its_learned_median_is_looked_at_once(
    points: list[float], share: float
) -> None:
    """A task that has ended by the learned median is noticed at the first look, exactly
    there (when the median is within one poll interval)."""
    durations = Durations(points=tuple(sorted(points)), samples=MIN_SAMPLES)
    ages = looks_until(share * durations.likely_end, durations, poll_interval=10.0)
    assert ages == [durations.likely_end]


def test_past_the_learned_points_looks_back_off_to_the_poll_interval() -> None:
    """After the last learned point the gaps grow from BACKOFF_BASE up to the poll interval."""
    durations = Durations(points=(2.0, 2.5), samples=10)
    ages = looks_until(20.0, durations, poll_interval=2.0)
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(ages)]
    assert ages[:2] == [2.0, 2.5]
    assert gaps[1:6] == [BACKOFF_BASE, BACKOFF_BASE, 0.5, 1.0, 2.0]
    assert set(gaps[6:]) == {2.0}


def test_without_history_the_cadence_is_fast_while_young_then_the_poll_interval() -> None:
    """No history: 0.5 s looks up to 2 s, 1 s up to 10 s, then the poll interval — also
    for old tasks (never more than one poll interval apart)."""
    assert next_look(0.0, None, 2.0) == 0.5
    assert next_look(5.0, None, 2.0) == 1.0
    assert next_look(30.0, None, 2.0) == 2.0
    assert next_look(3600.0, None, 2.0) == 2.0
    assert next_look(0.0, None, 0.2) == 0.1


def test_learn_takes_median_and_p80_per_node_and_task_type() -> None:
    """Durations are learned per (node, task type), as the median and 80th percentile
    rounded down to the grid plus half a step; a type with too few samples is left out."""
    starts = [upid(n=i) for i in range(1, 11)]
    samples = [(u, 1.0 + i / 10) for i, u in enumerate(starts)]  # 1.0 … 1.9
    samples += [(upid(node="pve2", n=20 + i), 7.25) for i in range(MIN_SAMPLES)]
    samples += [(upid(kind="qmstop", n=40 + i), 3.0) for i in range(MIN_SAMPLES - 1)]
    got = learn(samples)
    assert got[("pve1", "qmstart")] == Durations(points=(1.5, 1.7), samples=10)
    assert got[("pve2", "qmstart")] == Durations(points=(7.3,), samples=MIN_SAMPLES)
    assert ("pve1", "qmstop") not in got


def test_learn_ignores_unusable_samples() -> None:
    """Negative and non-finite durations are not samples."""
    bad = [(upid(n=i), v) for i, v in enumerate([-1.0, math.nan, math.inf], start=1)]
    good = [(upid(n=10 + i), 2.0) for i in range(MIN_SAMPLES - 1)]
    assert learn(bad + good) == {}


@settings(max_examples=200, database=None)
@given(
    steps=st.integers(min_value=0, max_value=3000),
    late=st.floats(min_value=0.0, max_value=GRID * 0.45),
)
def test_learning_from_its_own_detection_times_does_not_creep(steps: int, late: float) -> None:
    """Tasks noticed a little after a learned point teach the same point again."""
    point = round((steps + 0.5) * GRID, 6)
    samples = [(upid(n=i), point + late) for i in range(1, MIN_SAMPLES + 1)]
    assert learn(samples)[("pve1", "qmstart")].points == (point,)


def test_a_point_is_just_after_the_samples_it_comes_from() -> None:
    """Samples just past a grid step give a point just past them (a look that catches tasks
    ending as early as those were noticed), at most one grid step later."""
    samples = [(upid(n=i), 2.02) for i in range(1, MIN_SAMPLES + 1)]
    (point,) = learn(samples)[("pve1", "qmstart")].points
    assert 2.02 < point <= 2.02 + GRID


def test_likely_ended_is_the_median_or_one_poll_interval() -> None:
    """A task has likely ended past its learned median; without history, past one interval."""
    durations = Durations(points=(3.0, 4.0), samples=5)
    assert not likely_ended(2.9, durations, 2.0)
    assert likely_ended(3.0, durations, 2.0)
    assert not likely_ended(1.9, None, 2.0)
    assert likely_ended(2.0, None, 2.0)


def test_failed_reads_back_off_from_the_poll_interval_to_a_cap() -> None:
    """While Proxmox fails, looks double from the poll interval up to FAILING_MAX."""
    assert after_failure(0.5, 1, 2.0) == 4.0
    assert after_failure(0.5, 3, 2.0) == 16.0
    assert after_failure(0.5, 50, 2.0) == FAILING_MAX


@given(
    start=st.floats(min_value=0.0, max_value=READ_BURST),
    gaps=st.lists(st.floats(min_value=0.0, max_value=5.0), min_size=1, max_size=50),
    wanted=st.integers(min_value=0, max_value=50),
)
def test_a_node_never_gets_more_reads_than_its_rate_allows(
    start: float, gaps: list[float], wanted: int
) -> None:
    """Spending every read in hand at each tick, a node gets at most READ_BURST plus
    READ_RATE per elapsed second, and never goes below zero reads in hand."""
    tokens, spent = start, 0
    for gap in gaps:
        tokens = read_tokens(tokens, gap)
        took = min(wanted, math.floor(tokens + 1e-9))
        tokens -= took
        spent += took
        assert tokens >= -1e-9
    assert spent <= start + READ_RATE * sum(gaps) + 1e-6


def test_the_promise_holds_for_36_long_tasks_a_node_at_the_default_poll_interval() -> None:
    """The documented figure: 20 reads a second, each long task read every 1.8 s."""
    assert promised_tasks(2.0) == 36
    assert promised_tasks(10.0) == 180


def test_a_node_is_failing_when_it_does_not_answer_or_answers_5xx() -> None:
    """No answer or a 5xx backs off the node; a 4xx is about the one task."""
    assert node_failing(None) and node_failing(500) and node_failing(596)
    assert not node_failing(400) and not node_failing(403)
