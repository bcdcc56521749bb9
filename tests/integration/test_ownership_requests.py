"""What the ownership record (SPEC §7) costs one op in Proxmox requests, and the drift baseline
that follows lifecycled's own tag writes without a read of its own (SPEC §3): the simulator
over real HTTP, its request log counted."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from engine_support import manage, pick, running, submit, wait_terminal

from lifecycled.domain.guests import DesiredState
from lifecycled.domain.op import GuestKind
from lifecycled.domain.ownership import decode, key_digest
from lifecycled.domain.states import OpState
from lifecycled.engine.runtime import Runtime
from lifecycled.sim import SimServer
from lifecycled.sim.model import Guest


def config_requests(sim: SimServer, vmid: int, since: int) -> Counter[str]:
    """``GET``/``PUT`` of the guest's ``…/config`` since request ``since``."""
    return Counter(
        r.method for r in sim.sim.requests_since(since) if r.path.endswith(f"/{vmid}/config")
    )


def last_seq(sim: SimServer) -> int:
    return sim.sim.requests[-1].seq if sim.sim.requests else 0


def running_guest(sim: SimServer) -> Guest:
    return pick(sim, "qemu", True, where=lambda g: g.node == "pve1")


async def shutdown(rt: Runtime, guest: Guest, key: str) -> None:
    op = await submit(rt, "shutdown", guest, key=key)
    assert (await wait_terminal(rt, op.id)).state is OpState.SUCCEEDED


async def test_one_op_reads_the_config_once_and_writes_the_record_once(
    sim: SimServer, tmp_path: Path
) -> None:
    """A shutdown of a managed guest costs one config GET and one PUT (was three GETs)."""
    guest = running_guest(sim)
    async with running(sim, tmp_path, manage_guests=False) as rt:
        await manage(rt, guest)
        seq = last_seq(sim)
        await shutdown(rt, guest, "k-1")
        assert config_requests(sim, guest.vmid, seq) == Counter({"GET": 1, "PUT": 1})
        record = decode(sim.sim.guests[guest.vmid].config.get("tags"))
        assert record is not None and record.desired is DesiredState.STOPPED
        assert record.last_keys == (key_digest("k-1"),)  # the key recorded before the journal


async def test_a_desired_state_change_reads_the_config_once(sim: SimServer, tmp_path: Path) -> None:
    """PUT …/desired costs one config GET and one PUT (was three GETs)."""
    guest = running_guest(sim)
    async with running(sim, tmp_path, manage_guests=False) as rt:
        await manage(rt, guest)
        seq = last_seq(sim)
        await rt.guests.set_desired(guest.vmid, DesiredState.STOPPED, actor="test")
        assert config_requests(sim, guest.vmid, seq) == Counter({"GET": 1, "PUT": 1})
        assert (await rt.journal.get_guest(guest.vmid)).desired_generation == 2


async def test_a_config_change_between_read_and_write_is_retried_and_kept(
    sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator's change lands between our config read and our tag PUT: Proxmox refuses
    the stale digest, we re-read and write again — the record and the key are in the tags,
    the operator's change is kept, and it is reported as drift."""
    guest = running_guest(sim)
    async with running(sim, tmp_path, manage_guests=False) as rt:
        await manage(rt, guest)
        assert (await rt.reconciler.pass_once()).drifted == []
        cluster = rt.guests.cluster
        assert cluster is not None
        original = cluster.pve.set_tags
        raced: list[int] = []

        async def racing(*args: Any, **kwargs: Any) -> None:
            if not raced:  # once: the operator's change between our read and our write
                raced.append(1)
                sim.sim.update_config(guest.vmid, {"cores": 7})
            await original(*args, **kwargs)

        monkeypatch.setattr(cluster.pve, "set_tags", racing)
        seq = last_seq(sim)
        await shutdown(rt, guest, "k-race")
        assert config_requests(sim, guest.vmid, seq) == Counter({"GET": 2, "PUT": 2})
        refused = [
            r
            for r in sim.sim.requests_since(seq)
            if r.method == "PUT" and r.status is not None and r.status >= 400
        ]
        assert len(refused) == 1
        config = sim.sim.guests[guest.vmid].config
        record = decode(config.get("tags"))
        assert record is not None and record.desired is DesiredState.STOPPED
        assert key_digest("k-race") in record.last_keys
        assert str(config["cores"]) == "7"
        monkeypatch.undo()
        report = await rt.reconciler.pass_once()
        assert report.drifted == [guest.vmid]


async def test_our_own_tag_write_is_not_drift_and_the_baseline_learns_its_digest(
    sim: SimServer, tmp_path: Path
) -> None:
    """Two ops write the tags twice with no read of their own: the next pass reports no drift
    and the baseline's digest is the config's real one."""
    guest = running_guest(sim)
    async with running(sim, tmp_path, manage_guests=False) as rt:
        await manage(rt, guest)
        assert (await rt.reconciler.pass_once()).drifted == []
        await shutdown(rt, guest, "k-a")
        op = await submit(rt, "start", guest, key="k-b")
        assert (await wait_terminal(rt, op.id)).state is OpState.SUCCEEDED
        assert (await rt.reconciler.pass_once()).drifted == []
        row = await rt.journal.get_guest(guest.vmid)
        digest = sim.sim.guests[guest.vmid].digest()
        assert (row.config_digest, row.observed_digest) == (digest, digest)
        assert (await rt.reconciler.pass_once()).drifted == []


async def test_a_restart_between_our_tag_write_and_the_next_read_is_not_drift(
    sim: SimServer, tmp_path: Path
) -> None:
    """The baseline awaiting its digest is in the journal: a daemon restarted after the tag
    write reports no drift."""
    guest = running_guest(sim)
    async with running(sim, tmp_path, manage_guests=False) as rt:
        await manage(rt, guest)
        await shutdown(rt, guest, "k-r")
    async with running(sim, tmp_path, manage_guests=False) as rt:
        assert (await rt.reconciler.pass_once()).drifted == []
        row = await rt.journal.get_guest(guest.vmid)
        assert row.config_digest == sim.sim.guests[guest.vmid].digest()


@pytest.mark.parametrize(
    "change",
    [{"cores": 7}, {"tags": "prod"}, {"description": "edited"}],
    ids=["value", "own-tag", "new-key"],
)
async def test_an_out_of_band_change_right_after_our_tag_write_is_drift(
    sim: SimServer, tmp_path: Path, change: dict[str, Any]
) -> None:
    """An operator's change right after our tag write (before any read) is drift — a value,
    a tag of their own beside ours, a new key — never taken as our write's new baseline."""
    guest = running_guest(sim)
    async with running(sim, tmp_path, manage_guests=False) as rt:
        await manage(rt, guest)
        assert (await rt.reconciler.pass_once()).drifted == []
        await shutdown(rt, guest, "k-d")
        values = dict(change)
        if "tags" in values:
            values["tags"] = f"{sim.sim.guests[guest.vmid].config['tags']};{values['tags']}"
        sim.sim.update_config(guest.vmid, values)
        report = await rt.reconciler.pass_once()
        assert report.drifted == [guest.vmid]
        assert [g.vmid for g in (await rt.journal.list_guests(drifted=True)).items] == [guest.vmid]
        assert (await rt.reconciler.pass_once()).drifted == [guest.vmid]  # and it stays


async def test_a_change_after_our_tag_write_is_drift_even_when_the_next_op_reads_first(
    sim: SimServer, tmp_path: Path
) -> None:
    """The operator's change lands after our write and before the next op's record read: that
    op's write does not take it in, the next pass reports it."""
    guest = running_guest(sim)
    async with running(sim, tmp_path, manage_guests=False) as rt:
        await manage(rt, guest)
        assert (await rt.reconciler.pass_once()).drifted == []
        await shutdown(rt, guest, "k-1")
        sim.sim.update_config(guest.vmid, {"cores": 7})
        op = await submit(rt, "start", guest, key="k-2")
        assert (await wait_terminal(rt, op.id)).state is OpState.SUCCEEDED
        assert (await rt.reconciler.pass_once()).drifted == [guest.vmid]


async def test_a_drift_read_taken_before_our_write_landed_leaves_the_baseline_waiting(
    sim: SimServer, tmp_path: Path
) -> None:
    """A drift check that read the config just before our tag write and records it just after
    is taken against the row as it is then: still awaiting our digest, no drift; the next
    read learns it."""
    guest = running_guest(sim)
    async with running(sim, tmp_path, manage_guests=False) as rt:
        await manage(rt, guest)
        cluster = rt.guests.cluster
        assert cluster is not None
        before = await cluster.pve.guest_config(guest.node, GuestKind(guest.kind), guest.vmid)
        await rt.guests.set_desired(guest.vmid, DesiredState.STOPPED, actor="test")
        early = {guest.vmid: (before.digest, dict(before.values))}
        assert await rt.journal.record_digests(early, now=1.0) == []
        row = await rt.journal.get_guest(guest.vmid)
        assert (row.config_digest, row.observed_digest) == (before.digest, None)
        after = await cluster.pve.guest_config(guest.node, GuestKind(guest.kind), guest.vmid)
        late = {guest.vmid: (after.digest, dict(after.values))}
        assert await rt.journal.record_digests(late, now=2.0) == []
        row = await rt.journal.get_guest(guest.vmid)
        assert (row.config_digest, row.observed_digest) == (after.digest, after.digest)


async def test_a_submission_first_brings_tags_behind_the_journal_up_to_it(
    sim: SimServer, tmp_path: Path
) -> None:
    """An op accepted while its tags could not be written leaves the journal a generation
    ahead; the next submission (which reuses the guest row it read for placement) reads the
    row again, pushes it to the tags, then records its own op there: the tags end at the
    journal's generation, with the newest desired state and key."""
    guest = running_guest(sim)
    async with running(sim, tmp_path, manage_guests=False) as rt:
        await manage(rt, guest)
        sim.sim.add_fault(
            method="PUT", path=f"/{guest.vmid}/config$", status=500, reason="boom", count=1
        )
        await shutdown(rt, guest, "k-1")  # journaled; its tag write deferred
        row = await rt.journal.get_guest(guest.vmid)
        behind = decode(sim.sim.guests[guest.vmid].config.get("tags"))
        assert behind is not None and behind.generation < row.desired_generation
        op = await submit(rt, "start", guest, key="k-2")
        assert (await wait_terminal(rt, op.id)).state is OpState.SUCCEEDED
        row = await rt.journal.get_guest(guest.vmid)
        record = decode(sim.sim.guests[guest.vmid].config.get("tags"))
        assert record is not None and record.desired is DesiredState.RUNNING
        assert record.generation == row.desired_generation > behind.generation + 1
        assert key_digest("k-2") in record.last_keys
