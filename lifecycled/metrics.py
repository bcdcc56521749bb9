"""Every Prometheus metric of lifecycled (SPEC §5 "Metrics"), on an injected registry.

Labels are low-cardinality and bounded: actions, states, error classes, outcomes and endpoint
*templates* come from closed sets; a value outside its set is recorded as ``other``, so a
vmid or a UPID can never become a label value.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable

from prometheus_client import (
    GC_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

import lifecycled
from lifecycled.domain.actions import Action
from lifecycled.domain.classify import ErrorClass
from lifecycled.domain.guests import GuestOrigin, ObservedState
from lifecycled.domain.states import OpState

ACTIONS = frozenset(str(a) for a in Action)
ERROR_CLASSES = frozenset(str(c) for c in ErrorClass) | {"policy"}
OUTCOMES = frozenset(
    {"succeeded", "failed", "dead_lettered", "cancelled", "retried", "enqueued", "skipped"}
)
RECOVER_RESULTS = frozenset(
    {
        "examined",
        "succeeded",
        "failed",
        "dead_lettered",
        "rolled_back",
        "resumed",
        "adopted",
        "unresolved",
    }
)
ORPHAN_KINDS = frozenset({"expected", "anomalous"})
ORIGINS = frozenset(str(o) for o in GuestOrigin)
OBSERVED = frozenset(str(o) for o in ObservedState)
RUN_OUTCOMES = frozenset({"ok", "error", "skipped"})
METHODS = frozenset({"GET", "POST", "PUT", "DELETE"})

_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600)
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)


def bounded(value: str, allowed: Iterable[str]) -> str:
    """``value`` if it belongs to ``allowed``, else ``other``."""
    return value if value in allowed else "other"


class Metrics:
    """The metric objects, registered on ``registry`` (never the global default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.queue_depth = Gauge(
            "lifecycled_queue_depth", "Ops in each state.", ["state"], registry=r
        )
        self.retries = Counter(
            "lifecycled_retries_total",
            "Ops sent back to pending (or dead-lettered) after a retryable failure.",
            ["action", "error_class"],
            registry=r,
        )
        self.commands = Counter(
            "lifecycled_commands_total",
            "Ops that reached an outcome.",
            ["action", "outcome"],
            registry=r,
        )
        self.reconcile_runs = Counter(
            "lifecycled_reconcile_runs_total", "Reconcile passes.", ["outcome"], registry=r
        )
        self.reconcile_commands = Counter(
            "lifecycled_reconcile_commands_total",
            "Convergent ops enqueued (or skipped) by reconcile.",
            ["action", "outcome"],
            registry=r,
        )
        self.recover_ops = Counter(
            "lifecycled_recover_ops_total",
            "In-flight ops examined by Recover and the janitor, by result.",
            ["result"],
            registry=r,
        )
        self.orphans = Counter(
            "lifecycled_orphans_total", "Managed guests found missing.", ["kind"], registry=r
        )
        self.guests = Gauge(
            "lifecycled_guests",
            "Guests by ownership and observed state.",
            ["origin", "observed"],
            registry=r,
        )
        self.config_drift = Gauge(
            "lifecycled_config_drift",
            "Managed guests whose Proxmox config differs from their snapshot (reported, never "
            "corrected).",
            registry=r,
        )
        self.dead_letters = Gauge(
            "lifecycled_dead_letters", "Dead letters awaiting an operator.", registry=r
        )
        self.op_duration = Histogram(
            "lifecycled_op_duration_seconds",
            "Time from submission to a terminal state.",
            ["action"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.pve_requests = Counter(
            "lifecycled_pve_requests_total",
            "Proxmox API requests.",
            ["method", "endpoint", "code"],
            registry=r,
        )
        self.pve_request_duration = Histogram(
            "lifecycled_pve_request_duration_seconds",
            "Proxmox API request latency.",
            ["endpoint"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.journal_commit = Histogram(
            "lifecycled_journal_commit_seconds",
            "Time of each durable journal commit.",
            buckets=_COMMIT_BUCKETS,
            registry=r,
        )
        self.pve_up = Gauge(
            "lifecycled_pve_up",
            "1 while the Proxmox API answers, 0 while calls get no answer (refused, reset, "
            "timed out).",
            registry=r,
        )
        self.recover_duration = Histogram(
            "lifecycled_recover_duration_seconds",
            "Time of each Recover pass (startup).",
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.reconcile_duration = Histogram(
            "lifecycled_reconcile_duration_seconds",
            "Time of each reconcile pass.",
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.build_info = Gauge(
            "lifecycled_build_info",
            "Always 1; the labels say which lifecycled and Python run.",
            ["version", "python"],
            registry=r,
        )
        self.build_info.labels(lifecycled.__version__, platform.python_version()).set(1)
        # process_* (CPU, memory, open files, start time) and python_info, on this registry.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        r.register(GC_COLLECTOR)
        self._endpoints: set[str] = set()
        #: The labelled children of each (method, endpoint, code) already in bounds, so that
        #: a request does not look its labels up again (bounded: the values are).
        self._pve_children: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}
        self._zero_series()

    def _zero_series(self) -> None:
        """Every labelled series at 0 from the start: dashboards and rate() see no gaps."""
        for action in sorted(ACTIONS):
            self.op_duration.labels(action)
            for outcome in sorted(OUTCOMES):
                self.commands.labels(action, outcome)
                self.reconcile_commands.labels(action, outcome)
            for error_class in sorted(ERROR_CLASSES):
                self.retries.labels(action, error_class)
        for result in sorted(RECOVER_RESULTS):
            self.recover_ops.labels(result)
        for kind in sorted(ORPHAN_KINDS):
            self.orphans.labels(kind)
        for outcome in sorted(RUN_OUTCOMES):
            self.reconcile_runs.labels(outcome)
        self.set_guests({})

    # --- recording helpers: every label passes through ``bounded`` ---------------------

    def command(self, action: str, outcome: str) -> None:
        self.commands.labels(bounded(action, ACTIONS), bounded(outcome, OUTCOMES)).inc()

    def retry(self, action: str, error_class: str) -> None:
        self.retries.labels(bounded(action, ACTIONS), bounded(error_class, ERROR_CLASSES)).inc()

    def recover(self, result: str, n: int = 1) -> None:
        self.recover_ops.labels(bounded(result, RECOVER_RESULTS)).inc(n)

    def orphan(self, kind: str) -> None:
        self.orphans.labels(bounded(kind, ORPHAN_KINDS)).inc()

    def reconcile_run(self, outcome: str) -> None:
        self.reconcile_runs.labels(bounded(outcome, RUN_OUTCOMES)).inc()

    def reconcile_command(self, action: str, outcome: str) -> None:
        self.reconcile_commands.labels(bounded(action, ACTIONS), bounded(outcome, OUTCOMES)).inc()

    def op_finished(self, action: str, seconds: float) -> None:
        self.op_duration.labels(bounded(action, ACTIONS)).observe(max(seconds, 0.0))

    def set_queue_depth(self, counts: dict[OpState, int]) -> None:
        for state in OpState:
            self.queue_depth.labels(str(state)).set(counts.get(state, 0))

    def set_guests(self, counts: dict[tuple[str, str], int]) -> None:
        """Every (origin, observed) pair: its count, 0 when there is none."""
        values: dict[tuple[str, str], int] = {
            (o, b): 0 for o in sorted(ORIGINS) for b in sorted(OBSERVED)
        }
        for (origin, observed), n in counts.items():
            key = (bounded(origin, ORIGINS), bounded(observed, OBSERVED))
            values[key] = values.get(key, 0) + n
        for (origin, observed), n in values.items():
            self.guests.labels(origin, observed).set(n)

    def pve_request(self, method: str, endpoint: str, code: str, seconds: float) -> None:
        """The PVE client's request hook. ``endpoint`` must be a template (no ids)."""
        children = self._pve_children.get((method, endpoint, code))
        if children is None:
            children = self._pve_labelled(method, endpoint, code)
        count, duration = children
        count.inc()
        duration.observe(max(seconds, 0.0))

    def _pve_labelled(self, method: str, endpoint: str, code: str) -> tuple[Counter, Histogram]:
        """The request counter's and histogram's children for these values, bounded; kept
        for the next request only when the values were already in bounds (no vmid, no UPID,
        so the cache cannot grow with them)."""
        labels = (
            bounded(method, METHODS),
            endpoint if _is_template(endpoint) else "other",
            _code(code),
        )
        children = (self.pve_requests.labels(*labels), self.pve_request_duration.labels(labels[1]))
        if labels == (method, endpoint, code):
            self._pve_children[labels] = children
        return children

    def journal_committed(self, seconds: float) -> None:
        self.journal_commit.observe(max(seconds, 0.0))


def _is_template(endpoint: str) -> bool:
    # Templates contain only fixed words and {placeholders}: no digits, no UPIDs.
    return (
        len(endpoint) <= 80 and not any(ch.isdigit() for ch in endpoint) and "UPID" not in endpoint
    )


def _code(code: str) -> str:
    return code if (code.isdigit() and len(code) == 3) or code == "error" else "other"
