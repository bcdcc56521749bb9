"""The journal across OS processes: concurrent claimers, and SIGKILL in the middle of writes."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from conftest_journal import T0, request

from lifecycled.domain.states import OpState
from lifecycled.journal import Journal

CLAIMER = r"""
import asyncio, json, sys, time
from pathlib import Path
from lifecycled.domain.states import OpState
from lifecycled.journal import Journal

DB, OUT, READY, GO, WORKERS, NOW = sys.argv[1:7]

async def worker(journal, claims):
    while True:
        op = await journal.claim_next(now=float(NOW))
        if op is None:
            counts = await journal.counts_by_state()
            if counts[OpState.PENDING] == 0:
                return
            await asyncio.sleep(0.001)  # a guest is busy in the other process
            continue
        start = time.monotonic()
        await asyncio.sleep(0.002)  # hold it like a real dispatch: others claim meanwhile
        end = time.monotonic()
        await journal.finish(op.id, OpState.SUCCEEDED, now=float(NOW), reason="done")
        claims.append([op.id, op.guest.vmid, start, end])

async def main():
    async with await Journal.open(DB, create=False) as journal:
        Path(READY).touch()
        while not Path(GO).exists():
            await asyncio.sleep(0.002)
        claims = []
        await asyncio.gather(*(worker(journal, claims) for _ in range(int(WORKERS))))
    Path(OUT).write_text(json.dumps(claims))

asyncio.run(main())
"""

BURST = r"""
import asyncio, itertools, sys
from lifecycled.domain.op import GuestKind, GuestRef, Origin
from lifecycled.domain.states import OpState
from lifecycled.journal import Journal, SubmitRequest

DB, RUN = sys.argv[1:3]
counter = itertools.count()

async def worker(journal, n):
    now = 1_700_000_000.0
    while True:
        i = next(counter)
        req = SubmitRequest(
            idempotency_key=f"{RUN}-{n}-{i}", action="start",
            guest=GuestRef(node="pve1", kind=GuestKind.QEMU, vmid=int(RUN) * 1_000_000 + i),
            params={"i": i}, origin=Origin.API,
        )
        await journal.submit(req, now=now)
        op = await journal.claim_next(now=now + 1)
        if op is None:
            continue
        await journal.record_upid(op.id, f"UPID:pve1:{op.id:08X}", now=now + 2)
        await journal.finish(op.id, OpState.SUCCEEDED, now=now + 3, reason="OK", exitstatus="OK")
        if i % 25 == 0:
            print(i, flush=True)

async def main():
    async with await Journal.open(DB) as journal:
        await asyncio.gather(*(worker(journal, n) for n in range(8)))

asyncio.run(main())
"""

#: History rows an op of the burst has in each state (submit, claim, UPID, finish).
ROWS_FOR_STATE = {
    OpState.PENDING: 1,
    OpState.DISPATCHING: 2,
    OpState.RUNNING: 3,
    OpState.SUCCEEDED: 4,
}


def _run_script(tmp_path: Path, name: str, text: str) -> Path:
    script = tmp_path / name
    script.write_text(text, encoding="utf-8")
    return script


async def _fill(db: Path, count: int) -> None:
    async with await Journal.open(db) as journal:
        for i in range(count):
            await journal.submit(request(f"k{i}", vmid=1000 + i % 250), now=T0)


async def _claim_outcome(db: Path) -> tuple[dict[OpState, int], set[int]]:
    async with await Journal.open(db, create=False) as journal:
        page = await journal.list_ops(limit=1000)
        return await journal.counts_by_state(), {op.attempts for op in page.items}


def test_two_processes_never_claim_the_same_op(tmp_path: Path) -> None:
    """Two processes × 4 coroutines claim 500 ops: each op exactly once, one per guest at a time."""
    db = tmp_path / "j.sqlite3"
    asyncio.run(_fill(db, 500))
    script = _run_script(tmp_path, "claimer.py", CLAIMER)
    go = tmp_path / "go"
    procs = []
    for n in range(2):
        args = [str(db), str(tmp_path / f"out{n}"), str(tmp_path / f"ready{n}"), str(go), "4"]
        procs.append(subprocess.Popen([sys.executable, str(script), *args, str(T0 + 1)]))
    try:
        deadline = time.monotonic() + 30
        while not all((tmp_path / f"ready{n}").exists() for n in range(2)):
            assert time.monotonic() < deadline, "claimer processes did not start"
            time.sleep(0.01)
        go.touch()
        for proc in procs:
            assert proc.wait(timeout=90) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    claims = [json.loads((tmp_path / f"out{n}").read_text()) for n in range(2)]
    ids = [c[0] for part in claims for c in part]
    assert len(ids) == len(set(ids)) == 500
    assert all(len(part) > 0 for part in claims), "one process claimed nothing"
    per_guest: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for part in claims:
        for _op_id, vmid, start, end in part:
            per_guest[vmid].append((start, end))
    for vmid, spans in per_guest.items():
        spans.sort()
        for (_, end_a), (start_b, _) in itertools.pairwise(spans):
            assert end_a <= start_b, f"guest {vmid} had two ops in flight at once"
    counts, attempts = asyncio.run(_claim_outcome(db))
    assert counts[OpState.SUCCEEDED] == 500
    assert attempts == {1}


def test_sigkill_during_a_burst_of_writes_leaves_an_intact_journal(tmp_path: Path) -> None:
    """A writer SIGKILLed mid-burst (three times) leaves a sound file with no half-written op."""
    db = tmp_path / "j.sqlite3"
    script = _run_script(tmp_path, "burst.py", BURST)
    for run in range(1, 4):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(db), str(run)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            progress = 0
            deadline = time.monotonic() + 60
            while progress < 150 and time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line:
                    break
                progress = int(line)
            assert progress >= 150, "the burst did not get going"
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
    asyncio.run(_check_after_crash(db))


async def _check_after_crash(db: Path) -> None:
    """Every op's history matches its state: no half-written op."""
    async with await Journal.open(db, create=False) as journal:
        assert await journal.integrity_check() == ["ok"]
        counts = await journal.counts_by_state()
        total = sum(counts.values())
        assert total > 400
        cursor = None
        checked = 0
        while True:
            page = await journal.list_ops(limit=1000, cursor=cursor)
            for op in page.items:
                history = await journal.history(op.id)
                assert len(history) == ROWS_FOR_STATE[op.state], (op, history)
                assert history[0].from_state is None
                assert history[-1].to_state is op.state
                for a, b in itertools.pairwise(history):
                    assert a.to_state is b.from_state
                if op.state in (OpState.RUNNING, OpState.SUCCEEDED):
                    assert op.upid_text is not None and op.dispatched
                checked += 1
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert checked == total
        # And the journal takes new writes after the crash.
        after = await journal.submit(request("after-crash", vmid=1), now=T0 + 10)
        assert after.op.state is OpState.PENDING
