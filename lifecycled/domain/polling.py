"""When to look at a running task again, learned from how long its kind of task takes.

Pure: durations in, seconds out. A task type's duration on a node is learned from the
journal's history (:func:`learn`): for recent succeeded ops, the time from their UPID being
journaled to their op finishing. A young task is looked at when it has likely ended — the
learned median, then the 80th percentile — and past those ever less often, up to the poll
interval (:func:`next_look`). Without history (fewer than :data:`MIN_SAMPLES` samples) the
cadence is the fixed one: fast while the task is young, then the poll interval.

The promise every schedule keeps: a task that has ended is noticed — its op terminal — at
most one poll interval later. Only a look that could have proved the task ended counts for
it: a status read (or the start of tracking). A task list that shows the task ``RUNNING``
proves nothing: a task that has finished stays listed as running until the node's archiver
notices (reference §4.3). So after each proving look a status read is due within
:func:`proof_window`; no look is planned past it (``left`` in :func:`next_look`), and once it
has come the task is read whatever a list said (:func:`proof_due`). After a status read the
window keeps :data:`READ_ALLOWANCE` of the interval for the next read and the op's journal
write (the task may have ended just after the read was answered).

The promise has a price: one status read per long task every 0.9 × ``poll_interval``. A node
gets at most :data:`READ_RATE` status reads a second, so the promise holds for up to
:func:`promised_tasks` long tasks on a node (36 at the default 2 s); past that it degrades
gracefully (see there) instead of flooding the node's pveproxy.

A sample is a *detection* time: when the daemon noticed the end, a little after the look
that saw it. A learned point is therefore a sample rounded down to a :data:`GRID`, plus half
a grid step: a task noticed on a point teaches the same point again (no creeping up by the
time a status read takes each generation, as long as it takes under half a step), and a task
whose samples sit just past its real end is looked at just after it. A task type that gets
faster is noticed at its old point (at most one poll interval late) until its history ages
out of the window; one that gets slower is missed at its old point and teaches a later one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import attrs

from lifecycled.domain.upid import Upid

#: Samples a (node, task type) needs before its durations are used.
MIN_SAMPLES = 3
#: The quantiles of the learned durations a young task is looked at.
QUANTILES = (0.5, 0.8)
#: Learned points are a multiple of this many seconds plus half of it (see the module text).
GRID = 0.2
#: Shortest wait between two looks once a task is past every learned point.
BACKOFF_BASE = 0.25
#: Longest wait between looks while Proxmox fails to answer.
FAILING_MAX = 60.0
#: Share of the poll interval a status read's proof window leaves for the next read to be
#: answered and the op's terminal state to be journaled.
READ_ALLOWANCE = 0.1
#: How early (seconds) a proving read counts as due: clock arithmetic is not exact.
PROOF_SLACK = 0.001
#: Task status reads per second one node gets at most (a token bucket, :func:`read_tokens`):
#: the tracker's share of the node's pveproxy, whatever the number of tasks running on it.
READ_RATE = 20.0
#: Status reads a node may get at once after a quiet spell (the bucket's depth): two
#: seconds' worth, so tasks started together (their reads come due together) are not held
#: back; the rate over any longer span stays READ_RATE.
READ_BURST = 40.0

#: A task type on a node: (node, UPID type such as ``qmstart``).
TaskKey = tuple[str, str]


@attrs.frozen(kw_only=True)
class Durations:
    """How long one task type usually runs on one node, as ages (seconds since tracking
    began) at which such a task has likely ended, ascending and positive."""

    points: tuple[float, ...]
    samples: int

    @property
    def likely_end(self) -> float:
        """The first point: half of such tasks had been noticed ended by then."""
        return self.points[0]


def key_of(upid: Upid) -> TaskKey:
    return (upid.node, upid.type)


def _quantile(ordered: list[float], q: float) -> float:
    """Nearest-rank quantile of a sorted, non-empty list."""
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


def _on_grid(seconds: float) -> float:
    return round((math.floor(seconds / GRID + 1e-9) + 0.5) * GRID, 6)


def learn(samples: Iterable[tuple[Upid, float]]) -> dict[TaskKey, Durations]:
    """Durations per (node, task type) from ``(UPID, seconds it ran)`` samples; a type with
    fewer than :data:`MIN_SAMPLES` usable samples (finite, not negative) is left out."""
    grouped: dict[TaskKey, list[float]] = {}
    for upid, seconds in samples:
        if math.isfinite(seconds) and seconds >= 0:
            grouped.setdefault(key_of(upid), []).append(seconds)
    learned: dict[TaskKey, Durations] = {}
    for key, values in grouped.items():
        if len(values) < MIN_SAMPLES:
            continue
        values.sort()
        points = sorted({_on_grid(_quantile(values, q)) for q in QUANTILES})
        learned[key] = Durations(points=tuple(points), samples=len(values))
    return learned


def _fixed(age: float, poll_interval: float) -> float:
    """The cadence without history: with the default 2 s, 0.5 s while the task is younger
    than 2 s, 1 s up to 10 s, then the poll interval."""
    if age < 2:
        return max(0.1, min(0.5, poll_interval / 4))
    if age < 10:
        return max(0.1, min(1.0, poll_interval / 2))
    return poll_interval


def next_look(
    age: float,
    durations: Durations | None,
    poll_interval: float,
    *,
    left: float = math.inf,
    at_least: float = 0.0,
) -> float:
    """Seconds from now to the next look at a task tracked for ``age`` seconds (now being a
    look, or the start of tracking).

    ``left``: seconds until a status read of the task is due (see the module text).
    ``at_least``: the shortest wait wanted (the tracker's gap between two task lists of a
    node). Never more than ``poll_interval`` nor ``left`` — not even for ``at_least`` — so
    positive until :func:`proof_due`, then 0."""
    if durations is None:
        wait = _fixed(age, poll_interval)
    else:
        wait = _learned(age, durations, poll_interval)
    return max(min(max(wait, at_least), poll_interval, left), 0.0)


def _learned(age: float, durations: Durations, poll_interval: float) -> float:
    for point in durations.points:
        if point > age:
            return min(point - age, poll_interval)
    # Past every learned point: the task runs longer than usual; back off.
    since = age - durations.points[-1]
    return min(max(since, BACKOFF_BASE), poll_interval)


def proof_window(poll_interval: float, *, after_read: bool) -> float:
    """Seconds from a look that could have proved a task ended to the status read due next.

    After a status read that found it running, the poll interval less
    :data:`READ_ALLOWANCE`. From the start of tracking the whole interval: a read a tenth
    early would find every task about one poll interval long still running and cost it a
    second read, while an end right after tracking began is rare (such a task has mostly
    ended before its UPID is journaled)."""
    return poll_interval * (1 - READ_ALLOWANCE) if after_read else poll_interval


def proof_due(left: float) -> bool:
    """Whether a task whose status read is due in ``left`` seconds must be read now,
    whatever a task list says."""
    return left <= PROOF_SLACK


def read_tokens(tokens: float, elapsed: float) -> float:
    """A node's status reads in hand ``elapsed`` seconds after it had ``tokens``: refilled at
    :data:`READ_RATE`, at most :data:`READ_BURST`."""
    return min(READ_BURST, tokens + max(elapsed, 0.0) * READ_RATE)


def promised_tasks(poll_interval: float) -> int:
    """Long tasks one node can run while each still gets its status read within its proof
    window (see the module text): :data:`READ_RATE` × the window after a read. With the
    default 2 s: 36. Past that the reads are shared oldest-due first, each task read about
    every ``tasks / READ_RATE`` seconds, and an ended task is noticed by then, or by the first
    task list after the node's archiver has filed it (~10 s, reference §4.3), whichever is
    first."""
    return math.floor(READ_RATE * proof_window(poll_interval, after_read=True) + 1e-9)


def node_failing(status: int | None) -> bool:
    """Whether a failed task read says the node itself is not answering (no answer, or a 5xx:
    pveproxy down, overloaded, or the node unreachable through it) rather than something
    about that one task: then every read of the node backs off, not just that task's."""
    return status is None or status >= 500


def likely_ended(age: float, durations: Durations | None, poll_interval: float) -> bool:
    """Whether a task tracked for ``age`` seconds has likely ended (past its learned median;
    without history, older than one poll interval)."""
    return age >= (durations.likely_end if durations is not None else poll_interval)


def after_failure(delay: float, failures: int, poll_interval: float) -> float:
    """The wait before looking again after ``failures`` failed reads in a row (Proxmox did
    not answer): doubling from the poll interval, at most :data:`FAILING_MAX`."""
    return min(max(delay, poll_interval) * 2.0 ** min(failures, 5), FAILING_MAX)
