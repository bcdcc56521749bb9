"""Group commit: concurrent writes share durable transactions, each unit stays all-or-nothing."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from conftest_journal import BOOM, T0, raw_rows, request, submit, to_state

from lifecycled.domain.op import Op
from lifecycled.domain.states import OpState
from lifecycled.errors import InvalidTransition, JournalError, JournalUnavailable
from lifecycled.journal import Journal
from lifecycled.journal.store import Store

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def commits(tmp_path: Path) -> AsyncIterator[tuple[Journal, list[float]]]:
    seen: list[float] = []
    async with await Journal.open(tmp_path / "j.sqlite3", on_commit=seen.append) as journal:
        yield journal, seen


def _db(journal: Journal) -> Store:
    return journal._store


async def test_concurrent_submissions_share_commits_and_all_are_durable(
    commits: tuple[Journal, list[float]],
) -> None:
    """200 concurrent submissions commit in far fewer transactions, and every one is on disk
    when its caller is answered."""
    journal, seen = commits
    results = await asyncio.gather(
        *(journal.submit(request(f"k{i}", vmid=100 + i), now=T0) for i in range(200))
    )
    assert len({r.op.id for r in results}) == 200
    assert len(seen) < 50, f"{len(seen)} commits for 200 writes: nothing was batched"
    assert raw_rows(journal.path, "SELECT count(*) FROM ops") == [(200,)]
    assert raw_rows(journal.path, "SELECT count(*) FROM op_history") == [(200,)]


async def test_a_lone_write_is_committed_at_once(commits: tuple[Journal, list[float]]) -> None:
    """With nothing else queued, a write is committed immediately (no batching delay)."""
    journal, seen = commits
    await submit(journal, "warm-up")
    started = time.perf_counter()
    for i in range(20):
        await submit(journal, f"k{i}", vmid=200 + i)
    per_write = (time.perf_counter() - started) / 20
    assert len(seen) == 21
    assert per_write < 0.05, f"{per_write * 1000:.1f} ms per lone write"


async def test_a_failing_unit_does_not_poison_its_batch(
    commits: tuple[Journal, list[float]],
) -> None:
    """In one batch, an illegal transition and an SQL error fail only their own callers;
    the other units of the batch commit."""
    journal, seen = commits
    running = await to_state(journal, OpState.RUNNING, vmid=101, key="running")
    pending = [await submit(journal, f"p{i}", vmid=300 + i) for i in range(5)]

    def bad_sql(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE ops SET state = 'bogus' WHERE id = ?", (pending[0].id,))

    before = len(seen)
    outcomes = await asyncio.gather(
        *(journal.cancel(op.id, now=T0 + 5, reason="x") for op in pending),
        journal.cancel(running.id, now=T0 + 5, reason="x"),  # illegal: it is running
        _db(journal).write(bad_sql),  # CHECK constraint: a JournalError for its caller
        return_exceptions=True,
    )
    assert len(seen) - before == 1, "all seven units should have shared one commit"
    assert [getattr(o, "state", None) for o in outcomes[:5]] == [OpState.CANCELLED] * 5
    assert isinstance(outcomes[5], InvalidTransition)
    assert isinstance(outcomes[6], JournalError) and "CHECK constraint" in str(outcomes[6])
    assert (await journal.get(running.id)).state is OpState.RUNNING
    states = raw_rows(journal.path, "SELECT state FROM ops WHERE vmid >= 300 ORDER BY id")
    assert states == [("cancelled",)] * 5
    history = raw_rows(
        journal.path, "SELECT count(*) FROM op_history WHERE op_id = ?", (running.id,)
    )
    assert history == [(3,)], "the refused cancel must not leave a history row"


async def test_a_unit_that_fails_after_writing_rolls_back_only_itself(
    commits: tuple[Journal, list[float]],
) -> None:
    """A unit that raises after writing rolls back only its own rows; the other units of its
    batch commit in the same transaction."""
    journal, seen = commits
    db = _db(journal)

    def writes_then_fails(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO nonces VALUES ('n-bad', 'k', 1, 2)")
        raise RuntimeError("unit failed after writing")

    def writes_ok(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO nonces VALUES ('n-ok', 'k', 1, 2)")
        return "ok"

    before = len(seen)
    outcomes = await asyncio.gather(
        db.write(writes_then_fails),
        db.write(writes_ok),
        journal.submit(request(None, vmid=501), now=T0),  # no key: no read before the write
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], RuntimeError)
    assert outcomes[1] == "ok"
    assert len(seen) - before == 1
    assert raw_rows(journal.path, "SELECT nonce FROM nonces ORDER BY nonce") == [("n-ok",)]
    assert raw_rows(journal.path, "SELECT count(*) FROM ops") == [(1,)]


async def test_every_write_runs_on_the_one_writer_thread(
    commits: tuple[Journal, list[float]],
) -> None:
    """Units of every batch run on one thread the journal owns, never on the event loop's."""
    journal, _ = commits
    db = _db(journal)

    def where(conn: sqlite3.Connection) -> int:
        conn.execute("SELECT 1").fetchall()
        return threading.get_ident()

    first = await asyncio.gather(*(db.write(where) for _ in range(20)))
    later = await db.write(where)
    assert set(first) == {later}
    assert later != threading.get_ident()
    names = {t.name for t in threading.enumerate() if t.ident == later}
    assert names and all(n.startswith("lifecycled-journal-writer") for n in names)


async def test_a_withdrawn_unit_never_runs(commits: tuple[Journal, list[float]]) -> None:
    """A caller cancelled before its unit was taken into a batch withdraws it: it never runs;
    one cancelled after it was taken commits whole. Either way, all or nothing."""
    journal, _ = commits
    db = _db(journal)
    ran: list[str] = []
    gate = threading.Event()

    def marker(name: str, *, hold: bool = False) -> Callable[[sqlite3.Connection], None]:
        def unit(conn: sqlite3.Connection) -> None:
            if hold:
                gate.wait(10)  # holds the current batch open in SQLite's thread
            conn.execute("INSERT INTO nonces VALUES (?, 'k', 1, 2)", (name,))
            ran.append(name)

        return unit

    first = asyncio.create_task(db.write(marker("first", hold=True)))
    await asyncio.sleep(0.05)  # the batch holding `first` is running
    withdrawn = asyncio.create_task(db.write(marker("withdrawn")))
    kept = asyncio.create_task(db.write(marker("kept")))
    taken_then_cancelled = first
    await asyncio.sleep(0)
    withdrawn.cancel()
    taken_then_cancelled.cancel()
    gate.set()
    await kept
    for task in (withdrawn, taken_then_cancelled):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert ran == ["first", "kept"]
    assert raw_rows(journal.path, "SELECT nonce FROM nonces ORDER BY nonce") == [
        ("first",),
        ("kept",),
    ]


async def test_a_full_disk_fails_the_write_that_needs_space_and_recovers(
    commits: tuple[Journal, list[float]],
) -> None:
    """On a full database, the write that needs space fails with JournalUnavailable; a write
    of the same batch either committed or failed the same way (never half); writing resumes
    once space is back and the file is intact."""
    journal, _ = commits
    db = _db(journal)
    await submit(journal, "before")
    pages = raw_rows(journal.path, "PRAGMA page_count")[0][0]
    await db.writer.call(lambda c: c.execute(f"PRAGMA max_page_count = {pages}"))
    big = {"blob": "x" * 200_000}
    small, large = await asyncio.gather(  # no keys: both units are queued before the batch
        journal.submit(request(None, vmid=601), now=T0),
        journal.submit(request(None, vmid=602, params=big), now=T0),
        return_exceptions=True,
    )
    assert isinstance(large, JournalUnavailable), large
    on_disk = raw_rows(journal.path, "SELECT vmid FROM ops ORDER BY id")
    if isinstance(small, BaseException):
        assert isinstance(small, JournalUnavailable)
        assert on_disk == [(101,)]
    else:
        assert on_disk == [(101,), (601,)]
    await db.writer.call(lambda c: c.execute("PRAGMA max_page_count = 1073741823"))
    assert (await submit(journal, "after", vmid=603)).state is OpState.PENDING
    assert await journal.integrity_check() == ["ok"]


async def test_a_transaction_sqlite_rolled_back_fails_every_unit_of_the_batch(
    commits: tuple[Journal, list[float]],
) -> None:
    """When SQLite drops the whole transaction (what it may do on SQLITE_FULL or an I/O
    error), the units that ran before in that batch did not commit either: all fail."""
    journal, seen = commits
    db = _db(journal)

    def lost(conn: sqlite3.Connection) -> None:
        conn.execute("ROLLBACK")  # what SQLite does by itself on some I/O errors
        raise sqlite3.OperationalError("disk I/O error")

    before = len(seen)
    outcomes = await asyncio.gather(
        journal.submit(request(None, vmid=701), now=T0),
        db.write(lost),
        journal.submit(request(None, vmid=702), now=T0),
        return_exceptions=True,
    )
    assert all(isinstance(o, JournalUnavailable) for o in outcomes), outcomes
    assert len(seen) == before
    assert raw_rows(journal.path, "SELECT count(*) FROM ops") == [(0,)]
    assert (await submit(journal, "after", vmid=703)).state is OpState.PENDING


def test_the_journal_uses_no_private_attribute_of_a_dependency() -> None:
    """No journal module reaches into aiosqlite's (or sqlite3's) private attributes."""
    import re

    import lifecycled.journal

    folder = Path(lifecycled.journal.__file__).parent
    private = re.compile(r"\b(?:conn|connection|reader|aiosqlite\.\w+)\._(?:execute|conn)\b")
    offenders = [
        f"{path.name}:{n}"
        for path in sorted(folder.glob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if private.search(line)
    ]
    assert offenders == []


def test_the_journal_is_at_most_nine_modules() -> None:
    """lifecycled/journal is organised by aggregate in at most nine modules."""
    import lifecycled.journal

    modules = sorted(p.name for p in Path(lifecycled.journal.__file__).parent.glob("*.py"))
    assert len(modules) <= 9, modules


async def test_close_commits_what_is_queued(tmp_path: Path) -> None:
    """Writes queued before close() are committed before the connection closes."""
    journal = await Journal.open(tmp_path / "j.sqlite3")
    tasks = [
        asyncio.create_task(journal.submit(request(f"k{i}", vmid=700 + i), now=T0))
        for i in range(30)
    ]
    await asyncio.sleep(0)
    await journal.close()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    committed = [d for d in done if not isinstance(d, BaseException)]
    refused = [d for d in done if isinstance(d, JournalError)]
    assert len(committed) + len(refused) == 30
    assert raw_rows(tmp_path / "j.sqlite3", "SELECT count(*) FROM ops") == [(len(committed),)]


async def test_every_verb_returns_the_op_as_the_journal_holds_it(
    commits: tuple[Journal, list[float]],
) -> None:
    """What a verb returns (built from the values it wrote) equals a fresh read of the row."""
    journal, _ = commits

    async def same(op: Op | None) -> Op:
        assert op is not None
        assert op == await journal.get(op.id)
        return op

    op = await same(
        (await journal.submit(request("k1", vmid=901, params={"b": [1], "a": 1}), now=T0)).op
    )
    await same(await journal.claim_next(now=T0 + 1))
    await same(await journal.record_upid(op.id, "UPID:pve1:1:a:", now=T0 + 2))
    await same(
        await journal.requeue(
            op.id, now=T0 + 3, next_attempt_at=T0 + 4, reason="r", error=BOOM, ambiguous=True
        )
    )
    await same(await journal.claim_next(now=T0 + 5))
    await same(await journal.set_upid_in_flight(op.id, "UPID:pve1:2:b:", now=T0 + 6, reason="r"))
    await same(await journal.dead_letter(op.id, now=T0 + 7, reason="r", error=BOOM))
    await same(await journal.discard(op.id, now=T0 + 8, reason="r"))
    await same(await journal.retry(op.id, now=T0 + 9, reason="r"))
    await same(await journal.cancel(op.id, now=T0 + 10, reason="r"))
    await same(
        (await journal.submit(request("k1", vmid=901, params={"a": 1, "b": [1]}), now=T0 + 11)).op
    )
    await same(await journal.claim_next(now=T0 + 12))
    await same(await journal.finish(op.id, OpState.FAILED, now=T0 + 13, reason="r", error=BOOM))
    await same((await journal.submit(request(None, vmid=902), now=10)).op)  # an int `now`


async def test_a_durable_write_is_never_withdrawn(commits: tuple[Journal, list[float]]) -> None:
    """A durable write whose caller is cancelled before its unit was taken still commits,
    and the caller sees the cancellation only once it is on disk."""
    journal, _ = commits
    db = _db(journal)
    op = await to_state(journal, OpState.RUNNING, vmid=950)
    gate = threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        gate.wait(10)

    holder = asyncio.create_task(db.write(hold))
    await asyncio.sleep(0.05)  # the holding batch is running; the finish below queues behind
    finishing = asyncio.create_task(
        journal.finish(op.id, OpState.SUCCEEDED, now=T0 + 9, reason="OK", exitstatus="OK")
    )
    await asyncio.sleep(0)
    finishing.cancel()
    await asyncio.sleep(0.05)
    assert not finishing.done(), "the cancelled caller must wait for its durable write"
    gate.set()
    await holder
    with pytest.raises(asyncio.CancelledError):
        await finishing
    assert raw_rows(journal.path, "SELECT state FROM ops WHERE id = ?", (op.id,)) == [
        ("succeeded",)
    ]
