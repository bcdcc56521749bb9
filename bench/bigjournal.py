"""A journal with many terminal ops (and their four history rows each), made fast.

The rows are written with plain ``sqlite3`` into a file created (and migrated) by
``Journal.open``, the way a long-lived journal looks: every op finished, none in flight.
The file is cached in the bench work folder and copied for each run.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time
from pathlib import Path

from lifecycled.journal import Journal

_OPS = (
    "INSERT INTO ops (id, idempotency_key, action, node, kind, vmid, params, origin, actor, "
    "state, attempts, due_at, upid, exitstatus, created_at, updated_at, finished_at, "
    "claimed_at, dispatched) VALUES (?, ?, ?, 'pve1', 'qemu', ?, '{}', 'api', 'api:bench', "
    "'succeeded', 1, ?, ?, 'OK', ?, ?, ?, ?, 1)"
)
_HISTORY = (
    "INSERT INTO op_history (op_id, at, from_state, to_state, reason, attempt, upid) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_ACTIONS = ("start", "shutdown", "stop", "reboot")


async def _create(path: Path) -> None:
    async with await Journal.open(path):
        pass


def build(path: Path, n_ops: int, *, batch: int = 50_000) -> float:
    """Write ``path`` with ``n_ops`` succeeded ops; seconds it took."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    asyncio.run(_create(path))
    started = time.perf_counter()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = OFF")  # building a fixture, not measuring
        t0 = 1_700_000_000.0
        for first in range(1, n_ops + 1, batch):
            ids = range(first, min(first + batch, n_ops + 1))
            ops = []
            history = []
            for i in ids:
                at = t0 + i
                upid = f"UPID:pve1:{i:08X}:{i:08X}:{int(at):08X}:qmstart:{100 + i % 5000}:root@pam!lifecycled:"
                ops.append(
                    (
                        i,
                        f"op-{i}",
                        _ACTIONS[i % 4],
                        100 + i % 5000,
                        at,
                        upid,
                        at,
                        at + 3,
                        at + 3,
                        at + 1,
                    )
                )
                history += [
                    (i, at, None, "pending", "submitted by api:bench", 0, None),
                    (i, at + 1, "pending", "dispatching", "claimed (attempt 1)", 1, None),
                    (i, at + 2, "dispatching", "running", "task started", 1, upid),
                    (i, at + 3, "running", "succeeded", "task finished: OK", 1, upid),
                ]
            conn.execute("BEGIN")
            conn.executemany(_OPS, ops)
            conn.executemany(_HISTORY, history)
            conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return time.perf_counter() - started


def cached(work: Path, n_ops: int) -> Path:
    """The cached big journal for ``n_ops`` (built on first use)."""
    path = work / f"journal-{n_ops}.sqlite3"
    if not path.exists():
        tmp = work / f"journal-{n_ops}.building.sqlite3"
        build(tmp, n_ops)
        tmp.rename(path)
    return path


def copy_of(source: Path, dest: Path) -> Path:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{dest}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(source, dest)
    dest.chmod(0o600)
    return dest
