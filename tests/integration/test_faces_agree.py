"""The HTTP API and the CLI offer one semantics (lifecycled.engine.services): each operator
request, made through each face on equal journals, leaves identical journal rows and audit.

The HTTP face is the real server over loopback (``serving``); the CLI is the real
``lifecycled`` as a subprocess on its own copy of the journal.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest_web import serving

from lifecycled.domain.classify import ErrorClass
from lifecycled.domain.op import GuestKind, GuestRef, OpError, Origin
from lifecycled.domain.serialize import op_to_dict
from lifecycled.domain.states import OpState
from lifecycled.journal import Journal, SubmitRequest
from lifecycled.sim import SimServer

LIFECYCLED = Path(sys.executable).parent / "lifecycled"
T0 = 1_700_000_000.0
VMID = 4242
ERROR = OpError(error_class=ErrorClass.TRANSIENT, message="HTTP 595: no route")

#: How an op is made before the request: a path through the journal's verbs.
SEEDS = ("dead", "discarded", "retried", "failed", "cancelled", "pending", "running", "succeeded")


async def _seed(db: Path, how: str) -> int:
    """One op on a fresh journal, brought to ``how`` with fixed times (equal journals)."""
    async with await Journal.open(db) as journal:
        req = SubmitRequest(
            idempotency_key="faces-1",
            action="start",
            guest=GuestRef(node="pve1", kind=GuestKind.QEMU, vmid=VMID),
            params={},
            origin=Origin.API,
            actor="api:alice",
        )
        op = (await journal.submit(req, now=T0)).op
        if how == "pending":
            return op.id
        if how == "cancelled":
            await journal.cancel(op.id, now=T0 + 1, reason="cancelled by api:alice")
            return op.id
        await journal.claim_next(now=T0 + 1, nodes={"pve1"})
        await journal.record_upid(
            op.id, "UPID:pve1:0000A1B2:00C0FFEE:65000000:qmstart:4242:x@pam:", now=T0 + 2
        )
        if how == "running":
            return op.id
        if how == "succeeded":
            await journal.finish(op.id, OpState.SUCCEEDED, now=T0 + 3, reason="OK", exitstatus="OK")
        elif how == "failed":
            await journal.finish(op.id, OpState.FAILED, now=T0 + 3, reason="refused", error=ERROR)
        else:
            await journal.dead_letter(op.id, now=T0 + 3, reason="2 attempts failed", error=ERROR)
            if how == "discarded":
                await journal.discard(op.id, now=T0 + 4, reason="discarded by api:alice")
            elif how == "retried":
                await journal.retry(op.id, now=T0 + 4, reason="retried by api:alice")
        return op.id


_TIMES = ("created_at", "updated_at", "finished_at", "next_attempt_at")


def _actorless(text: str) -> str:
    return text.replace("api:alice", "<actor>").replace("by cli", "by <actor>")


async def _journal_state(db: Path, op_id: int) -> dict[str, Any]:
    """What the request left: the op (times aside), its history, discarded or not, audit."""
    async with await Journal.open(db, create=False) as journal:
        record = await journal.get(op_id)
        op = op_to_dict(record)
        history = [
            (str(h.from_state), str(h.to_state), h.attempt, _actorless(h.reason), h.upid)
            for h in await journal.history(op_id)
        ]
        discarded = record.discarded_at is not None
        audit = [(r.action, str(r.decision), r.vmid) for r in (await journal.list_audit()).items]
    for key in _TIMES:
        op.pop(key, None)
    return {"op": op, "history": history, "discarded": discarded, "audit": audit}


_HTTP = {
    "retry": ("POST", "/v1/dead-letters/{id}/retry"),
    "discard": ("DELETE", "/v1/dead-letters/{id}"),
    "cancel": ("POST", "/v1/ops/{id}/cancel"),
}
_CLI = {
    "retry": ("dlq", "retry"),
    "discard": ("dlq", "discard"),
    "cancel": ("ops", "cancel"),
}


def _cli(*args: str, cwd: Path) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLED_")}
    done = subprocess.run(
        [str(LIFECYCLED), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in done.stderr + done.stdout
    return done.returncode


@pytest.mark.parametrize("verb", sorted(_HTTP))
@pytest.mark.parametrize("how", SEEDS)
async def test_http_and_cli_leave_identical_journals(
    sim: SimServer, tmp_path: Path, verb: str, how: str
) -> None:
    """retry, discard and cancel through HTTP and through the CLI, on equal journals: the
    same op row, history (but the actor's name) and audit; refused by both or neither."""
    web_dir, cli_dir = tmp_path / "web", tmp_path / "cli"
    web_dir.mkdir()
    cli_dir.mkdir()
    web_db, cli_db = web_dir / "journal.sqlite3", cli_dir / "journal.sqlite3"
    op_id = await _seed(web_db, how)
    assert await _seed(cli_db, how) == op_id
    assert await _journal_state(web_db, op_id) == await _journal_state(cli_db, op_id)

    method, path = _HTTP[verb]
    async with serving(sim, web_dir, run=False, manage_guests=False) as env:
        resp = await env.http.request(method, path.format(id=op_id))
        http_ok = resp.status == 200
        assert resp.status in (200, 404, 409), await resp.text()
        resp.release()
    code = await asyncio.to_thread(_cli, *_CLI[verb], str(op_id), "--db", str(cli_db), cwd=cli_dir)
    assert code in (0, 1)

    assert http_ok is (code == 0), (verb, how)
    assert await _journal_state(web_db, op_id) == await _journal_state(cli_db, op_id)
