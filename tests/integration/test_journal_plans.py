"""Hot paths stay on the small partial indexes: their cost does not grow with the journal.

Checked two ways on a journal with many terminal ops: ``EXPLAIN QUERY PLAN`` names the
index, and the number of SQLite VM steps a query takes is the same with 1,000 and with
50,000 terminal ops (a deterministic stand-in for "time independent of journal size").
No planner statistics are gathered: a new or bulk-loaded journal has none.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest_journal import T0, to_state

from lifecycled.domain.states import OpState
from lifecycled.journal import Journal, ops
from lifecycled.journal.op_queries import OPEN_OPS
from lifecycled.journal.ops import OP_COLUMNS

pytestmark = pytest.mark.timeout(60)

_TERMINAL = (
    "INSERT INTO ops (idempotency_key, action, node, kind, vmid, params, origin, actor, state,"
    " attempts, due_at, created_at, updated_at, finished_at)"
    " VALUES (?, 'start', ?, 'qemu', ?, '{}', 'api', 'api', 'succeeded', 1, ?, ?, ?, ?)"
)
_OPEN = (
    "INSERT INTO ops (idempotency_key, action, node, kind, vmid, params, origin, actor, state,"
    " attempts, due_at, created_at, updated_at)"
    " VALUES (?, 'start', ?, 'qemu', ?, '{}', 'api', 'api', ?, 0, ?, ?, ?)"
)


def _journal(path: Path, terminal: int) -> sqlite3.Connection:
    import asyncio

    async def create() -> None:
        async with await Journal.open(path):
            pass

    asyncio.run(create())
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    conn.executemany(
        _TERMINAL,
        ((f"t{i}", f"pve{i % 3}", 100 + i % 900, T0, T0, T0, T0 + i) for i in range(terminal)),
    )
    # A few open ops: pending ones, some blocked behind an in-flight op on their guest.
    conn.executemany(
        _OPEN,
        [(f"p{i}", "pve1", 5000 + i % 4, "pending", T0 + i, T0, T0) for i in range(8)]
        + [(f"r{i}", "pve1", 5000 + i, "running", T0, T0, T0) for i in range(2)],
    )
    conn.execute("COMMIT")
    assert conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'"
    ).fetchone() == (0,)
    return conn


def _hot_queries() -> Iterator[tuple[str, str, tuple[Any, ...], tuple[str, ...]]]:
    """(label, SQL, params, the indexes the plan must use)."""
    for cap, nodes in ((None, None), (3, None), (3, ["pve1", "pve2"])):
        sql, params = ops.claim_query(now=T0 + 100, node_cap=cap, nodes=nodes)
        wanted = ("ops_due", "ops_inflight_vmid") + (("ops_inflight_node",) if cap else ())
        yield f"claim cap={cap} nodes={nodes}", sql, tuple(params), wanted
    # The writer's claim: the full nodes known from its own counts.
    sql, params = ops.claim_query(now=T0 + 100, node_cap=3, nodes=None, full_nodes=["pve2"])
    yield "claim cap=3 full=[pve2]", sql, tuple(params), ("ops_due", "ops_inflight_vmid")
    yield "in_flight", f"SELECT {OP_COLUMNS} FROM ops WHERE phase = 2", (), ("ops_inflight",)
    yield (
        "in_flight(node)",
        f"SELECT {OP_COLUMNS} FROM ops WHERE phase = 2 AND node = ?",
        ("pve1",),
        ("ops_inflight_node",),
    )
    yield (
        "stale_in_flight",
        f"SELECT {OP_COLUMNS} FROM ops WHERE phase = 2 AND updated_at < ?",
        (T0 + 1,),
        ("ops_inflight",),
    )
    yield "pending count", "SELECT count(*) FROM ops WHERE phase = 1", (), ("ops_due",)
    # What every reconcile pass reads (``phase IN (1, 2)`` was a scan of the whole table).
    yield "open ops", OPEN_OPS, (), ("ops_due", "ops_inflight")
    yield "in-flight states", "SELECT state FROM ops WHERE phase = 2", (), ("ops_inflight",)
    yield (
        "by key",
        f"SELECT {OP_COLUMNS} FROM ops WHERE idempotency_key = ?",
        ("p3",),
        ("sqlite_autoindex_ops",),
    )
    yield "by id", ops._SELECT_OP, (5,), ("PRIMARY KEY",)


def _steps(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> int:
    count = 0

    def tick() -> int:
        nonlocal count
        count += 1
        return 0

    conn.set_progress_handler(tick, 1)
    try:
        conn.execute(sql, params).fetchall()
    finally:
        conn.set_progress_handler(None, 1)
    return count


@pytest.fixture(scope="module")
def journals(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[sqlite3.Connection, ...]]:
    small = _journal(tmp_path_factory.mktemp("small") / "j.sqlite3", 1_000)
    large = _journal(tmp_path_factory.mktemp("large") / "j.sqlite3", 50_000)
    try:
        yield small, large
    finally:
        small.close()
        large.close()


@pytest.mark.parametrize(
    ("label", "sql", "params", "wanted"), list(_hot_queries()), ids=lambda v: str(v)[:30]
)
def test_hot_query_uses_its_partial_index_and_does_not_grow(
    journals: tuple[sqlite3.Connection, ...],
    label: str,
    sql: str,
    params: tuple[Any, ...],
    wanted: tuple[str, ...],
) -> None:
    """Each hot query's plan uses the intended index, never a scan of the ops table, and it
    costs the same number of SQLite steps on a journal 50 times larger."""
    small, large = journals
    plan = " | ".join(str(r[3]) for r in large.execute(f"EXPLAIN QUERY PLAN {sql}", params))
    for index in wanted:
        assert index in plan, f"{label}: {plan}"
    assert "SCAN ops" not in plan.replace("SCAN ops USING INDEX ops_", ""), f"{label}: {plan}"
    assert _steps(large, sql, params) == _steps(small, sql, params), label


def test_open_counts_do_not_grow_with_the_journal(
    journals: tuple[sqlite3.Connection, ...],
) -> None:
    """The gauges' every-2-s counts read partial indexes only (see Journal.open_counts)."""
    small, large = journals
    for sql in (
        "SELECT count(*) FROM ops WHERE phase = 1",
        "SELECT state FROM ops WHERE phase = 2",
        "SELECT count(*) FROM ops WHERE state = 'dead_lettered' AND discarded_at IS NULL",
    ):
        assert _steps(large, sql, ()) == _steps(small, sql, ()), sql


async def test_open_counts_count_pending_in_flight_and_the_dlq(tmp_path: Path) -> None:
    """open_counts: pending, dispatching, running and dead letters not discarded."""
    async with await Journal.open(tmp_path / "j.sqlite3") as journal:
        for state, vmid in (
            (OpState.DISPATCHING, 102),
            (OpState.RUNNING, 103),
            (OpState.DEAD_LETTERED, 104),
            (OpState.DEAD_LETTERED, 105),
            (OpState.SUCCEEDED, 106),
            (OpState.PENDING, 101),  # last: to_state claims the oldest pending op
        ):
            await to_state(journal, state, vmid=vmid)
        await journal.discard((await journal.list_dead_letters()).items[0].id, now=T0, reason="x")
        counts = await journal.open_counts()
    assert counts == {
        OpState.PENDING: 1,
        OpState.DISPATCHING: 1,
        OpState.RUNNING: 1,
        OpState.DEAD_LETTERED: 1,
    }


def test_a_persisted_step_updates_one_row_by_its_primary_key(
    journals: tuple[sqlite3.Connection, ...],
) -> None:
    """The guarded UPDATE every state change runs finds its row by id (no index scan)."""
    _, large = journals
    sql = ops._update_sql(("state", "updated_at", "attempts", "claimed_at"))
    plan = " | ".join(
        str(r[3]) for r in large.execute(f"EXPLAIN QUERY PLAN {sql}", (0, 0, 0, 0, 5, "pending"))
    )
    assert "INTEGER PRIMARY KEY" in plan, plan
    assert "SCAN ops" not in plan, plan
