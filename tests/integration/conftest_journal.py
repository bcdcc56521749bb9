"""Helpers shared by the journal integration tests (imported explicitly, not a conftest)."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path
from typing import Any

from lifecycled.audit import AuditRecord, Decision
from lifecycled.domain.classify import ErrorClass
from lifecycled.domain.guests import DesiredState, GuestOrigin, GuestRecord
from lifecycled.domain.op import GuestKind, GuestRef, Op, OpError, Origin
from lifecycled.domain.states import OpState
from lifecycled.journal import Journal, SubmitRequest

T0 = 1_700_000_000.0
BOOM = OpError(error_class=ErrorClass.TRANSIENT, message="HTTP 595: boom")
DENIED = OpError(error_class=ErrorClass.PERMANENT, message="HTTP 403: permission denied")


def guest(vmid: int = 101, node: str = "pve1", kind: GuestKind = GuestKind.QEMU) -> GuestRef:
    return GuestRef(node=node, kind=kind, vmid=vmid)


def request(
    key: str | None = None,
    *,
    action: str = "start",
    vmid: int = 101,
    node: str = "pve1",
    params: dict[str, Any] | None = None,
    actor: str = "api",
) -> SubmitRequest:
    return SubmitRequest(
        idempotency_key=key,
        action=action,
        guest=guest(vmid, node),
        params=params or {},
        origin=Origin.API,
        actor=actor,
    )


async def submit(journal: Journal, key: str | None = None, **kw: Any) -> Op:
    now = kw.pop("now", T0)
    return (await journal.submit(request(key, **kw), now=now)).op


async def to_state(
    journal: Journal, state: OpState, *, vmid: int = 101, key: str | None = None
) -> Op:
    """A new op driven through the normal verbs into ``state``.

    Claims take the oldest due op: create pending ops *after* the ones driven further.
    """
    op = await submit(journal, key, vmid=vmid)
    if state is OpState.PENDING:
        return op
    if state is OpState.CANCELLED:
        return await journal.cancel(op.id, now=T0 + 1, reason="test cancel")
    claimed = await journal.claim_next(now=T0 + 1)
    assert claimed is not None and claimed.id == op.id, "an older pending op was claimed"
    if state is OpState.DISPATCHING:
        return claimed
    running = await journal.record_upid(op.id, f"UPID:pve1:{op.id:08X}:test:", now=T0 + 2)
    if state is OpState.RUNNING:
        return running
    if state is OpState.DEAD_LETTERED:
        return await journal.dead_letter(op.id, now=T0 + 3, reason="retries exhausted", error=BOOM)
    error = DENIED if state is OpState.FAILED else None
    return await journal.finish(op.id, state, now=T0 + 3, reason="task done", error=error)


def raw_rows(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows read with a separate plain sqlite3 connection (what is really on disk)."""
    conn = sqlite3.connect(path)
    try:
        return list(conn.execute(sql, params))
    finally:
        conn.close()


def managed_guest(vmid: int, *, desired: DesiredState | None = None, at: float = T0) -> GuestRecord:
    """A native (managed) QEMU guest's journal row on pve1."""
    return GuestRecord(
        vmid=vmid,
        node="pve1",
        kind=GuestKind.QEMU,
        origin=GuestOrigin.NATIVE,
        desired_state=desired,
        created_at=at,
        updated_at=at,
    )


def manage_audit(vmid: int, *, at: float = T0) -> AuditRecord:
    """The audit record that takes ``vmid`` into management."""
    return AuditRecord(
        at=at, actor="test", action="manage", decision=Decision.MANAGED, reason="t", vmid=vmid
    )


async def run_cli(*args: str) -> tuple[int, str, str]:
    """``python -m lifecycled ARGS`` in a subprocess (another process on the journal):
    its exit code, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lifecycled",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()
