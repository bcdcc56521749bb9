"""`lifecycled recover --dry-run` shows what Recover would do and changes nothing (SPEC §5)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from engine_support import client_for, pick, seed_guests

from lifecycled.domain.actions import Action
from lifecycled.domain.op import GuestKind, GuestRef, Origin
from lifecycled.journal import Journal, SubmitRequest
from lifecycled.sim import SimServer


async def test_dry_run_plans_without_writing(sim: SimServer, tmp_path: Path) -> None:
    """A finished task → succeeded; a claimed op with no task → failed safe; nothing written."""
    db = tmp_path / "j.sqlite3"
    avoid: set[int] = set()
    done_guest = pick(sim, "qemu", False, avoid=avoid)
    lost_guest = pick(sim, "qemu", False, avoid=avoid)
    await seed_guests(db, [done_guest, lost_guest])
    client = client_for(sim)
    try:
        upid = await client.dispatch(
            done_guest.node, GuestKind.QEMU, Action.START, done_guest.vmid, {}
        )
    finally:
        await client.close()
    assert upid is not None
    await sim.sim.settle(10)
    now = time.time() - 5
    async with await Journal.open(db) as journal:
        for key, guest in (("with-upid", done_guest), ("no-upid", lost_guest)):
            await journal.submit(
                SubmitRequest(
                    idempotency_key=key,
                    action="start",
                    guest=GuestRef(node=guest.node, kind=GuestKind.QEMU, vmid=guest.vmid),
                    params={},
                    origin=Origin.CLI,
                ),
                now=now,
            )
        first = await journal.claim_next(now=now)
        second = await journal.claim_next(now=now)
        assert first is not None and second is not None
        with_upid = first if first.idempotency_key == "with-upid" else second
        await journal.record_upid(with_upid.id, str(upid), now=now)
        before = {op.id: op for op in await journal.in_flight()}
    token = tmp_path / "tok"
    token.write_text(sim.sim.cfg.token + "\n")
    token.chmod(0o600)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lifecycled",
        "recover",
        "--dry-run",
        "--json",
        "--db",
        str(db),
        "--pve-url",
        sim.url,
        "--pve-token-file",
        str(token),
        "--node",
        done_guest.node,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    plan = {row["op_id"]: row for row in json.loads(out)}
    other = next(i for i in before if i != with_upid.id)
    assert plan[with_upid.id]["result"] == "succeeded"
    assert plan[other]["result"] == "failed"
    assert "never sent" in plan[other]["reason"] or "no task" in plan[other]["reason"]
    async with await Journal.open(db) as journal:
        after = {op.id: op for op in await journal.in_flight()}
    assert after == before
