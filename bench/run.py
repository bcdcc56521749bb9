"""``make bench``: every figure of docs/BENCHMARKS.md in one run, as ratios against anchors
measured in the same run on the same machine (absolute figures drift ~25 % between runs
here; ratios taken together do not).

Run with ``bench/.venv/bin/python -m bench.run`` (``BENCH_QUICK=1``: one repetition and
smaller sizes). Prints the table and the targets of issue 15, writes the figures as JSON to
``bench/results/<label>.json`` and, for a full run of this checkout, docs/BENCHMARKS.md.

Options: ``--label NAME`` (default: the measured commit, ``-quick`` for a quick run),
``--sections 0,1,…`` (only those; no docs written), ``--before FILE`` (the JSON the targets
table's "before" column comes from; default ``bench/results/before-af6c039.json``),
``--no-docs``, ``--render FILE`` (write docs/BENCHMARKS.md from a saved results JSON, no
run). ``BENCH_LIFECYCLED=<tree>`` measures the lifecycled in another source tree
(see ``bench/__init__.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import MEASURED_SOURCE, daemon_bench, journal_bench, peers
from bench.common import QUICK, ROOT, Figure, machine, measured, repeat
from bench.report import (
    figures_from_docs,
    render_markdown,
    render_table,
    render_targets,
    results_json,
)

WORK = Path(os.environ.get("BENCH_WORK", ROOT / "bench" / ".work"))
RESULTS = ROOT / "bench" / "results"
BEFORE = RESULTS / "before-af6c039.json"
RUNS = 1 if QUICK else 3


def _size(full: int, quick: int) -> int:
    return quick if QUICK else full


def _log(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _measure(label: str, fn: Callable[[], float], runs: int = RUNS) -> tuple[float, ...]:
    _log(label)
    found = repeat(fn, runs)
    _log(f"  → {', '.join(f'{v:,.0f}' for v in found)}")
    return found


S0 = "0. journal op lifecycle (submit → claim → UPID → finish), ops/s"
S1 = "1. durable submissions/s"
S2 = "2. full op lifecycle (HTTP submit → … → finish; 0 s tasks)"
S3 = "3. Proxmox API requests per op (2 s tasks)"
S6 = "6. task end → op terminal state (default settings, tasks of mixed lengths)"


def section0() -> list[Figure]:
    path = WORK / "s0.sqlite3"
    n = _size(20_000, 5_000)
    grouped = _measure(
        "raw sqlite3, 100 ops per transaction", lambda: journal_bench.raw_lifecycle_grouped(path, n)
    )
    per = _measure(
        "raw sqlite3, commit per transition",
        lambda: journal_bench.raw_lifecycle_per_transition(path, _size(1_500, 400)),
    )
    ours = _measure(
        "journal lifecycle (the daemon's calls), 128 callers",
        lambda: journal_bench.journal_lifecycle(path, _size(10_000, 3_000), callers=128),
    )
    return [
        Figure(
            key="s0.raw_grouped",
            reference=True,
            section=S0,
            name="raw sqlite3, 100 ops/transaction/stage",
            unit="ops/s",
            runs=grouped,
        ),
        Figure(
            key="s0.raw_per_transition",
            reference=True,
            section=S0,
            name="raw sqlite3, one commit per transition",
            unit="ops/s",
            runs=per,
        ),
        Figure(
            key="s0.journal",
            section=S0,
            name="lifecycled journal (submit_guest_op, claim, UPID, finish), 128 callers",
            unit="ops/s",
            runs=ours,
            anchor="s0.raw_grouped",
            goal=(0.5, "ratio"),
            target="journal lifecycle vs raw sqlite3 group commit",
        ),
        Figure(
            key="s0.journal_vs_per_transition",
            section=S0,
            name="lifecycled journal vs one commit per transition",
            unit="ops/s",
            runs=ours,
            anchor="s0.raw_per_transition",
        ),
    ]


def section1_local() -> list[Figure]:
    path = WORK / "s1.sqlite3"
    ceiling = _measure(
        "raw sqlite3 one-row commits",
        lambda: journal_bench.raw_one_row_commits(path, _size(4_000, 1_000)),
    )
    pq = _measure(
        "persist-queue put",
        lambda: peers.persist_queue_enqueue(WORK / "pq", _size(5_000, 1_500)),
    )
    huey = _measure("huey enqueue", lambda: peers.huey_enqueue(WORK / "huey", _size(5_000, 1_500)))
    direct = _measure(
        "journal submit_guest_op, 32 callers",
        lambda: journal_bench.journal_submissions(path, _size(10_000, 3_000), callers=32),
    )
    return [
        Figure(
            key="s1.persist_queue_put",
            reference=True,
            section=S1,
            name="persist-queue SQLiteAckQueue.put",
            unit="/s",
            runs=pq,
        ),
        Figure(
            key="s1.huey",
            reference=True,
            section=S1,
            name="huey SqliteHuey enqueue",
            unit="/s",
            runs=huey,
            anchor="s1.persist_queue_put",
        ),
        Figure(
            key="s1.raw_one_row",
            reference=True,
            section=S1,
            name="raw sqlite3, one row per commit (ceiling without batching)",
            unit="/s",
            runs=ceiling,
            anchor="s1.persist_queue_put",
        ),
        Figure(
            key="s1.journal_submit_guest_op",
            section=S1,
            name="lifecycled journal submit_guest_op (managed guests), 32 callers",
            unit="/s",
            runs=direct,
            anchor="s1.persist_queue_put",
        ),
    ]


def section1_http() -> list[Figure]:
    _log("HTTP submissions, 32 clients")
    found = asyncio.run(
        daemon_bench.http_submissions(WORK / "http", runs=RUNS, n=_size(6_000, 2_000))
    )
    _log(", ".join(f"  → {r.rate:,.0f}/s, {r.daemon_cpu_us:,.0f} µs daemon CPU" for r in found))
    return [
        Figure(
            key="s1.http",
            section=S1,
            name="lifecycled POST /v1/ops over HTTP, 32 clients",
            unit="/s",
            runs=tuple(r.rate for r in found),
            anchor="s1.persist_queue_put",
            goal=(0.6, "ratio"),
            target="HTTP submissions vs persist-queue put",
        ),
        Figure(
            key="s1.http_daemon_cpu",
            section=S1,
            name="daemon CPU per HTTP submission",
            unit="µs",
            runs=tuple(r.daemon_cpu_us for r in found),
        ),
    ]


def section2() -> list[Figure]:
    cycle = _measure(
        "persist-queue put/get/ack cycle",
        lambda: peers.persist_queue_cycle(WORK / "pq2", _size(2_000, 600)),
    )
    _log("lifecycle against the simulator")
    found = asyncio.run(daemon_bench.lifecycle(WORK / "life", runs=RUNS, n=_size(2_000, 600)))
    for r in found:
        _log(
            f"  → {r.rate:,.0f}/s, daemon {r.daemon_cpu_per_1000:.2f} s,"
            f" simulator {r.sim_cpu_per_1000:.2f} s CPU per 1,000 ops"
        )
    return [
        Figure(
            key="s2.persist_queue_cycle",
            reference=True,
            section=S2,
            name="persist-queue put → get → ack, one at a time",
            unit="/s",
            runs=cycle,
        ),
        Figure(
            key="s2.lifecycle",
            section=S2,
            name="lifecycled daemon + simulator, all over loopback HTTP",
            unit="/s",
            runs=tuple(r.rate for r in found),
            anchor="s2.persist_queue_cycle",
            goal=(1.3, "ratio"),
        ),
        Figure(
            key="s2.daemon_cpu_per_1000",
            section=S2,
            name="daemon CPU per 1,000 ops (simulator excluded)",
            unit="s/1,000 ops",
            runs=tuple(r.daemon_cpu_per_1000 for r in found),
            goal=(1.0, "max"),
            target="daemon CPU per 1,000 full ops (simulator excluded)",
        ),
        Figure(
            key="s2.sim_cpu_per_1000",
            reference=True,
            section=S2,
            name="simulator CPU per 1,000 ops (for scale; not lifecycled's)",
            unit="s/1,000 ops",
            runs=tuple(r.sim_cpu_per_1000 for r in found),
        ),
    ]


_REQUEST_TARGETS = {
    1: (3.0, "Proxmox requests per op, 1 in flight (2 s task)"),
    100: (1.4, "Proxmox requests per op, 100 in flight"),
}


def section3() -> list[Figure]:
    _log("Proxmox requests per op")
    counts = asyncio.run(daemon_bench.requests_per_op(WORK / "requests"))
    figures = []
    for c in counts:
        _log(f"  {c.concurrency}: lifecycled {c.lifecycled:.2f}, baseline {c.baseline:.2f}")
        goal, target = _REQUEST_TARGETS.get(c.concurrency, (None, None))
        key = f"{c.concurrency}.warm" if c.warm else f"{c.concurrency}"
        when = ", task durations learned" if c.warm else ""
        if target is not None:
            target += when
        figures.append(
            Figure(
                key=f"s3.poller.{key}",
                reference=True,
                section=S3,
                name=f"per-UPID 1 s poller, {c.concurrency} in flight{when}",
                unit="req/op",
                runs=(c.baseline,),
            )
        )
        figures.append(
            Figure(
                key=f"s3.lifecycled.{key}",
                section=S3,
                name=f"lifecycled, {c.concurrency} in flight{when}",
                unit="req/op",
                runs=(c.lifecycled,),
                anchor=f"s3.poller.{key}",
                by_ratio=False,
                goal=(goal, "max") if goal is not None else None,
                target=target,
                note=", ".join(f"{k} ×{v}" for k, v in sorted(c.lifecycled_by_endpoint.items())),
            )
        )
        figures.append(
            Figure(
                key=f"s3.record.{key}",
                section=S3,
                name=f"of it the ownership record, {c.concurrency} in flight{when}",
                unit="req/op",
                runs=(c.record,),
                by_ratio=False,
            )
        )
        figures.append(
            Figure(
                key=f"s3.rest.{key}",
                section=S3,
                name=f"lifecycled less the record, {c.concurrency} in flight{when}",
                unit="req/op",
                runs=(c.lifecycled - c.record,),
                anchor=f"s3.poller.{key}",
                by_ratio=False,
            )
        )
    return figures


#: Task lengths of section 6, in turn per op: mostly power-action lengths, a few long tasks
#: (a slow guest shutdown) that cross the tracker's slower cadences.
LATENCY_DURATIONS = (0.5, 1.0, 1.5, 2.0, 2.0, 3.0, 5.0, 8.0, 20.0, 70.0)
LATENCY_DURATIONS_QUICK = (0.5, 1.0, 2.0, 3.0, 5.0, 8.0)


def _percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, math.ceil(len(ordered) * pct / 100))
    return ordered[rank - 1]


def section6() -> list[Figure]:
    durations = LATENCY_DURATIONS_QUICK if QUICK else LATENCY_DURATIONS
    n = len(durations) * (2 if QUICK else 4)
    poll = daemon_bench.default_poll_interval()
    _log(f"task end → op terminal: {n} ops, tasks of {', '.join(f'{d:g}' for d in durations)} s")
    pairs = asyncio.run(daemon_bench.task_end_latency(WORK / "latency", n=n, durations=durations))
    found = [latency for _, latency in pairs]
    _log(
        f"  → p50 {statistics.median(found):.2f} s, p95 {_percentile(found, 95):.2f} s,"
        f" max {max(found):.2f} s"
    )
    by_length: dict[float, list[float]] = {}
    for seconds, latency in pairs:
        by_length.setdefault(seconds, []).append(latency)
    note = "; ".join(
        f"{d:g} s tasks: {', '.join(f'{v:.2f}' for v in sorted(vs))} s"
        for d, vs in sorted(by_length.items())
    )
    return [
        Figure(
            key="s6.latency_p50",
            section=S6,
            name=f"p50 over {n} ops",
            unit="s",
            runs=(statistics.median(found),),
        ),
        Figure(
            key="s6.latency_p95",
            section=S6,
            name=f"p95 over {n} ops (poll interval {poll:g} s)",
            unit="s",
            runs=(_percentile(found, 95),),
            goal=(poll, "max"),
            target="p95 time from a task's end to its op's terminal state, default settings",
            note=note,
        ),
        Figure(
            key="s6.latency_max", section=S6, name=f"max over {n} ops", unit="s", runs=(max(found),)
        ),
    ]


def section4() -> list[Figure]:
    _log("Recover with 10,000 ops in flight")
    secs = asyncio.run(daemon_bench.recover(WORK / "recover", runs=RUNS))
    _log(f"  → {', '.join(f'{v:.2f}' for v in secs)}")
    return [
        Figure(
            key="s4.recover",
            section="4. Recover",
            name="10,000 in-flight ops (5,000 with a UPID, 5,000 without)",
            unit="s",
            runs=tuple(secs),
            goal=(5.0, "max"),
        )
    ]


def section5() -> list[Figure]:
    idle = 10.0 if QUICK else 30.0
    _log(f"1,000,000-op journal: startup, RSS, {idle:g} s idle")
    found = asyncio.run(
        daemon_bench.footprint(WORK / "big", runs=RUNS, n_ops=1_000_000, idle_seconds=idle)
    )
    for f in found:
        _log(
            f"  → ready {f.ready_seconds:.2f}s, rss {f.rss_mib:.1f} MiB, cpu {f.idle_cpu_percent:.2f}%"
        )
    s = "5. 1,000,000 terminal ops in the journal"
    return [
        Figure(
            key="s5.ready",
            section=s,
            name="start to /readyz (open + Recover + ready)",
            unit="s",
            runs=tuple(f.ready_seconds for f in found),
        ),
        Figure(
            key="s5.rss",
            section=s,
            name="RSS once ready",
            unit="MiB",
            runs=tuple(f.rss_mib for f in found),
            goal=(100.0, "max"),
        ),
        Figure(
            key="s5.idle_cpu",
            section=s,
            name=f"idle CPU over {idle:g} s",
            unit="%",
            runs=tuple(f.idle_cpu_percent for f in found),
            goal=(1.0, "max"),
            tolerance=0.1,  # a few clock ticks over the idle period
        ),
    ]


#: Sections in running order (section 1's anchors come first).
SECTIONS: dict[str, Callable[[], list[Figure]]] = {
    "0": section0,
    "1": lambda: section1_local() + section1_http(),
    "2": section2,
    "3": section3,
    "6": section6,
    "4": section4,
    "5": section5,
}


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--label", help="results file name (bench/results/<label>.json)")
    parser.add_argument("--sections", help="comma-separated sections to run (default: all)")
    parser.add_argument("--before", type=Path, help="results JSON of the 'before' column")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/BENCHMARKS.md")
    parser.add_argument(
        "--render", type=Path, help="write docs/BENCHMARKS.md from a saved results JSON; no run"
    )
    return parser.parse_args(argv)


def _load(path: Path) -> dict[str, Any] | None:
    try:
        loaded: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return loaded


def _write_docs(data: dict[str, Any], before_path: Path) -> Path:
    out = ROOT / "docs" / "BENCHMARKS.md"
    out.write_text(
        render_markdown(
            figures_from_docs(data["figures"]),
            data["machine"],
            quick=bool(data["quick"]),
            runs=int(data["runs"]),
            seconds=float(data["seconds"]),
            source=data["lifecycled"],
            before=_load(before_path),
            before_label=before_path.stem,
            at=str(data["at"]),
        )
    )
    return out


def main(argv: list[str] | None = None) -> int:
    args = _args(sys.argv[1:] if argv is None else argv)
    before_path = args.before or BEFORE
    if args.render is not None:
        saved = _load(args.render)
        if saved is None:
            print(f"no results file {args.render}")
            return 2
        print(f"wrote {_write_docs(saved, before_path).relative_to(ROOT)} from {args.render}")
        return 0
    chosen = list(SECTIONS) if args.sections is None else args.sections.split(",")
    unknown = [c for c in chosen if c not in SECTIONS]
    if unknown:
        print(f"unknown section(s): {', '.join(unknown)}; one of {', '.join(SECTIONS)}")
        return 2
    source = measured()
    label = args.label or source["commit"].replace("+", "-") + ("-quick" if QUICK else "")
    _log(f"measuring lifecycled {source['commit']} from {source['source']} as '{label}'")
    WORK.mkdir(parents=True, exist_ok=True)
    for stale in ("s0.sqlite3", "s1.sqlite3"):
        (WORK / stale).unlink(missing_ok=True)
    started = time.perf_counter()
    figures: list[Figure] = []
    for name, section in SECTIONS.items():
        if name in chosen:
            figures += section()
    elapsed = time.perf_counter() - started
    info = machine()
    before = _load(before_path)
    print(render_table(figures))
    print(render_targets(figures, before, before_label=before_path.stem, quick=QUICK))
    data = results_json(
        figures, info, source=source, label=label, quick=QUICK, runs=RUNS, seconds=elapsed
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_json = RESULTS / f"{label}.json"
    out_json.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print(f"\nwrote {out_json.relative_to(ROOT)}")
    if not args.no_docs and args.sections is None and MEASURED_SOURCE is None:
        out = _write_docs(data, before_path)
        print(f"wrote {out.relative_to(ROOT)} ({elapsed:.0f} s; medians of {RUNS})")
    for folder in ("http", "life", "requests", "recover", "latency"):
        shutil.rmtree(WORK / folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
