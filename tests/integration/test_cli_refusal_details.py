"""A submission the CLI refuses says which field is wrong and why, on its one line (SPEC §5:
"errors are one clear line"), as the HTTP answer's ``details`` do."""

from __future__ import annotations

from pathlib import Path

from conftest_journal import run_cli


async def test_a_refused_cli_submission_names_the_field(tmp_path: Path) -> None:
    """A bad key and a reserved tag: exit 2, one line naming the field and the problem."""
    db = str(tmp_path / "journal.sqlite3")
    assert (await run_cli("db", "migrate", "--db", db))[0] == 0
    base = ("submit", "configure", "100", "--db", db, "--kind", "qemu", "--guest-node", "pve1")
    code, _, err = await run_cli(*base, "--key", "x y", "--param", "cores=2")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "idempotency_key" in err, err
    code, _, err = await run_cli(*base, "--param", "tags=lcd.o.native")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "lcd." in err, err
