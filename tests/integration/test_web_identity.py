"""Identity is never rewritten by a request (issue 10 point 7), over HTTP against the
simulator: create/clone never changes an existing guest's row, re-manage repairs a wrong
fingerprint (audited), and ops for a managed guest take node and kind from the journal."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

from conftest_web import WebEnv, pick, serving
from node_support import pick_on

from lifecycled.domain.guests import GuestRecord
from lifecycled.journal.guests import update_guest
from lifecycled.sim import SimServer


async def call(
    env: WebEnv, method: str, path: str, body: dict[str, Any] | None = None
) -> tuple[int, Any]:
    async with env.http.request(method, path, json=body) as resp:
        return resp.status, await resp.json()


def identity(row: GuestRecord) -> dict[str, Any]:
    """What a request must never rewrite in a guest's row."""
    return {
        "origin": row.origin,
        "node": row.node,
        "kind": row.kind,
        "fingerprint": dict(row.fingerprint),
        "config_snapshot": row.config_snapshot,
        "config_digest": row.config_digest,
        "observed_digest": row.observed_digest,
    }


async def test_create_naming_a_managed_guest_is_refused_and_the_row_kept(
    sim: SimServer, tmp_path: Path
) -> None:
    """create/clone on a present managed guest's vmid: 409 vmid_in_use, row kept."""
    guest = pick(sim, "qemu", running=True)
    source = pick(sim, "qemu", running=False)
    async with serving(sim, tmp_path) as env:
        before = identity(await env.runtime.journal.get_guest(guest.vmid))
        ops_before = await env.op_count()
        for body in (
            {"action": "create", "kind": "qemu", "node": guest.node, "params": {"name": "x"}},
            {"action": "clone", "params": {"source_vmid": source.vmid, "name": "y"}},
        ):
            status, answer = await env.submit(
                {**body, "vmid": guest.vmid, "idempotency_key": f"new-{body['action']}"}
            )
            assert status == 409, answer
            assert answer["error"]["code"] == "vmid_in_use"
        assert await env.op_count() == ops_before
        assert identity(await env.runtime.journal.get_guest(guest.vmid)) == before
        status, stop = await env.submit(
            {"action": "stop", "vmid": guest.vmid, "idempotency_key": "stop-real"}
        )
        assert status == 202, stop
        done = await env.wait_state(stop["id"])
    assert done["state"] == "succeeded", done["error"]
    assert not sim.sim.guests[guest.vmid].running


async def test_an_accepted_create_that_fails_leaves_the_row_alone(
    sim: SimServer, tmp_path: Path
) -> None:
    """An accepted create that fails (vmid taken) leaves the guest's row as it was."""
    guest = pick(sim, "qemu", running=True)
    async with serving(sim, tmp_path) as env:
        journal = env.runtime.journal
        await journal.apply_observations(now=time.time(), missing=[guest.vmid])
        before = identity(await journal.get_guest(guest.vmid))
        status, created = await env.submit(
            {
                "action": "create",
                "vmid": guest.vmid,
                "kind": "qemu",
                "node": guest.node,
                "params": {"name": "intruder", "memory": 512},
                "idempotency_key": "create-over",
            }
        )
        assert status == 202, created
        done = await env.wait_state(created["id"])
        after = identity(await journal.get_guest(guest.vmid))
        status, stop = await env.submit(
            {"action": "stop", "vmid": guest.vmid, "idempotency_key": "stop-after"}
        )
        stopped = await env.wait_state(stop["id"])
    assert done["state"] == "failed"
    assert "already" in done["error"]["message"]
    assert after == before
    assert stopped["state"] == "succeeded", stopped["error"]


async def test_remanage_repairs_a_wrong_fingerprint_audited(sim: SimServer, tmp_path: Path) -> None:
    """Re-manage repairs a wrong fingerprint, audited; the destructive op then passes."""
    guest = pick(sim, "qemu", running=True)
    async with serving(sim, tmp_path) as env:
        journal = env.runtime.journal
        real = dict((await journal.get_guest(guest.vmid)).fingerprint)
        wrong = {"uuid": "00000000-0000-0000-0000-000000000000", "name": "someone-else"}
        await journal._store.write(
            partial(update_guest, vmid=guest.vmid, changes={"fingerprint": wrong}, now=1.0)
        )
        status, refused = await env.submit(
            {"action": "stop", "vmid": guest.vmid, "idempotency_key": "stop-1"}
        )
        assert status == 202
        first = await env.wait_state(refused["id"])
        status, managed = await call(env, "POST", f"/v1/guests/{guest.vmid}/manage")
        assert status == 200, managed
        repaired = await journal.get_guest(guest.vmid)
        audits = (await journal.list_audit(vmid=guest.vmid, action="manage")).items
        status, again = await env.submit(
            {"action": "stop", "vmid": guest.vmid, "idempotency_key": "stop-2"}
        )
        second = await env.wait_state(again["id"])
    assert first["state"] == "failed"
    assert "no longer matches its recorded identity" in first["error"]["message"]
    assert dict(repaired.fingerprint) == real
    assert [a.reason for a in audits if "identity refreshed" in a.reason], audits
    assert second["state"] == "succeeded", second["error"]
    assert not sim.sim.guests[guest.vmid].running


async def test_a_managed_guests_node_and_kind_come_from_the_journal(
    sim: SimServer, tmp_path: Path
) -> None:
    """Another node/kind than the managed guest's row: 409 placement_mismatch naming both, nothing written."""
    guest = pick(sim, "qemu", running=False)
    other = next(n for n in sim.sim.cfg.nodes if n != guest.node)
    async with serving(sim, tmp_path, run=False) as env:
        for field, value in (("node", other), ("kind", "lxc")):
            status, body = await env.submit(
                {"action": "start", "vmid": guest.vmid, field: value, "idempotency_key": field}
            )
            assert status == 409, body
            detail = body["error"]["details"][field]
            assert repr(value) in detail
            assert repr(guest.node if field == "node" else guest.kind) in detail
        assert await env.op_count() == 0
        status, body = await env.submit(
            {"action": "start", "vmid": guest.vmid, "idempotency_key": "plain"}
        )
    assert status == 202, body
    assert body["guest"] == {"node": guest.node, "kind": "qemu", "vmid": guest.vmid}


async def test_a_node_spelled_differently_cannot_bypass_a_drain(
    sim: SimServer, tmp_path: Path
) -> None:
    """A drain refuses a start however the request spells the node (``pve1\\n``)."""
    guest = pick_on(sim, sim.sim.cfg.nodes[0], "qemu", running=False)
    async with serving(sim, tmp_path) as env:
        assert guest.node == env.runtime.settings.primary_node
        status, _ = await call(env, "POST", "/v1/node/drain", {"reason": "maintenance"})
        assert status == 200
        statuses: list[int] = []
        for spelled in (f"{guest.node}\n", guest.node, None):
            body: dict[str, Any] = {"action": "start", "vmid": guest.vmid, "kind": "qemu"}
            if spelled is not None:
                body["node"] = spelled
            status, _ = await env.submit({**body, "idempotency_key": f"s{len(statuses)}"})
            statuses.append(status)
        assert await env.op_count() == 0
    assert all(400 <= s < 600 for s in statuses), statuses
    assert not sim.sim.guests[guest.vmid].running


async def test_a_create_on_a_gone_guests_vmid_records_the_new_guest_once_it_succeeds(
    sim: SimServer, tmp_path: Path
) -> None:
    """A create over a gone guest's vmid records the new guest when it succeeds."""
    guest = pick(sim, "qemu", running=False)
    async with serving(sim, tmp_path) as env:
        journal = env.runtime.journal
        status, _ = await call(env, "POST", f"/v1/guests/{guest.vmid}/adopt")
        assert status == 200
        sim.sim.delete_guest(guest.vmid)
        await journal.apply_observations(now=time.time(), missing=[guest.vmid])
        before = identity(await journal.get_guest(guest.vmid))
        status, created = await env.submit(
            {
                "action": "create",
                "vmid": guest.vmid,
                "kind": "qemu",
                "node": guest.node,
                "params": {"name": "reborn", "memory": 512},
                "idempotency_key": "reborn",
            }
        )
        assert status == 202, created
        done = await env.wait_state(created["id"])
        after = await journal.get_guest(guest.vmid)
    assert before["origin"].value == "adopted"
    assert done["state"] == "succeeded", done["error"]
    assert after.origin.value == "native"
    assert after.fingerprint["name"] == "reborn"
    assert sim.sim.guests[guest.vmid].config["name"] == "reborn"
    assert after.fingerprint["uuid"] in sim.sim.guests[guest.vmid].config["smbios1"]
