"""``make bench``: every figure of docs/BENCHMARKS.md in one run, as ratios against anchors
measured in the same run on the same machine (absolute figures drift ~25 % between runs
here; ratios taken together do not).

Run with ``bench/.venv/bin/python -m bench.run`` (``BENCH_QUICK=1``: one repetition and
smaller sizes). Prints the table and writes docs/BENCHMARKS.md.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench import daemon_bench, journal_bench, peers
from bench.common import QUICK, Figure, machine, repeat
from bench.report import render_markdown, render_table

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("BENCH_WORK", ROOT / "bench" / ".work"))
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
        "journal lifecycle, 128 callers",
        lambda: journal_bench.journal_lifecycle(path, _size(10_000, 3_000), callers=128),
    )
    s = "0. journal op lifecycle (submit → claim → UPID → finish), ops/s"
    return [
        Figure(
            section=s, name="raw sqlite3, 100 ops/transaction/stage", unit="ops/s", runs=grouped
        ),
        Figure(section=s, name="raw sqlite3, one commit per transition", unit="ops/s", runs=per),
        Figure(
            section=s,
            name="lifecycled journal, group commit, 128 callers",
            unit="ops/s",
            runs=ours,
            anchor="raw sqlite3, 100 ops/transaction/stage",
            goal=(0.5, "ratio"),
        ),
        Figure(
            section=s,
            name="lifecycled journal vs one commit per transition",
            unit="ops/s",
            runs=ours,
            anchor="raw sqlite3, one commit per transition",
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
        "journal submissions, 32 callers",
        lambda: journal_bench.journal_submissions(path, _size(10_000, 3_000), callers=32),
    )
    s = "1. durable submissions/s"
    return [
        Figure(section=s, name="persist-queue SQLiteAckQueue.put", unit="/s", runs=pq),
        Figure(
            section=s,
            name="huey SqliteHuey enqueue",
            unit="/s",
            runs=huey,
            anchor="persist-queue SQLiteAckQueue.put",
        ),
        Figure(
            section=s,
            name="raw sqlite3, one row per commit (ceiling without batching)",
            unit="/s",
            runs=ceiling,
            anchor="persist-queue SQLiteAckQueue.put",
        ),
        Figure(
            section=s,
            name="lifecycled Journal.submit, 32 callers",
            unit="/s",
            runs=direct,
            anchor="persist-queue SQLiteAckQueue.put",
        ),
    ]


def section1_http() -> list[Figure]:
    _log("HTTP submissions, 32 clients")
    rates = asyncio.run(
        daemon_bench.http_submissions(WORK / "http", runs=RUNS, n=_size(6_000, 2_000))
    )
    _log(f"  → {', '.join(f'{v:,.0f}' for v in rates)}")
    return [
        Figure(
            section="1. durable submissions/s",
            name="lifecycled POST /v1/ops over HTTP, 32 clients",
            unit="/s",
            runs=tuple(rates),
            anchor="persist-queue SQLiteAckQueue.put",
            goal=(0.8, "ratio"),
        )
    ]


def section2() -> list[Figure]:
    cycle = _measure(
        "persist-queue put/get/ack cycle",
        lambda: peers.persist_queue_cycle(WORK / "pq2", _size(2_000, 600)),
    )
    _log("lifecycle against the simulator")
    rates = asyncio.run(daemon_bench.lifecycle(WORK / "life", runs=RUNS, n=_size(2_000, 600)))
    _log(f"  → {', '.join(f'{v:,.0f}' for v in rates)}")
    s = "2. full op lifecycle/s (HTTP submit → … → finish; 0 s tasks)"
    return [
        Figure(
            section=s, name="persist-queue put → get → ack, one at a time", unit="/s", runs=cycle
        ),
        Figure(
            section=s,
            name="lifecycled daemon + simulator, all over loopback HTTP",
            unit="/s",
            runs=tuple(rates),
            anchor="persist-queue put → get → ack, one at a time",
            goal=(1.3, "ratio"),
        ),
    ]


def section3() -> tuple[list[Figure], list[daemon_bench.RequestCounts]]:
    _log("Proxmox requests per op")
    counts = asyncio.run(daemon_bench.requests_per_op(WORK / "requests"))
    s = "3. Proxmox API requests per op (2 s tasks)"
    figures = []
    for c in counts:
        _log(f"  {c.concurrency}: lifecycled {c.lifecycled:.2f}, baseline {c.baseline:.2f}")
        figures.append(
            Figure(
                section=s,
                name=f"per-UPID 1 s poller, {c.concurrency} in flight",
                unit="req/op",
                runs=(c.baseline,),
            )
        )
        figures.append(
            Figure(
                section=s,
                name=f"lifecycled, {c.concurrency} in flight",
                unit="req/op",
                runs=(c.lifecycled,),
                anchor=f"per-UPID 1 s poller, {c.concurrency} in flight",
                goal=(2.2, "max") if c.concurrency == 100 else None,
                note=", ".join(f"{k} ×{v}" for k, v in sorted(c.lifecycled_by_endpoint.items())),
            )
        )
    return figures, counts


def section4() -> list[Figure]:
    _log("Recover with 10,000 ops in flight")
    secs = asyncio.run(daemon_bench.recover(WORK / "recover", runs=RUNS))
    _log(f"  → {', '.join(f'{v:.2f}' for v in secs)}")
    return [
        Figure(
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
            section=s,
            name="start to /readyz (open + Recover + ready)",
            unit="s",
            runs=tuple(f.ready_seconds for f in found),
        ),
        Figure(
            section=s,
            name="RSS once ready",
            unit="MiB",
            runs=tuple(f.rss_mib for f in found),
            goal=(100.0, "max"),
        ),
        Figure(
            section=s,
            name=f"idle CPU over {idle:g} s",
            unit="%",
            runs=tuple(f.idle_cpu_percent for f in found),
            goal=(1.0, "max"),
        ),
    ]


def main() -> int:
    WORK.mkdir(parents=True, exist_ok=True)
    for stale in ("s0.sqlite3", "s1.sqlite3"):
        (WORK / stale).unlink(missing_ok=True)
    started = time.perf_counter()
    figures: list[Figure] = []
    figures += section0()
    figures += section1_local()
    figures += section1_http()
    figures += section2()
    more, _ = section3()
    figures += more
    figures += section4()
    figures += section5()
    elapsed = time.perf_counter() - started
    info = machine()
    print(render_table(figures))
    out = ROOT / "docs" / "BENCHMARKS.md"
    out.write_text(render_markdown(figures, info, quick=QUICK, runs=RUNS, seconds=elapsed))
    print(f"\nwrote {out.relative_to(ROOT)} ({elapsed:.0f} s; medians of {RUNS})")
    for folder in ("http", "life", "requests", "recover"):
        shutil.rmtree(WORK / folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
