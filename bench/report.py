"""The benchmark table (terminal) and docs/BENCHMARKS.md (markdown)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from bench.common import Figure
from bench.compare import goal_met, goal_text, targets

_HOW = """\
## How to run

```
make bench                 # creates bench/.venv (lifecycled + persist-queue + huey + py-spy),
                           # runs every section, prints the table and the targets, writes
                           # bench/results/<commit>.json and rewrites this file
BENCH_QUICK=1 make bench   # one repetition, smaller sizes (a few minutes)
make bench BENCH_ARGS='--sections 1,6 --label try'   # some sections only (no docs written)
make bench-compare A=bench/results/before-af6c039.json B=bench/results/<label>.json
                           # each figure's change; flags (and fails on) any > 10 % worse
make bench-profile         # py-spy on the daemon: HTTP submissions and the full lifecycle
BENCH_LIFECYCLED=/path/to/other/checkout bench/.venv/bin/python -m bench.run --label …
                           # measure another lifecycled with this bench (a baseline)
```

`persist-queue`, `huey` and `py-spy` are installed only in `bench/.venv`; they are not
lifecycled dependencies. Work files go to `bench/.work/` (the 1,000,000-op journal is built
once and cached there, ~700 MB). `bench/results/before-af6c039.json` is the baseline of
issue 15 (this bench run against commit af6c039 with `BENCH_LIFECYCLED`; the simulator
always runs from the current checkout).
"""

_METHOD = """\
## What each section measures

All figures are medians of the runs listed, with durability on (WAL, `synchronous=FULL` for
lifecycled and raw sqlite3; the peers at their defaults, which fsync every commit). Absolute
numbers on this VM drift by up to ~25 % between runs (and other work on the machine shows
up in them), so each figure is compared with an anchor measured **in the same run**, and
`bench/compare.py` compares figures with an anchor by that ratio.

0. **Journal op lifecycle** — `bench/journal_bench.py`. Many coroutines each make the
   daemon's journal calls for one op: `submit_guest_op` (what `engine/submit.py` calls: the
   idempotency key, the ownership guard on a managed guest, the desired state) →
   `claim_next` with a node cap (the dispatcher) → `record_upid` → `finish` (the executor),
   one managed guest per op; the anchors do the same four transitions (the UPDATE and the
   history INSERT of each) with plain `sqlite3` on the journal's own schema and indexes: 100
   ops per transaction per stage (`executemany`), and one durable commit per transition.
1. **Durable submissions** — persist-queue `SQLiteAckQueue(auto_commit=True).put`, huey
   `SqliteHuey` task enqueue, one-row INSERT per commit in raw sqlite3, the journal's
   `submit_guest_op` from 32 coroutines on 200 managed guests, and `POST /v1/ops` to the
   real daemon from 32 keep-alive connections (`bench/loadgen.py`, raw asyncio streams so
   the client's CPU share stays small on 2 cores), with the daemon's CPU per submission from
   `/proc/<pid>/stat`. The daemon runs with `--workers 1 --node-cap 1` against a simulator
   whose tasks last an hour, so it dispatches nothing while it is measured: the figure is the
   submission path (auth, validation, node admission, the ownership record in the guest's
   tags, the guarded journal write, the answer).
2. **Full op lifecycle** — the daemon (`--workers 32 --node-cap 256 --poll-interval 0.4s`)
   and `lifecycled sim --task-seconds 0` as separate child processes: N power ops (stop a
   running guest, start a stopped one; one op per guest) are POSTed over HTTP, then
   claimed, checked, POSTed to the simulator, tracked and finished; the rate runs from the
   first submission to the last op's `finished_at`. Daemon CPU per 1,000 ops is the
   daemon process's user + system time (`/proc/<pid>/stat`) over the run — the simulator's
   CPU is its own process's and is shown apart, for scale. The anchor is persist-queue doing
   put → get → ack for one job at a time, in process.
3. **Proxmox requests per op** — 2 s tasks, 1 / 10 / 100 ops at once on distinct guests,
   counted from the simulator's request log (`GET /_sim/requests`), everything from the
   submission on (the ownership record in the guest's tags included). The baseline is a
   client that POSTs the action and then reads `tasks/{upid}/status` every second until the
   task stops (the way common Terraform providers and Ansible modules wait); it does not
   read the guest first, so it is the cheapest possible per-UPID client.
4. **Recover** — a journal with 10,000 ops in flight: half `running` with a UPID whose task
   log the simulator no longer has (`no such task`: decided from the guest's state), half
   `dispatching` without a UPID (the node's task list is searched; nothing found → failed,
   fail-safe). The figure is Recover's own duration from `/v1/status`.
5. **1,000,000 terminal ops** (four history rows each, ~700 MB): seconds from spawning
   `lifecycled run` to `/readyz` answering 200, RSS once ready, and the CPU the idle daemon
   uses (from `/proc/<pid>/stat`).
6. **Task end → op terminal** — the daemon with its default settings (poll interval,
   workers, …; only the node cap raised so that every op is in flight at once) and 40 power
   ops (12 quick) submitted together on distinct guests, their tasks lasting 0.5 s to 70 s
   in turn (a simulator fault per guest sets each length). Per op: the op's terminal history
   entry (`GET /v1/ops/{id}`) minus its task's end (the simulator's `ended_at` in
   `GET /_sim/state`, to the microsecond). The target is one poll interval.
"""

_PROFILE = """\
## Profile (af6c039)

(filled in from `make bench-profile`)
"""


_FINDINGS = """\
## What the profiles say (py-spy, `bench/.venv/bin/py-spy record --gil`)

- **Journal lifecycle.** The original journal (one `BEGIN … COMMIT` per write under a lock,
  one thread hop per statement) did ~300 ops/s here with 128 callers; group commit with the
  whole batch in one hop does 4,000–5,800. What is left per op: ~12 statements in SQLite's
  thread (load, guarded UPDATE touching 6–7 indexes, history INSERT, per transition) and
  futures/wake-ups on the event loop — and both halves share the GIL, so they do not overlap
  much on 2 cores: with CPython's default 5 ms GIL switch interval the SQLite thread could
  wait that long for the GIL after each statement while the loop was busy, so
  `lifecycled run` sets 1 ms (~30 % more journal throughput; the journal figures here run
  with it too). The raw anchor runs 8 `executemany` calls per 100 ops in C. The ratio moves
  between ~0.3× and ~0.55× from run to run (CPU-bound, while the anchor is fsync-bound).
- **HTTP submissions.** ~340 µs of daemon CPU per request on a quiet machine (~600 µs when the
  VM's CPU is slow): ~30 % aiohttp/asyncio request handling, ~15 % node admission (a journal
  read per submission, `engine/node.py`), ~12 % the ownership-guarded journal unit (it loads
  the guest row including its config snapshot JSON), ~10 % JSON parsing and serialisation, the
  rest middlewares and validation. The peer enqueues in process, with no HTTP at all; 0.8× of
  it would need ~180 µs per request end to end. Candidate cuts outside the journal: admit from
  a cached node state, load only the guest columns the guard needs.
- **Full lifecycle.** ~2 ms of daemon CPU per op (one HTTP request in, two out —
  `status/current` and the POST — a share of a task list, five journal writes), and the
  simulator (Python, same 2 cores) serves every Proxmox request; the peer's cycle is three
  local commits. Fixed on the way: the claim query counted a node's in-flight ops once per
  pending candidate (quadratic: 2,000 pending ops made the daemon ~10× slower).
- **Requests per op.** lifecycled reads the guest before acting (the baseline does not) and
  looks at a young task every 0.5 s, so a lone 2 s op costs 6 requests against the 1 s
  poller's 3; batching wins from a few dozen ops in flight (one task list per node per tick,
  a Check of one `status/current` for power actions).
- **Recover** reads each node's task list (paged) and live guest lists once (it was one or two
  requests per op: ~11 s for 10,000 ops). **Idle CPU** on a 1,000,000-op journal was ~3 %
  (a full `GROUP BY state` count every 2 s for the gauges); the gauges now read partial
  indexes only.
"""


def _fmt(value: float, unit: str) -> str:
    if unit in ("s", "req/op", "%", "MiB", "s/1,000 ops"):
        return f"{value:,.2f}"
    return f"{value:,.0f}"


def _ratio(fig: Figure, figures: Sequence[Figure]) -> float | None:
    if fig.anchor is None:
        return None
    for other in figures:
        if other.key == fig.anchor:
            return fig.median / other.median if other.median else None
    return None


def figure_docs(figures: Sequence[Figure]) -> list[dict[str, Any]]:
    """The figures as ``bench/results/*.json`` holds them (what bench/compare.py reads)."""
    return [
        {
            "key": fig.key,
            "section": fig.section,
            "name": fig.name,
            "unit": fig.unit,
            "runs": list(fig.runs),
            "median": fig.median,
            "higher_is_better": fig.higher_is_better,
            "anchor": fig.anchor,
            "ratio": _ratio(fig, figures),
            "goal": list(fig.goal) if fig.goal is not None else None,
            "target": fig.target,
            "note": fig.note,
        }
        for fig in figures
    ]


def results_json(
    figures: Sequence[Figure],
    machine: dict[str, str],
    *,
    source: dict[str, str],
    label: str,
    quick: bool,
    runs: int,
    seconds: float,
) -> dict[str, Any]:
    """One run's results (``bench/results/<label>.json``)."""
    return {
        "label": label,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "lifecycled": source,
        "quick": quick,
        "runs": runs,
        "seconds": round(seconds, 1),
        "machine": machine,
        "figures": figure_docs(figures),
    }


def _status(met: bool | None) -> str:
    return "" if met is None else ("met" if met else "MISSED")


def _rows(figures: Sequence[Figure]) -> list[tuple[str, str, str, str, str, str, str]]:
    rows = []
    for fig, doc in zip(figures, figure_docs(figures), strict=True):
        ratio = doc["ratio"]
        anchor = next((f.name for f in figures if f.key == fig.anchor), "")
        rows.append(
            (
                fig.section,
                fig.name,
                f"{_fmt(fig.median, fig.unit)} {fig.unit}",
                " / ".join(_fmt(v, fig.unit) for v in fig.runs),
                f"{ratio:.2f}× {anchor}" if ratio is not None else "",
                goal_text(doc),
                _status(goal_met(doc)),
            )
        )
    return rows


def render_table(figures: Sequence[Figure]) -> str:
    """A plain-text table for the terminal."""
    lines = []
    section = None
    for sec, name, median, _runs, ratio, goal, status in _rows(figures):
        if sec != section:
            lines.append(f"\n{sec}")
            section = sec
        ratio_text = ratio.split(" ", 1)[0] if ratio else ""
        verdict = f"  goal {goal}: {status}" if goal else ""
        lines.append(f"  {name:<66} {median:>18} {ratio_text:>8}{verdict}")
    return "\n".join(lines)


def _target_rows(
    figures: Sequence[Figure], before: dict[str, Any] | None
) -> list[tuple[str, str, str, str, str]]:
    now = {"figures": figure_docs(figures)}
    return [
        (row.target, row.before, row.now, row.goal, _status(row.met))
        for row in targets(now, before)
    ]


def render_targets(
    figures: Sequence[Figure], before: dict[str, Any] | None, *, before_label: str
) -> str:
    """Issue 15's targets: figure | before | now | target | met?"""
    rows = _target_rows(figures, before)
    if not rows:
        return ""
    head = ("figure", f"before ({before_label})" if before else "before", "now", "target", "met?")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(5)]
    lines = ["\ntargets (issue 15)"]
    lines += [
        "  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        for row in [head, *rows]
    ]
    return "\n".join(lines)


def render_markdown(
    figures: Sequence[Figure],
    machine: dict[str, str],
    *,
    quick: bool,
    runs: int,
    seconds: float,
    source: dict[str, str],
    before: dict[str, Any] | None,
    before_label: str,
) -> str:
    """docs/BENCHMARKS.md."""
    out = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`bench/run.py`); do not edit by hand — rerun it.",
        f"Last run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{'BENCH_QUICK=1, ' if quick else ''}medians of {runs}, {seconds:.0f} s in all, "
        f"lifecycled {source['commit']}.",
        "",
        "## Targets (issue 15)",
        "",
        f"Before: `bench/results/{before_label}.json`"
        + (
            f" ({'BENCH_QUICK=1, ' if before.get('quick') else ''}lifecycled "
            f"{before['lifecycled']['commit']}, {before['at']})."
            if before
            else " (not found)."
        ),
        "",
        "| figure | before | now | target | met? |",
        "|---|---:|---:|---|---|",
        *(f"| {' | '.join(row)} |" for row in _target_rows(figures, before)),
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in machine.items()),
        "",
        "## Results",
        "",
    ]
    section = None
    for sec, name, median, run_values, ratio, goal, status in _rows(figures):
        if sec != section:
            out += [
                "",
                f"### {sec}",
                "",
                "| figure | median | runs | ratio | goal | |",
                "|---|---:|---|---|---|---|",
            ]
            section = sec
        out.append(f"| {name} | {median} | {run_values} | {ratio} | {goal} | {status} |")
    notes = [f"- **{f.name}**: {f.note}" for f in figures if f.note]
    if notes:
        out += ["", "Notes (request mix of each level; latency by task length):", "", *notes]
    out += ["", _PROFILE, _FINDINGS, _HOW, _METHOD]
    return "\n".join(out) + "\n"
