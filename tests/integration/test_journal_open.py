"""Opening the journal: file creation and mode, pragmas, schema versions, bad files."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import stat
from pathlib import Path

import pytest
from conftest_journal import T0, raw_rows, submit

from lifecycled.errors import ConfigError, JournalError, JournalTooNew, JournalUnavailable
from lifecycled.journal import Journal
from lifecycled.journal.migrations import APPLICATION_ID, load_migrations, split_statements

REPO = Path(__file__).resolve().parents[2]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_new_journal_is_created_owner_only(tmp_path: Path) -> None:
    """A new journal file and its -wal/-shm files are mode 0600, even under umask 022."""
    path = tmp_path / "data" / "j.sqlite3"
    async with await Journal.open(path) as journal:
        await submit(journal, "k1")
        assert _mode(path) == 0o600
        for suffix in ("-wal", "-shm"):
            side = path.with_name(path.name + suffix)
            assert side.exists()
            assert _mode(side) == 0o600
    assert _mode(path.parent) == 0o700


@pytest.mark.parametrize("readonly", [False, True])
async def test_an_existing_loose_journal_is_made_owner_only_on_open(
    tmp_path: Path, readonly: bool
) -> None:
    """A journal (and its -wal/-shm) left 0644 — copied in, restored, chmodded by hand — is
    0600 again after any open, read-only included, not only at creation."""
    path = tmp_path / "j.sqlite3"
    async with await Journal.open(path) as journal:
        await submit(journal, "k1")
        sides = [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")]
        for file in (path, *sides):
            file.chmod(0o644)
    path.chmod(0o644)
    async with await Journal.open(path, readonly=readonly):
        for file in (path, *(s for s in sides if s.exists())):
            assert _mode(file) == 0o600, file


async def test_new_journal_is_migrated_and_marked(tmp_path: Path) -> None:
    """A new journal gets every migration, user_version and the lifecycled application id."""
    path = tmp_path / "j.sqlite3"
    known = len(load_migrations())
    async with await Journal.open(path) as journal:
        assert journal.schema_version == known
        assert journal.known_schema_version == known
        assert journal.applied_migrations[0] == "0001_initial"
    assert raw_rows(path, "PRAGMA user_version") == [(known,)]
    assert raw_rows(path, "PRAGMA application_id") == [(APPLICATION_ID,)]
    assert raw_rows(path, "PRAGMA journal_mode") == [("wal",)]
    tables = {r[0] for r in raw_rows(path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"ops", "op_history", "guests", "audit", "nonces", "outbox", "node_state"} <= tables
    async with await Journal.open(path) as again:
        assert again.applied_migrations == ()


async def test_connection_pragmas(tmp_path: Path) -> None:
    """The connection runs with WAL, the asked synchronous level, FKs on, temp_store MEMORY."""
    async with await Journal.open(tmp_path / "j.sqlite3", synchronous="normal") as journal:
        names = ("journal_mode", "synchronous", "foreign_keys", "temp_store", "busy_timeout")
        got = await journal._store.writer.call(
            lambda c: {name: c.execute(f"PRAGMA {name}").fetchone()[0] for name in names}
        )
    assert got == {
        "journal_mode": "wal",
        "synchronous": 1,
        "foreign_keys": 1,
        "temp_store": 2,
        "busy_timeout": 5000,
    }


async def test_synchronous_must_be_a_known_level(tmp_path: Path) -> None:
    """An unknown synchronous level is a configuration error and creates nothing."""
    with pytest.raises(ConfigError, match="NORMAL, FULL or EXTRA"):
        await Journal.open(tmp_path / "j.sqlite3", synchronous="OFF")
    assert not (tmp_path / "j.sqlite3").exists()


async def test_missing_file_is_not_created_without_create(tmp_path: Path) -> None:
    """create=False on a missing path fails clearly and leaves no file behind."""
    path = tmp_path / "nope.sqlite3"
    with pytest.raises(JournalError, match=r"no journal at .*db migrate"):
        await Journal.open(path, create=False)
    assert not path.exists()


async def test_garbage_file_is_refused(tmp_path: Path) -> None:
    """A file that is not SQLite is reported as corrupt / not a journal."""
    path = tmp_path / "j.sqlite3"
    path.write_bytes(b"definitely not sqlite\n" * 300)
    with pytest.raises(JournalError, match="corrupt or not a lifecycled journal"):
        await Journal.open(path)


async def test_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    """Another application's SQLite file is not taken over (nor migrated)."""
    path = tmp_path / "other.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    with pytest.raises(JournalError, match="not a lifecycled journal"):
        await Journal.open(path)
    assert raw_rows(path, "PRAGMA user_version") == [(0,)]


async def test_corrupted_pages_are_reported(tmp_path: Path) -> None:
    """A journal whose pages were overwritten fails at open or in integrity_check."""
    path = tmp_path / "j.sqlite3"
    async with await Journal.open(path) as journal:
        for i in range(200):
            await submit(journal, f"k{i}", vmid=i, params={"pad": "x" * 200})
    size = path.stat().st_size
    with path.open("r+b") as fh:
        fh.seek(size // 2)
        fh.write(b"\xff" * 8192)
    problems: list[str] = []
    error = ""
    try:
        async with await Journal.open(path, migrate=False) as journal:
            problems = await journal.integrity_check()
    except JournalError as exc:
        error = str(exc)
    assert "corrupt" in error or problems != ["ok"]


async def test_journal_too_new_is_refused(tmp_path: Path) -> None:
    """A journal written by a newer lifecycled is refused with an upgrade hint."""
    path = tmp_path / "j.sqlite3"
    async with await Journal.open(path):
        pass
    known = len(load_migrations())
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {known + 1}")
    conn.close()
    with pytest.raises(JournalTooNew) as info:
        await Journal.open(path)
    assert str(info.value) == (
        f"journal schema version {known + 1} is newer than this lifecycled (knows {known}): "
        "upgrade lifecycled"
    )


async def test_journal_from_migration_n_opens_under_n_plus_1(tmp_path: Path) -> None:
    """A journal written at version N is upgraded by N+1 with its ops intact, and N then
    refuses it as too new."""
    v1 = tmp_path / "v1"
    shutil.copytree(REPO / "migrations", v1)
    n = len(load_migrations(v1))
    v2 = tmp_path / "v2"
    shutil.copytree(v1, v2)
    (v2 / f"{n + 1:04d}_op_labels.sql").write_text(
        "-- a later release adds a column and a table\n"
        "ALTER TABLE ops ADD COLUMN label TEXT;\n"
        "CREATE TABLE labels (\n    name TEXT PRIMARY KEY\n);\n",
        encoding="utf-8",
    )
    path = tmp_path / "j.sqlite3"
    async with await Journal.open(path, migrations_dir=v1) as journal:
        assert journal.schema_version == n
        op = await submit(journal, "kept")
    async with await Journal.open(path, migrations_dir=v2) as journal:
        assert journal.schema_version == n + 1
        assert journal.applied_migrations == (f"{n + 1:04d}_op_labels",)
        assert (await journal.get(op.id)).idempotency_key == "kept"
        claimed = await journal.claim_next(now=T0 + 1)
        assert claimed is not None and claimed.id == op.id
    assert raw_rows(path, "SELECT count(*) FROM labels") == [(0,)]
    with pytest.raises(JournalTooNew, match=rf"version {n + 1} is newer .*knows {n}"):
        await Journal.open(path, migrations_dir=v1)


async def test_migrate_false_refuses_an_old_journal(tmp_path: Path) -> None:
    """Without migrate, a journal older than the code is refused with a hint."""
    v1 = tmp_path / "v1"
    shutil.copytree(REPO / "migrations", v1)
    path = tmp_path / "j.sqlite3"
    async with await Journal.open(path, migrations_dir=v1):
        pass
    v2 = tmp_path / "v2"
    shutil.copytree(v1, v2)
    n = len(load_migrations(v1))
    (v2 / f"{n + 1:04d}_more.sql").write_text("CREATE TABLE more (x INTEGER);\n")
    with pytest.raises(JournalError, match=r"older than this lifecycled.*db migrate"):
        await Journal.open(path, migrations_dir=v2, migrate=False)


async def test_failed_migration_leaves_the_previous_version(tmp_path: Path) -> None:
    """A migration that fails half-way is rolled back entirely."""
    mig = tmp_path / "mig"
    shutil.copytree(REPO / "migrations", mig)
    n = len(load_migrations(mig))
    (mig / f"{n + 1:04d}_broken.sql").write_text(
        "CREATE TABLE half (x INTEGER);\nINSERT INTO no_such_table VALUES (1);\n"
    )
    path = tmp_path / "j.sqlite3"
    with pytest.raises(JournalError, match="no_such_table"):
        await Journal.open(path, migrations_dir=mig)
    assert raw_rows(path, "PRAGMA user_version") == [(n,)]
    assert raw_rows(path, "SELECT count(*) FROM sqlite_master WHERE name = 'half'") == [(0,)]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (["0001_a.sql", "0003_c.sql"], "without gaps"),
        (["0001_a.sql", "1_b.sql"], "NNNN_name.sql"),
        ([], "no migrations"),
    ],
)
def test_bad_migration_folders_are_refused(tmp_path: Path, files: list[str], message: str) -> None:
    """Gaps, badly named files and empty folders are refused."""
    for name in files:
        (tmp_path / name).write_text("CREATE TABLE t (x INTEGER);\n")
    with pytest.raises(JournalError, match=message):
        load_migrations(tmp_path)


def test_statement_splitting_keeps_triggers_whole() -> None:
    """The migration splitter keeps a trigger body with its inner semicolons together."""
    script = (
        "-- comment\nCREATE TABLE a (x INTEGER);\n"
        "CREATE TRIGGER t BEFORE DELETE ON a\nBEGIN\n  SELECT RAISE(ABORT, 'no');\nEND;\n"
    )
    statements = split_statements(script)
    assert len(statements) == 2
    assert statements[1].startswith("CREATE TRIGGER") and statements[1].endswith("END;")
    with pytest.raises(ValueError, match="incomplete"):
        split_statements("CREATE TABLE a (x INTEGER)\n")


async def test_two_openers_of_a_new_file_migrate_once(tmp_path: Path) -> None:
    """Two connections opening a new journal at once both succeed at the same version."""
    path = tmp_path / "j.sqlite3"
    a, b = await asyncio.gather(Journal.open(path), Journal.open(path))
    try:
        assert a.schema_version == b.schema_version == len(load_migrations())
        assert sorted(a.applied_migrations + b.applied_migrations) == [
            m.label for m in load_migrations()
        ]
    finally:
        await a.close()
        await b.close()


async def test_readonly_journal_refuses_writes(tmp_path: Path) -> None:
    """A read-only journal reads, and a write fails as JournalUnavailable."""
    path = tmp_path / "j.sqlite3"
    async with await Journal.open(path) as journal:
        op = await submit(journal, "k1")
    async with await Journal.open(path, readonly=True) as ro:
        assert (await ro.get(op.id)).id == op.id
        with pytest.raises(JournalUnavailable, match="readonly"):
            await ro.cancel(op.id, now=T0 + 1, reason="x")


async def test_commit_hook_sees_every_write(tmp_path: Path) -> None:
    """on_commit receives one duration per write transaction."""
    seen: list[float] = []
    async with await Journal.open(tmp_path / "j.sqlite3", on_commit=seen.append) as journal:
        op = await submit(journal, "k1")
        await journal.cancel(op.id, now=T0 + 1, reason="x")
        await journal.get(op.id)
    assert len(seen) == 2
    assert all(0 <= s < 5 for s in seen)


async def test_closed_journal_refuses_use(tmp_path: Path) -> None:
    """After close, verbs fail clearly instead of hanging."""
    journal = await Journal.open(tmp_path / "j.sqlite3")
    await journal.close()
    await journal.close()
    with pytest.raises(JournalError, match="closed"):
        await journal.get(1)
