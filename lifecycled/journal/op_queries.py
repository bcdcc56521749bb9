"""Op queries: reads over ops and their history, and the journal's maintenance (integrity
check, online backup).

Reads run on the journal's read connection (WAL: beside the writer, each statement on the
latest committed snapshot, so never half of a transaction).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import urllib.parse
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lifecycled.domain.op import HistoryEntry, Op
from lifecycled.domain.states import OpState
from lifecycled.errors import JournalError, NotFound, ValidationError
from lifecycled.journal.ops import (
    HISTORY_COLUMNS,
    OP_COLUMNS,
    OpPage,
    history_from_row,
    op_from_row,
)
from lifecycled.journal.store import Part, translate

MAX_PAGE = 1000
#: UPIDs looked up per statement (SQLite bounds the number of parameters).
_UPID_CHUNK = 400


_OPEN_COUNTS = (
    "SELECT 'pending', count(*) FROM ops WHERE phase = 1"
    " UNION ALL SELECT state, 1 FROM ops WHERE phase = 2"
    " UNION ALL SELECT 'dead_lettered', count(*) FROM ops"
    " WHERE state = 'dead_lettered' AND discarded_at IS NULL"
)

#: Every pending and in-flight op (:meth:`OpQueries.open_ops_by_vmid`), one partial index each.
OPEN_OPS = (
    f"SELECT {OP_COLUMNS} FROM ops WHERE phase = 1"
    f" UNION ALL SELECT {OP_COLUMNS} FROM ops WHERE phase = 2"
)


def _limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise ValidationError(
            f"limit must be between 1 and {MAX_PAGE}, not {limit}", {"limit": "out of range"}
        )
    return limit


def _page(found: list[sqlite3.Row], limit: int) -> OpPage:
    items = [op_from_row(r) for r in found[:limit]]
    more = len(found) > limit
    return OpPage(items=items, next_cursor=items[-1].id if more and items else None)


def _by_id(op: Op) -> int:
    return op.id


def _backup_file(source: Path, dest: Path) -> None:
    fd = os.open(dest, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)
    try:
        src = sqlite3.connect(
            f"file:{urllib.parse.quote(str(source.absolute()))}?mode=ro", uri=True
        )
        try:
            dst = sqlite3.connect(dest)
            try:
                src.backup(dst)
            finally:
                dst.close()
        finally:
            src.close()
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            dest.unlink()
        raise


class OpQueries(Part):
    """Queries over ops and their history (Journal delegates to them)."""

    async def _rows(self, sql: str, params: list[Any] | tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        return await self._store.rows(sql, params)

    async def get(self, op_id: int) -> Op:
        """The op with ``op_id``; :class:`~lifecycled.errors.NotFound` if there is none."""
        found = await self._rows(f"SELECT {OP_COLUMNS} FROM ops WHERE id = ?", (op_id,))
        if not found:
            raise NotFound(f"op {op_id} not found")
        return op_from_row(found[0])

    async def get_dead_letter(self, op_id: int) -> Op:
        """A dead letter not yet discarded; NotFound if missing, JournalError if not a dead letter."""
        op = await self.get(op_id)
        if op.state is not OpState.DEAD_LETTERED:
            raise NotFound(f"op {op_id} is not a dead letter (it is {op.state})")
        if op.discarded_at is not None:
            raise NotFound(f"dead letter {op_id} was discarded")
        return op

    async def recorded_upids(self, upids: Iterable[str]) -> set[str]:
        """Which of ``upids`` any op has recorded (now, or in an earlier attempt's history):
        a task found in a node's list is adopted only when no op holds it already."""
        wanted = sorted(set(upids))
        found: set[str] = set()
        for i in range(0, len(wanted), _UPID_CHUNK):
            chunk = wanted[i : i + _UPID_CHUNK]
            marks = ",".join("?" * len(chunk))
            for row in await self._rows(
                f"SELECT upid FROM ops WHERE upid IN ({marks})"
                f" UNION SELECT upid FROM op_history WHERE upid IN ({marks})",
                (*chunk, *chunk),
            ):
                found.add(str(row[0]))
        return found

    async def history(self, op_id: int) -> list[HistoryEntry]:
        """Every transition of the op, oldest first; NotFound if the op does not exist."""
        found = await self._rows(
            f"SELECT {HISTORY_COLUMNS} FROM op_history WHERE op_id = ? ORDER BY id", (op_id,)
        )
        if not found and not await self._rows("SELECT 1 FROM ops WHERE id = ?", (op_id,)):
            raise NotFound(f"op {op_id} not found")
        return [history_from_row(r) for r in found]

    async def succeeded_task_durations(self, *, limit: int = 1000) -> list[tuple[str, float]]:
        """``(UPID, seconds)`` of the newest ``limit`` succeeded ops that ran a task: seconds
        from the UPID being journaled (its first history row) to the op finishing. The
        tracker learns how long each task type takes on each node from these."""
        found = await self._rows(
            "SELECT o.upid AS upid, o.finished_at - MIN(h.at) AS seconds"
            " FROM (SELECT id, upid, finished_at FROM ops"
            "       WHERE state = 'succeeded' AND upid IS NOT NULL"
            "       ORDER BY id DESC LIMIT ?) AS o"
            " JOIN op_history AS h ON h.op_id = o.id AND h.upid = o.upid"
            " GROUP BY o.id",
            (limit,),
        )
        return [(str(r["upid"]), float(r["seconds"])) for r in found]

    async def by_key(self, key: str) -> Op | None:
        """The op holding idempotency key ``key``, if any."""
        found = await self._rows(f"SELECT {OP_COLUMNS} FROM ops WHERE idempotency_key = ?", (key,))
        return op_from_row(found[0]) if found else None

    # The in-flight queries sort in Python: with ``ORDER BY id`` and no planner statistics
    # (a new or bulk-loaded journal), SQLite prefers walking the whole table in rowid order
    # over the tiny partial index. Without it, they read only ``phase = 2`` index entries.

    async def in_flight(self, *, node: str | None = None) -> list[Op]:
        """Ops in dispatching or running (optionally on ``node``), oldest first."""
        sql = f"SELECT {OP_COLUMNS} FROM ops WHERE phase = 2"
        params: list[Any] = []
        if node is not None:
            sql += " AND node = ?"
            params.append(node)
        return sorted((op_from_row(r) for r in await self._rows(sql, params)), key=_by_id)

    async def stale_in_flight(self, *, older_than: float) -> list[Op]:
        """In-flight ops not updated since ``older_than`` (janitor candidates), oldest first."""
        found = await self._rows(
            f"SELECT {OP_COLUMNS} FROM ops WHERE phase = 2 AND updated_at < ?", (older_than,)
        )
        return sorted((op_from_row(r) for r in found), key=_by_id)

    async def open_counts(self) -> dict[OpState, int]:
        """Pending and in-flight ops by state, and dead letters not discarded.

        Cheap whatever the journal's size (partial indexes only): what the gauges refresh
        every few seconds. Terminal states are absent; :meth:`counts_by_state` has them all.
        """
        counts = dict.fromkeys((OpState.PENDING, OpState.DISPATCHING, OpState.RUNNING), 0)
        # One statement, so one snapshot.
        for row in await self._rows(_OPEN_COUNTS):
            if row[0] == "pending":
                counts[OpState.PENDING] = int(row[1])
            elif row[0] == "dead_lettered":
                counts[OpState.DEAD_LETTERED] = int(row[1])
            else:
                counts[OpState(row[0])] += 1
        return counts

    async def list_ops(
        self,
        *,
        state: OpState | None = None,
        vmid: int | None = None,
        action: str | None = None,
        limit: int = 50,
        cursor: int | None = None,
    ) -> OpPage:
        """Ops newest first, filtered; ``cursor`` is the last id of the previous page."""
        limit = _limit(limit)
        conds: list[str] = []
        params: list[Any] = []
        for column, value in (("state", state), ("vmid", vmid), ("action", action)):
            if value is not None:
                conds.append(f"{column} = ?")
                params.append(str(value) if column == "state" else value)
        if cursor is not None:
            conds.append("id < ?")
            params.append(cursor)
        where = f" WHERE {' AND '.join(conds)}" if conds else ""
        params.append(limit + 1)
        sql = f"SELECT {OP_COLUMNS} FROM ops{where} ORDER BY id DESC LIMIT ?"
        return _page(await self._rows(sql, params), limit)

    async def list_dead_letters(
        self, *, action: str | None = None, limit: int = 50, cursor: int | None = None
    ) -> OpPage:
        """Dead letters not discarded, newest first."""
        limit = _limit(limit)
        sql = f"SELECT {OP_COLUMNS} FROM ops WHERE state = 'dead_lettered' AND discarded_at IS NULL"
        params: list[Any] = []
        if action is not None:
            sql += " AND action = ?"
            params.append(action)
        if cursor is not None:
            sql += " AND id < ?"
            params.append(cursor)
        params.append(limit + 1)
        return _page(await self._rows(sql + " ORDER BY id DESC LIMIT ?", params), limit)

    async def counts_by_state(self) -> dict[OpState, int]:
        """How many ops are in each state (every state present, zeros included)."""
        counts = dict.fromkeys(OpState, 0)
        for row in await self._rows("SELECT state, count(*) AS n FROM ops GROUP BY state"):
            counts[OpState(row["state"])] = int(row["n"])
        return counts

    async def integrity_check(self) -> list[str]:
        """``PRAGMA integrity_check`` rows (``["ok"]`` when the file is sound)."""
        return [str(r[0]) for r in await self._rows("PRAGMA integrity_check")]

    async def backup(self, dest: str | os.PathLike[str]) -> None:
        """Copy the journal online to ``dest`` (mode 0600); refuses to overwrite a file."""
        target = Path(dest)
        try:
            await asyncio.to_thread(_backup_file, self._store.path, target)
        except FileExistsError as exc:
            raise JournalError(
                f"backup destination {target} already exists; not overwriting it"
            ) from exc
        except sqlite3.Error as exc:
            raise translate(exc, self._store.path) from exc

    # --- reads for reconcile and the policy ------------------------------------------------

    async def open_ops_by_vmid(self) -> dict[int, list[Op]]:
        """Every pending or in-flight op, grouped by guest.

        One SELECT per phase and no ``ORDER BY`` (sorted here, as the in-flight queries below),
        so each reads its partial index (``ops_due``, ``ops_inflight_vmid``): ``phase IN (1, 2)``
        or an ordered compound scans the whole table, computing the generated ``phase`` of
        every row — ~0.3–0.5 s per reconcile pass on a 1,000,000-op journal.
        """
        found = await self._read(OPEN_OPS)
        grouped: dict[int, list[Op]] = defaultdict(list)
        for row in sorted(found, key=lambda r: int(r["id"])):
            op = op_from_row(row)
            grouped[op.guest.vmid].append(op)
        return dict(grouped)

    async def latest_reconcile_ops(self) -> dict[int, Op]:
        """Each guest's most recent reconcile op."""
        sql = (
            f"SELECT {OP_COLUMNS} FROM ops WHERE id IN "
            "(SELECT max(id) FROM ops WHERE origin = 'reconcile' GROUP BY vmid)"
        )
        return {op.guest.vmid: op for op in map(op_from_row, await self._read(sql))}

    async def config_changes(self) -> dict[int, float]:
        """When lifecycled last changed each guest's config (a succeeded configure/resize)."""
        sql = (
            "SELECT vmid, max(finished_at) AS at FROM ops WHERE state = 'succeeded' "
            "AND action IN ('configure', 'resize') GROUP BY vmid"
        )
        return {int(r["vmid"]): float(r["at"]) for r in await self._read(sql)}

    async def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        return await self._store.rows(sql, params)
