"""An op's UPID is parsed once, when the journal builds the record (issue 12): the parsed
``Op.upid`` for the engine, the journaled text ``Op.upid_text`` for every face — also when the
text does not parse (a row written by hand or by an older version)."""

from __future__ import annotations

import pytest
from conftest_journal import T0, to_state

from lifecycled.domain.op import GuestKind
from lifecycled.domain.serialize import op_to_dict
from lifecycled.domain.states import OpState
from lifecycled.domain.upid import Upid
from lifecycled.errors import NotFound, UpidTaken
from lifecycled.journal import Journal

TEXT = "UPID:pve1:0000A1B2:00C0FFEE:65B2C3D4:qmstart:101:lifecycled@pve!ci:"


async def test_a_loaded_op_carries_its_upid_parsed(journal: Journal) -> None:
    """record_upid's answer and a later read both hold the UPID parsed, and its text as given."""
    op = await to_state(journal, OpState.DISPATCHING)
    recorded = await journal.record_upid(op.id, TEXT, now=T0 + 2)
    loaded = await journal.get(op.id)
    for record in (recorded, loaded):
        assert record.upid == Upid.parse(TEXT)
        assert (record.upid_text, record.has_invalid_upid) == (TEXT, False)
    assert loaded.upid is not None
    assert (loaded.upid.node, loaded.upid.type, loaded.upid.id) == ("pve1", "qmstart", "101")
    assert loaded.guest.kind is GuestKind.QEMU


async def test_an_unparsable_journaled_upid_keeps_its_text(journal: Journal) -> None:
    """A stored text that is no UPID loads as upid None, flagged, its text shown unchanged."""
    op = await to_state(journal, OpState.DISPATCHING)
    await journal.record_upid(op.id, "UPID:written-by-hand", now=T0 + 2)
    loaded = await journal.get(op.id)
    assert (loaded.upid, loaded.upid_text, loaded.has_invalid_upid) == (
        None,
        "UPID:written-by-hand",
        True,
    )
    assert op_to_dict(loaded)["upid"] == "UPID:written-by-hand"


async def test_the_json_shows_the_journaled_text_not_a_reformatted_upid(journal: Journal) -> None:
    """Lower-case hex parses, but the op's JSON keeps the text exactly as journaled."""
    lower = TEXT.replace("A1B2", "a1b2")
    op = await to_state(journal, OpState.DISPATCHING)
    await journal.record_upid(op.id, lower, now=T0 + 2)
    loaded = await journal.get(op.id)
    assert loaded.upid == Upid.parse(TEXT)
    assert op_to_dict(loaded)["upid"] == lower


async def test_a_upid_held_by_another_op_is_refused_wherever_that_op_keeps_it(
    journal: Journal,
) -> None:
    """A UPID in another op's row, or only in its history (that op was requeued), is refused
    naming the holder, and nothing changes; an op may take back its own earlier UPID; an
    unknown op is NotFound — unless its UPID is taken, which is said first."""
    holder = await to_state(journal, OpState.RUNNING, vmid=101)
    requeued = await to_state(journal, OpState.RUNNING, vmid=102)
    old = requeued.upid_text
    assert old is not None and holder.upid_text is not None
    await journal.requeue(requeued.id, now=T0 + 3, next_attempt_at=T0 + 3, reason="retry")
    taker = await to_state(journal, OpState.DISPATCHING, vmid=103)
    for taken, by in ((holder.upid_text, holder.id), (old, requeued.id)):
        with pytest.raises(UpidTaken) as refused:
            await journal.record_upid(taker.id, taken, now=T0 + 4)
        assert refused.value.holder == by
        assert await journal.get(taker.id) == taker
        assert len(await journal.history(taker.id)) == 2
    with pytest.raises(UpidTaken):
        await journal.record_upid(9999, old, now=T0 + 4)
    with pytest.raises(NotFound):
        await journal.record_upid(9999, "UPID:pve1:0000FFFF:free:", now=T0 + 4)
    again = await journal.claim_next(now=T0 + 4)
    assert again is not None and again.id == requeued.id
    back = await journal.record_upid(requeued.id, old, now=T0 + 5)
    assert (back.state, back.upid_text) == (OpState.RUNNING, old)
