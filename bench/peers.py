"""The peers: persist-queue's ``SQLiteAckQueue`` and huey's ``SqliteHuey``, at their defaults.

Both are installed only in ``bench/.venv`` (``make bench``); they are not lifecycled
dependencies. Both fsync per commit and batch nothing (reference/sqlite-performance.md §7).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

PAYLOAD: dict[str, Any] = {
    "action": "start",
    "vmid": 101,
    "kind": "qemu",
    "node": "pve1",
    "params": {},
    "idempotency_key": "k",
}


def _fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def persist_queue_enqueue(folder: Path, n: int) -> float:
    """``SQLiteAckQueue.put`` (default durability: auto_commit, one commit per put); per s."""
    import persistqueue

    queue = persistqueue.SQLiteAckQueue(str(_fresh(folder)), auto_commit=True)
    started = time.perf_counter()
    for i in range(n):
        queue.put({**PAYLOAD, "idempotency_key": f"k{i}"})
    elapsed = time.perf_counter() - started
    del queue
    return n / elapsed


def persist_queue_cycle(folder: Path, n: int) -> float:
    """One job at a time: ``put`` → ``get`` → ``ack`` (each durable); cycles per s."""
    import persistqueue

    queue = persistqueue.SQLiteAckQueue(str(_fresh(folder)), auto_commit=True)
    started = time.perf_counter()
    for i in range(n):
        queue.put({**PAYLOAD, "idempotency_key": f"k{i}"})
        item = queue.get(block=False)
        queue.ack(item)
    elapsed = time.perf_counter() - started
    del queue
    return n / elapsed


def huey_enqueue(folder: Path, n: int) -> float:
    """``SqliteHuey`` task enqueue (its default storage settings); per s."""
    from huey import SqliteHuey

    huey = SqliteHuey("bench", filename=str(_fresh(folder) / "huey.db"))

    @huey.task()  # type: ignore[untyped-decorator]  # huey ships no type hints
    def lifecycle(payload: dict[str, Any]) -> None:  # pragma: no cover - never executed here
        return None

    started = time.perf_counter()
    for i in range(n):
        lifecycle({**PAYLOAD, "idempotency_key": f"k{i}"})
    elapsed = time.perf_counter() - started
    return n / elapsed
