"""`lifecycled dlq show` includes the tail of the task log when Proxmox is reachable (issue 5)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from conftest_journal import run_cli
from engine_support import client_for, pick

from lifecycled.domain.actions import Action
from lifecycled.domain.classify import ErrorClass
from lifecycled.domain.op import GuestKind, GuestRef, OpError, Origin
from lifecycled.journal import Journal, SubmitRequest
from lifecycled.sim import SimServer


async def _dead_letter_with_task(sim: SimServer, db: Path) -> tuple[int, str]:
    guest = pick(sim, "qemu", False)
    client = client_for(sim)
    try:
        upid = await client.dispatch(guest.node, GuestKind.QEMU, Action.START, guest.vmid, {})
    finally:
        await client.close()
    assert upid is not None
    await sim.sim.settle(10)
    now = time.time()
    async with await Journal.open(db) as journal:
        res = await journal.submit(
            SubmitRequest(
                idempotency_key="dl",
                action="start",
                guest=GuestRef(node=guest.node, kind=GuestKind.QEMU, vmid=guest.vmid),
                params={},
                origin=Origin.CLI,
            ),
            now=now,
        )
        op = await journal.claim_next(now=now)
        assert op is not None and op.id == res.op.id
        await journal.record_upid(op.id, str(upid), now=now)
        await journal.dead_letter(
            op.id,
            now=now,
            reason="test",
            error=OpError(error_class=ErrorClass.TRANSIENT, message="x"),
        )
    return op.id, str(upid)


async def test_dlq_show_tails_the_task_log(sim: SimServer, tmp_path: Path) -> None:
    """With Proxmox credentials the JSON carries the task log's last lines and the UPID."""
    db = tmp_path / "j.sqlite3"
    op_id, upid = await _dead_letter_with_task(sim, db)
    token = tmp_path / "tok"
    token.write_text(sim.sim.cfg.token + "\n")
    token.chmod(0o600)
    code, out, err = await run_cli(
        "dlq",
        "show",
        str(op_id),
        "--db",
        str(db),
        "--json",
        "--pve-url",
        sim.url,
        "--pve-token-file",
        str(token),
    )
    assert code == 0, err
    shown: dict[str, Any] = json.loads(out)
    assert shown["last_upid"] == upid
    assert shown["task_log_unavailable"] is None
    assert shown["task_log"] and shown["task_log"][-1] == "TASK OK"
    assert [h["to"] for h in shown["history"]][-1] == "dead_lettered"


async def test_dlq_show_without_proxmox_says_why(sim: SimServer, tmp_path: Path) -> None:
    """Without credentials, or with Proxmox down, the op still shows and the reason is given."""
    db = tmp_path / "j.sqlite3"
    op_id, _ = await _dead_letter_with_task(sim, db)
    code, out, _ = await run_cli("dlq", "show", str(op_id), "--db", str(db), "--json")
    assert code == 0
    assert "pve-token-file" in json.loads(out)["task_log_unavailable"]
    token = tmp_path / "tok"
    token.write_text(sim.sim.cfg.token + "\n")
    token.chmod(0o600)
    code, out, _ = await run_cli(
        "dlq",
        "show",
        str(op_id),
        "--db",
        str(db),
        "--json",
        "--pve-url",
        "http://127.0.0.1:9",
        "--pve-token-file",
        str(token),
    )
    assert code == 0
    assert json.loads(out)["task_log_unavailable"].startswith("Proxmox could not be read")
