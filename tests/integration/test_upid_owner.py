"""A UPID belongs to one op: Recover and adoption never take a task another op recorded,
and the journal refuses a second holder (issue 10, point 4)."""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from engine_support import client_for, fast_settings, pick, running, submit, wait_terminal

from lifecycled.domain.actions import Action
from lifecycled.domain.op import GuestKind, GuestRef, Op, Origin
from lifecycled.domain.states import OpState
from lifecycled.errors import UpidTaken
from lifecycled.journal import Journal, SubmitRequest
from lifecycled.sim import SimServer
from lifecycled.sim.model import Guest

REPO = Path(__file__).resolve().parents[2]


async def first_configure(sim: SimServer, tmp_path: Path, guest: Guest) -> str:
    """A first ``configure`` (cores 3) run to success by the engine; its UPID."""
    async with running(sim, tmp_path) as runtime:
        op = await submit(runtime, "configure", guest, key="first", cores=3)
        done = await wait_terminal(runtime, op.id)
    assert done.state is OpState.SUCCEEDED and done.upid_text is not None
    assert sim.sim.guests[guest.vmid].config["cores"] == 3
    return done.upid_text


async def crashed_second_configure(sim: SimServer, tmp_path: Path, guest: Guest) -> Op:
    """A second ``configure`` (cores 5) claimed by a daemon that died before journaling a
    UPID (the engine is not running: nothing else touches the journal)."""
    settings = fast_settings(tmp_path, sim)
    now = time.time()
    async with await Journal.open(settings.db) as journal:
        op = (
            await journal.submit(
                SubmitRequest(
                    idempotency_key="second",
                    action="configure",
                    guest=GuestRef(node=guest.node, kind=GuestKind.QEMU, vmid=guest.vmid),
                    params={"cores": 5},
                    origin=Origin.API,
                ),
                now=now,
            )
        ).op
        claimed = await journal.claim_next(now=now)
    assert claimed is not None and claimed.id == op.id
    return claimed


async def test_recover_never_takes_the_first_configures_upid(
    sim: SimServer, tmp_path: Path
) -> None:
    """Crash before the second configure's POST: after restart it does not "succeed" with
    the first op's task; it fails safe (never sent) and the guest keeps cores 3."""
    guest = pick(sim, "qemu", running=False)
    first = await first_configure(sim, tmp_path, guest)
    second = await crashed_second_configure(sim, tmp_path, guest)
    async with running(sim, tmp_path) as runtime:
        done = await wait_terminal(runtime, second.id)
    assert done.upid_text != first
    assert done.state is OpState.FAILED, (done.state, done.upid)
    assert sim.sim.guests[guest.vmid].config["cores"] == 3


async def test_recover_adopts_the_second_configures_own_task(
    sim: SimServer, tmp_path: Path
) -> None:
    """Crash after the second configure's POST: Recover adopts that op's own task (not the
    first op's, which also matches) and the op succeeds with cores 5 applied."""
    guest = pick(sim, "qemu", running=False)
    first = await first_configure(sim, tmp_path, guest)
    second = await crashed_second_configure(sim, tmp_path, guest)
    pve = client_for(sim)
    try:
        own = await pve.dispatch(
            guest.node, GuestKind.QEMU, Action.CONFIGURE, guest.vmid, {"cores": 5}
        )
    finally:
        await pve.close()
    assert own is not None
    async with running(sim, tmp_path) as runtime:
        done = await wait_terminal(runtime, second.id)
    assert (done.state, done.upid_text) == (OpState.SUCCEEDED, str(own))
    assert done.upid_text != first
    assert sim.sim.guests[guest.vmid].config["cores"] == 5


async def test_journal_refuses_a_second_holder(sim: SimServer, tmp_path: Path) -> None:
    """Recording a UPID another op holds raises UpidTaken and changes nothing."""
    guest = pick(sim, "qemu", running=False)
    first = await first_configure(sim, tmp_path, guest)
    second = await crashed_second_configure(sim, tmp_path, guest)
    async with await Journal.open(fast_settings(tmp_path, sim).db) as journal:
        with pytest.raises(UpidTaken):
            await journal.record_upid(second.id, first, now=time.time())
        after = await journal.get(second.id)
        assert await journal.recorded_upids([first, "UPID:none"]) == {first}
    assert (after.state, after.upid) == (OpState.DISPATCHING, None)


async def test_migration_keeps_the_first_holder_of_a_duplicated_upid(tmp_path: Path) -> None:
    """A journal written before 0004 may hold one UPID on two ops: after the migration only
    the older op keeps it (the other's history still has it) and a new duplicate is refused."""
    old = tmp_path / "v3"
    old.mkdir()
    for sql in sorted((REPO / "migrations").glob("000[123]_*.sql")):
        shutil.copy(sql, old / sql.name)
    path = tmp_path / "j.sqlite3"
    async with await Journal.open(path, migrations_dir=old):
        pass
    upid = "UPID:pve1:00001234:01234567:65000000:qmconfig:101:root@pam!lifecycled:"
    raw = sqlite3.connect(path)
    with raw:  # rows as a lifecycled of that schema wrote them (phase beside state)
        first, second = (
            raw.execute(
                "INSERT INTO ops (idempotency_key, action, node, kind, vmid, params, origin,"
                " actor, state, phase, attempts, due_at, created_at, updated_at, upid)"
                " VALUES (?, 'configure', 'pve1', 'qemu', 101, '{}', 'api', 'api', 'pending',"
                " 1, 0, 1, 1, 1, ?) RETURNING id",
                (key, upid),
            ).fetchone()[0]
            for key in ("a", "b")
        )
        raw.executemany(
            "INSERT INTO op_history (op_id, at, from_state, to_state, reason, attempt, upid)"
            " VALUES (?, 1, NULL, 'pending', 'submitted', 0, NULL)",
            [(first,), (second,)],
        )
        raw.execute("UPDATE op_history SET upid = ? WHERE op_id = ?", (upid, second))
    raw.close()
    async with await Journal.open(path) as journal:
        assert (await journal.get(first)).upid_text == upid
        assert (await journal.get(second)).upid_text is None
        assert await journal.recorded_upids([upid]) == {upid}
    raw = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.IntegrityError):
            raw.execute("UPDATE ops SET upid = ? WHERE id = ?", (upid, second))
    finally:
        raw.close()
