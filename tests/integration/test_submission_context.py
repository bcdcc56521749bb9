"""A submission's journal reads in one statement (``Guests.submission_context``): the guest's
row (its head), the served node's state and the key's op — what ``find_guest``, ``get_node`` and
``by_key`` read, on a real SQLite file, and fresh per call when another writer changes them."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
from conftest_journal import T0

from lifecycled.domain.guests import (
    DesiredState,
    GuestFacts,
    GuestHead,
    GuestOrigin,
    GuestRecord,
)
from lifecycled.domain.node import NodeState
from lifecycled.domain.op import GuestKind, GuestRef, Origin
from lifecycled.journal import Journal, SubmitRequest
from lifecycled.journal.guests import insert_guest, submission_read

NODE = "pve1"


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    async with await Journal.open(tmp_path / "j.sqlite3") as j:
        await j.ensure_node(NODE, now=T0, actor="test")
        for vmid in (100, 101):
            rec = GuestRecord(
                vmid=vmid,
                node=NODE,
                kind=GuestKind.QEMU,
                origin=GuestOrigin.NATIVE,
                desired_state=DesiredState.RUNNING,
                config_snapshot={"name": f"vm-{vmid}", "cores": 2},
                fingerprint={"smbios1": f"uuid-{vmid}"},
                created_at=T0,
                updated_at=T0,
            )
            await j._store.write(partial(insert_guest, rec=rec))
        yield j


def _head(row: GuestRecord | None) -> GuestHead | None:
    """The head of a full row, as the submission context reads it."""
    if row is None:
        return None
    return GuestHead(
        vmid=row.vmid,
        node=row.node,
        kind=row.kind,
        origin=row.origin,
        desired_state=row.desired_state,
        desired_generation=row.desired_generation,
    )


def _request(key: str, vmid: int) -> SubmitRequest:
    return SubmitRequest(
        idempotency_key=key,
        action="start",
        guest=GuestRef(node=NODE, kind=GuestKind.QEMU, vmid=vmid),
        params={},
        origin=Origin.API,
    )


async def test_it_reads_what_the_three_reads_read(journal: Journal) -> None:
    """Guest row, node state and key op equal find_guest, get_node and by_key's, in every
    combination of present and absent."""
    op = (await journal.submit(_request("k1", 100), now=T0)).op
    for vmid in (100, 999):
        for served in (NODE, "elsewhere"):
            for key in ("k1", "k-unknown", None):
                got = await journal.guests.submission_context(vmid, served=served, key=key)
                node = await journal.get_node(served)
                assert got.guest == _head(await journal.find_guest(vmid))
                assert got.served_state == (node.state if node is not None else None)
                assert got.existing == (await journal.by_key(key) if key else None)
    found = await journal.guests.submission_context(100, served=NODE, key="k1")
    assert found.existing == op and found.served_state is NodeState.READY
    assert found.guest == GuestHead(
        vmid=100,
        node=NODE,
        kind=GuestKind.QEMU,
        origin=GuestOrigin.NATIVE,
        desired_state=DesiredState.RUNNING,
        desired_generation=0,
    )


async def test_another_writer_s_change_is_read_at_once(journal: Journal) -> None:
    """Another connection to the file (the CLI's) drains the node, changes the guest's desired
    state and journals the key: the next call reads all three (nothing is cached)."""
    before = await journal.guests.submission_context(101, served=NODE, key="k2")
    assert before.existing is None and before.served_state is not NodeState.DRAINING
    other = sqlite3.connect(journal.path)
    try:
        with other:
            other.execute("UPDATE node_state SET state = 'draining' WHERE node = ?", (NODE,))
            other.execute("UPDATE guests SET desired_state = 'stopped' WHERE vmid = 101")
    finally:
        other.close()
    await journal.submit(_request("k2", 101), now=T0)
    after = await journal.guests.submission_context(101, served=NODE, key="k2")
    assert after.served_state is NodeState.DRAINING
    assert after.guest is not None and after.guest.desired_state is DesiredState.STOPPED
    assert after.existing is not None and after.existing.idempotency_key == "k2"


async def test_the_policy_s_facts_are_the_row_s(journal: Journal) -> None:
    """``guest_safety`` reads origin, fingerprint and protection as the full row has them,
    fresh after another connection protects the guest; empty facts without a row."""
    row = await journal.find_guest(100)
    assert row is not None
    assert await journal.guests.guest_safety(100) == GuestFacts(
        origin=row.origin, fingerprint=row.fingerprint, protected=row.protected
    )
    assert await journal.guests.guest_safety(999) == GuestFacts()
    other = sqlite3.connect(journal.path)
    try:
        with other:
            other.execute("UPDATE guests SET protected = 1 WHERE vmid = 100")
    finally:
        other.close()
    found = await journal.guests.guest_safety(100)
    assert found.protected and found.fingerprint == {"smbios1": "uuid-100"}


async def test_the_write_guard_reads_the_row_s_head(journal: Journal) -> None:
    """``submission_read`` (the submission guard's read in the writer) holds the full row's
    head; ``None`` without a row."""
    for vmid in (100, 999):
        got = await journal._store.write(partial(submission_read, key=None, vmid=vmid))
        assert got.head == _head(await journal.find_guest(vmid))
