"""Recover and a journaled UPID that does not parse (a row written by hand or by an older
version): the op fails safe as before, with the text in its error, and nothing is sent."""

from __future__ import annotations

import time
from pathlib import Path

from engine_support import Crashed, crash_journal, pick, running, seeded, wait_terminal, writes_to

from lifecycled.domain.classify import ErrorClass
from lifecycled.domain.states import OpState
from lifecycled.sim import SimServer

BAD = "UPID:pve1:not-a-task:"


async def test_recover_fails_an_op_whose_journaled_upid_is_invalid(
    sim: SimServer, tmp_path: Path
) -> None:
    """A running op whose UPID does not parse ends failed (permanent, the text kept)."""
    guest = pick(sim, "qemu", False)
    settings = await seeded(sim, tmp_path)
    ids = await crash_journal(
        settings.db, [Crashed(guest=guest, action="start", upid=BAD)], claimed_at=time.time() - 1
    )
    async with running(sim, tmp_path) as rt:
        done = await wait_terminal(rt, ids[guest.vmid])
        history = await rt.journal.history(done.id)
    assert (done.state, done.upid, done.upid_text) == (OpState.FAILED, None, BAD)
    assert done.error is not None
    assert (done.error.error_class, done.error.message) == (ErrorClass.PERMANENT, BAD)
    assert any("journaled UPID is invalid" in h.reason for h in history), history
    assert writes_to(sim, guest.vmid) == []
