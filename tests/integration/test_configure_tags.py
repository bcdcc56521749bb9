"""A configure that sets a guest's ``tags`` keeps its ownership record (SPEC §7), over real
HTTP to a simulator that stores tags as Proxmox does (sorted, lower-cased, each once)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest_web import serving
from engine_support import client_for, fast_settings, journal_op, running, wait_terminal

from lifecycled.domain.ownership import decode, keep_record, key_digest
from lifecycled.domain.states import OpState
from lifecycled.domain.tags import split_tags
from lifecycled.engine.runtime import Runtime
from lifecycled.engine.submit import KeyUsedElsewhere, Submission
from lifecycled.journal import Journal
from lifecycled.sim import SimServer
from lifecycled.sim.rawclient import RawClient

KEYS = ("Order-1:Reboot", "Order-2:Stop", "Order-3:Start")


@contextlib.asynccontextmanager
async def sidecar(sim: SimServer, tmp_path: Path, node: str) -> AsyncIterator[Runtime]:
    where = tmp_path / node
    where.mkdir(exist_ok=True)
    async with running(sim, where, manage_guests=False, node=node, reconcile_interval=3600.0) as rt:
        yield rt


async def op_for(rt: Runtime, action: str, vmid: int, key: str | None = None, **params: Any) -> Any:
    result = await rt.submit(
        Submission(action=action, vmid=vmid, params=params, idempotency_key=key)
    )
    return await wait_terminal(rt, result.op.id)


def tags_of(sim: SimServer, vmid: int) -> list[str]:
    return split_tags(sim.sim.guests[vmid].config.get("tags"))


def own_tags(sim: SimServer, vmid: int) -> list[str]:
    return [t for t in tags_of(sim, vmid) if not t.startswith("lcd.")]


async def keyed_guest(sim: SimServer, rt: Runtime, vmid: int) -> Any:
    """Manage ``vmid`` and run three keyed ops: a record with three key digests."""
    await rt.guests.manage(vmid, actor="test")
    for key in KEYS:
        op = await op_for(rt, key.split(":")[1].lower(), vmid, key=key)
        assert op.state is OpState.SUCCEEDED, (key, op.error)
    record = decode(sim.sim.guests[vmid].config.get("tags"))
    assert record is not None and len(record.last_keys) == 3
    return record


@pytest.mark.parametrize("kind", ["qemu", "lxc"])
async def test_a_tags_configure_keeps_the_record_and_its_keys(
    sim_factory: Any, tmp_path: Path, kind: str
) -> None:
    """configure tags=Prod;web,Prod on a managed guest with three recorded keys: the guest's
    tags are prod;web and the unchanged record; after the guest moves, the target's sidecar
    still refuses each key (one key, one run); delete=tags leaves the record alone."""
    sim = await sim_factory(nodes=("pve1", "pve2"), guests=0)
    sim.sim.create_guest(301, kind=kind, node="pve1", status="running")
    async with sidecar(sim, tmp_path, "pve1") as a, sidecar(sim, tmp_path, "pve2") as b:
        record = await keyed_guest(sim, a, 301)
        op = await op_for(a, "configure", 301, tags="Prod;web,Prod")
        assert op.state is OpState.SUCCEEDED, op.error
        assert own_tags(sim, 301) == ["prod", "web"]
        assert decode(sim.sim.guests[301].config.get("tags")) == record
        sent = [r.params for r in sim.sim.requests if r.path.endswith("/301/config")]
        assert sent[-1]["digest"]  # the tags write was a compare-and-swap

        await a.reconciler.pass_once()  # the journal's copy agrees: nothing rewritten
        assert decode(sim.sim.guests[301].config.get("tags")) == record

        sim.sim.move_guest(301, "pve2")
        await b.reconciler.pass_once()
        assert (await b.journal.get_guest(301)).node == "pve2"
        for key in KEYS:
            with pytest.raises(KeyUsedElsewhere):
                await b.submit(
                    Submission(action=key.split(":")[1].lower(), vmid=301, idempotency_key=key)
                )
            assert await b.journal.by_key(key) is None

        op = await op_for(b, "configure", 301, delete="tags")
        assert op.state is OpState.SUCCEEDED, op.error
        assert own_tags(sim, 301) == []
        assert decode(sim.sim.guests[301].config.get("tags")) == record
    assert record.last_keys == tuple(key_digest(k) for k in reversed(KEYS))


async def test_a_record_written_during_a_tags_configure_is_not_overwritten(
    sim_factory: Any, tmp_path: Path
) -> None:
    """A record write that lands between the configure's config read and its PUT makes the PUT
    fail on the digest read; the op is retried on a fresh read: the guest ends with the new
    tags and the record written meanwhile (here: protected, generation 9)."""
    sim = await sim_factory(nodes=("pve1",), guests=0)
    sim.sim.create_guest(302, kind="lxc", node="pve1", status="running")
    async with sidecar(sim, tmp_path, "pve1") as a:
        await a.guests.manage(302, actor="test")
        newer = sim.sim.guests[302].config["tags"].replace("lcd.g.1", "lcd.g.9") + ";lcd.p;old"
        fault = sim.sim.add_fault(method="PUT", path="/lxc/302/config$", delay=1.0, count=1)
        result = await a.submit(Submission(action="configure", vmid=302, params={"tags": "web"}))
        async with asyncio.timeout(10):  # the PUT has arrived (its read was before it)
            while not any(r.fault == fault.id for r in sim.sim.requests):
                await asyncio.sleep(0.01)
        sim.sim.update_config(302, {"tags": newer}, ())  # another sidecar's record write
        op = await wait_terminal(a, result.op.id)
        assert op.state is OpState.SUCCEEDED, op.error
        assert op.attempts >= 2  # the first PUT was refused on its digest
    assert own_tags(sim, 302) == ["web"]
    written = decode(sim.sim.guests[302].config.get("tags"))
    assert written is not None and written.protected and written.generation == 9


async def test_recover_sees_a_tags_configure_that_reached_proxmox_as_done(
    sim_factory: Any, tmp_path: Path
) -> None:
    """A daemon that crashed right after a container's configure tags=Prod;web (sync PUT, no
    UPID) finds it done at Recover: the tags as Proxmox stores them, beside the record — the
    op succeeds and nothing is sent again."""
    sim = await sim_factory(nodes=("pve1",), guests=0)
    sim.sim.create_guest(303, kind="lxc", node="pve1", status="running")
    async with sidecar(sim, tmp_path, "pve1") as a:
        record = await keyed_guest(sim, a, 303)
    settings = fast_settings(tmp_path / "pve1", sim, node="pve1")
    now = time.time()
    params = {"tags": "Prod;web"}
    async with await Journal.open(settings.db) as journal:
        op = await journal_op(
            journal, sim.sim.guests[303], "configure", "cfg-1", params, now=now - 5
        )
        claimed = await journal.claim_next(now=now - 5)
        assert claimed is not None and claimed.id == op.id
    config = sim.sim.guests[303].config
    sent = keep_record(params, config.get("tags"), sim.sim.guests[303].digest())
    async with RawClient(sim.url, token=sim.cfg.token) as api:  # the PUT the crash followed
        await api.put("/nodes/pve1/lxc/303/config", sent)
    sim.sim.reset_requests()
    runtime = await Runtime.build(settings, pve=client_for(sim))
    try:
        await runtime.recoverer.recover()
        done = await runtime.journal.get(op.id)
    finally:
        await runtime.close()
    assert done.state is OpState.SUCCEEDED, done.error
    assert [r for r in sim.sim.requests if r.method in ("PUT", "POST")] == []
    assert own_tags(sim, 303) == ["prod", "web"]
    assert decode(sim.sim.guests[303].config.get("tags")) == record


@pytest.mark.parametrize(
    ("action", "tags"),
    [
        ("configure", "prod;lcd.o.native"),
        ("configure", "LCD.K.0.0123456789abcdef"),
        ("configure", "Lcd.g.99 web"),
        ("create", "lcd.d.running"),
    ],
)
async def test_a_submission_naming_a_record_tag_is_refused(
    sim: SimServer, tmp_path: Path, action: str, tags: str
) -> None:
    """POST /v1/ops with an lcd. tag in ``tags`` (any case): 422 reserved_tags naming it;
    nothing journaled, nothing sent to Proxmox."""
    vmid = 999 if action == "create" else min(sim.sim.guests)
    async with serving(sim, tmp_path) as env:
        sim.sim.reset_requests()
        status, body = await env.submit(
            {"action": action, "vmid": vmid, "kind": "qemu", "node": "pve1",
             "params": {"tags": tags}}
        )  # fmt: skip
        assert status == 422, body
        assert body["error"]["code"] == "reserved_tags"
        assert (
            "lcd.* tags are lifecycled's ownership record"
            in body["error"]["details"]["params.tags"]
        )
        assert tags.split(";")[-1].split(" ")[0] in body["error"]["message"]
        assert await env.op_count() == 0
    assert [r for r in sim.sim.requests if r.method in ("PUT", "POST")] == []


async def test_a_tags_value_proxmox_would_refuse_is_refused_at_submission(
    sim: SimServer, tmp_path: Path
) -> None:
    """tags outside Proxmox's pve-tag format: 422 validation_failed naming the bad tag (it
    used to be journaled and fail at Proxmox with 400); nothing journaled."""
    async with serving(sim, tmp_path) as env:
        status, body = await env.submit(
            {"action": "configure", "vmid": min(sim.sim.guests), "kind": "qemu",
             "node": "pve1", "params": {"tags": "prod;bad!tag"}}
        )  # fmt: skip
        assert status == 422, body
        assert body["error"]["code"] == "validation_failed"
        assert "bad!tag" in body["error"]["details"]["params.tags"]
        assert await env.op_count() == 0


async def test_the_cli_refuses_a_record_tag_in_one_line(sim: SimServer, tmp_path: Path) -> None:
    """lifecycled submit configure -p tags=lcd.p: one line naming the tag, exit 2, no op."""
    db = tmp_path / "journal.sqlite3"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lifecycled", "submit", "configure", str(min(sim.sim.guests)),
        "--kind", "qemu", "--guest-node", "pve1", "-p", "tags=web;lcd.p", "--db", str(db),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 2, (out, err)
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and "lcd.p" in lines[0] and "ownership record" in lines[0], lines
    assert not db.exists() or await _ops(db) == 0


async def _ops(db: Path) -> int:
    async with await Journal.open(db) as journal:
        return sum((await journal.counts_by_state()).values())
