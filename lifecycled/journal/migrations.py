"""Schema migrations: numbered SQL files applied in order, tracked with ``PRAGMA user_version``.

Files are named ``NNNN_name.sql`` (``0001_initial.sql``, ``0002_…``) and numbered 1, 2, 3, …
without gaps. Each is applied in its own ``BEGIN IMMEDIATE`` transaction that also sets
``user_version``, so a crash leaves the journal at the previous version, and two processes
opening a fresh journal at once apply each migration exactly once.

They are found with :mod:`importlib.resources` at ``lifecycled/_migrations`` (the wheel
force-includes the top-level ``migrations/`` folder there) and otherwise in the checkout's
top-level ``migrations/`` folder.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import logging
import re
import sqlite3
from collections.abc import Sequence
from importlib.resources.abc import Traversable
from pathlib import Path

import attrs

from lifecycled.errors import JournalError, JournalTooNew

logger = logging.getLogger("lifecycled.journal")

#: ``PRAGMA application_id`` of a lifecycled journal ("LCYD"); set by 0001_initial.sql.
APPLICATION_ID = 0x4C435944

_NAME_RE = re.compile(r"^(?P<version>\d{4})_(?P<name>[A-Za-z0-9_]+)\.sql$")


@attrs.frozen(kw_only=True)
class Migration:
    """One numbered schema change."""

    version: int
    name: str
    statements: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


def split_statements(script: str) -> list[str]:
    """Split an SQL script into complete statements (triggers may contain ``;``).

    Statements end at a line ending in ``;`` where the text so far is complete SQL.
    """
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    rest = "\n".join(
        ln for ln in buffer.splitlines() if ln.strip() and not ln.strip().startswith("--")
    )
    if rest:
        raise ValueError(f"incomplete SQL statement at the end of the script: {rest[:60]!r}")
    return statements


def default_source() -> Traversable:
    """Where this lifecycled's migrations live: the installed package, else the checkout."""
    packaged = importlib.resources.files("lifecycled") / "_migrations"
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[2] / "migrations"
    if checkout.is_dir():
        return checkout
    raise JournalError(
        "no schema migrations found (neither lifecycled/_migrations nor the checkout's "
        "migrations/ folder): reinstall lifecycled"
    )


def load_migrations(source: Traversable | Path | None = None) -> tuple[Migration, ...]:
    """Read and validate the migrations in ``source`` (default: :func:`default_source`)."""
    folder: Traversable = default_source() if source is None else source
    found: dict[int, Migration] = {}
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _NAME_RE.fullmatch(entry.name)
        if match is None:
            raise JournalError(f"migration file {entry.name!r} is not named NNNN_name.sql")
        version = int(match["version"])
        if version in found:
            raise JournalError(f"two migrations have the number {version:04d}")
        try:
            statements = tuple(split_statements(entry.read_text(encoding="utf-8")))
        except ValueError as exc:
            raise JournalError(f"migration {entry.name}: {exc}") from exc
        found[version] = Migration(version=version, name=match["name"], statements=statements)
    versions = sorted(found)
    if versions != list(range(1, len(versions) + 1)):
        raise JournalError(f"migrations must be numbered 1, 2, 3, … without gaps; found {versions}")
    if not versions:
        raise JournalError(f"no migrations found in {folder}")
    return tuple(found[v] for v in versions)


def read_version(conn: sqlite3.Connection) -> int:
    """The journal's schema version (``PRAGMA user_version``; 0 for a new file)."""
    rows = conn.execute("PRAGMA user_version").fetchall()
    return int(rows[0][0]) if rows else 0


def check_identity(conn: sqlite3.Connection, path: Path, known: int) -> int:
    """Refuse files that are not lifecycled journals or are newer than ``known``; the version."""
    # One statement, so one snapshot: another process may be migrating the file right now.
    rows = conn.execute(
        "SELECT (SELECT user_version FROM pragma_user_version),"
        " (SELECT application_id FROM pragma_application_id),"
        " (SELECT count(*) FROM sqlite_master"
        "  WHERE type = 'table' AND name NOT LIKE 'sqlite_%')"
    ).fetchall()
    version, app_id, tables = (int(v) for v in rows[0])
    if (version == 0 and tables > 0) or (version > 0 and app_id != APPLICATION_ID):
        raise JournalError(
            f"{path} is an SQLite database but not a lifecycled journal: "
            "point --db at a journal file (or a new path)"
        )
    if version > known:
        raise JournalTooNew(
            f"journal schema version {version} is newer than this lifecycled "
            f"(knows {known}): upgrade lifecycled"
        )
    return version


def apply_migrations(conn: sqlite3.Connection, migrations: Sequence[Migration]) -> list[Migration]:
    """Apply the migrations the journal does not have yet, each in its own transaction
    (in the journal's writer thread)."""
    applied: list[Migration] = []
    for migration in migrations:
        if read_version(conn) >= migration.version:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another process may have migrated meanwhile.
            current = read_version(conn)
            if current >= migration.version:
                conn.execute("COMMIT")
                continue
            if current != migration.version - 1:
                raise JournalError(
                    f"journal schema version {current} cannot take migration {migration.label}"
                )
            for statement in migration.statements:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {int(migration.version)}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        logger.info(
            "journal.migrated", extra={"version": migration.version, "migration": migration.label}
        )
        applied.append(migration)
    return applied
