"""Node lifecycle over real HTTP: drain refusals, undrain, decommission refusals (SPEC §4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest_web import WebEnv, serving
from node_support import manage, pick_on

from lifecycled.sim import SimServer


async def post(env: WebEnv, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    async with env.http.post(path, json=body) as resp:
        return resp.status, await resp.json()


async def refused_audit(env: WebEnv, action: str) -> list[Any]:
    page = await env.runtime.journal.list_audit(action=action, decision="refused")
    return page.items


async def test_runtime_start_makes_the_node_active_and_status_shows_it(
    sim: SimServer, tmp_path: Path
) -> None:
    """After start the node is active (first seen now); /v1/node and /v1/status say so."""
    async with serving(sim, tmp_path) as env:
        status, node = await env.get_json("/v1/node")
        assert status == 200
        assert node["node"] == "pve1" and node["state"] == "active"
        assert node["is_system"] is False and node["signatures_required"] is False
        assert node["age_seconds"] < 60
        status, body = await env.get_json("/v1/status")
        assert body["node_state"] == "active"
        records = (await env.runtime.journal.list_audit()).items
        for served in env.runtime.settings.nodes:  # every served node is registered and active
            assert [r.action for r in records if r.node == served] == ["activate", "register"]


async def test_draining_refuses_new_guests_with_503_and_audits_while_stop_works(
    sim: SimServer, tmp_path: Path
) -> None:
    """start/create/clone/inbound migrate → 503 node_draining (audited, nothing journaled);
    stop is still accepted; after undrain start is accepted again."""
    stopped = pick_on(sim, "pve1", "qemu", running=False)
    running = pick_on(sim, "pve1", "qemu", running=True)
    remote = pick_on(sim, "pve2", "qemu", running=False)
    await manage(tmp_path / "journal.sqlite3", stopped, running, remote)
    async with serving(sim, tmp_path) as env:
        status, drained = await post(env, "/v1/node/drain", {"reason": "kernel update"})
        assert status == 200, drained
        assert drained["changed"] is True and drained["previous"] == "active"
        assert drained["node"]["state"] == "draining"
        assert drained["node"]["reason"] == "kernel update"
        status, again = await post(env, "/v1/node/drain")
        assert status == 200 and again["changed"] is False

        refused: list[dict[str, Any]] = [
            {"action": "start", "vmid": stopped.vmid, "kind": "qemu", "node": "pve1"},
            {"action": "create", "vmid": 9001, "kind": "qemu", "params": {"memory": 512}},
            {"action": "clone", "vmid": 9002, "params": {"source_vmid": stopped.vmid}},
            {
                "action": "migrate",
                "vmid": remote.vmid,
                "kind": remote.kind,
                "node": "pve2",
                "params": {"target": "pve1"},
            },
        ]
        for body in refused:
            async with env.http.post("/v1/ops", json=body) as resp:
                answer = await resp.json()
                assert resp.status == 503, (body, answer)
                assert answer["error"]["code"] == "node_draining"
                assert "draining" in answer["error"]["message"]
                assert answer["error"]["details"]["node_state"] == "draining"
                assert int(resp.headers["Retry-After"]) > 0
        assert await env.op_count() == 0
        for body in refused:
            records = await refused_audit(env, body["action"])
            assert len(records) == 1, body
            assert records[0].reason.startswith("node_draining:")
            assert records[0].actor == "api:alice"

        status, stop = await env.submit(
            {"action": "stop", "vmid": running.vmid, "kind": "qemu", "node": "pve1"}
        )
        assert status == 202 and stop["state"] == "pending"
        status, body = await env.get_json("/v1/status")
        assert body["node_state"] == "draining"

        status, undrained = await post(env, "/v1/node/undrain")
        assert status == 200 and undrained["node"]["state"] == "active"
        status, _ = await env.submit(refused[0])
        assert status == 202


async def test_a_resubmitted_key_is_deduplicated_not_refused_while_draining(
    sim: SimServer, tmp_path: Path
) -> None:
    """A client retrying a start it already got accepted gets its op back, not a 503."""
    guest = pick_on(sim, "pve1", "lxc", running=False)
    body = {"action": "start", "vmid": guest.vmid, "kind": "lxc", "node": "pve1"}
    await manage(tmp_path / "journal.sqlite3", guest)
    async with serving(sim, tmp_path, run=False) as env:
        status, first = await env.submit({**body, "idempotency_key": "order-7-start"})
        assert status == 202
        await post(env, "/v1/node/drain")
        status, again = await env.submit({**body, "idempotency_key": "order-7-start"})
        assert status == 200 and again["id"] == first["id"] and again["deduplicated"] is True
        status, fresh = await env.submit({**body, "idempotency_key": "order-8-start"})
        assert status == 503 and fresh["error"]["code"] == "node_draining"


async def test_undrain_of_a_node_that_is_not_draining(sim: SimServer, tmp_path: Path) -> None:
    """Undraining an active node changes nothing (200, changed false)."""
    async with serving(sim, tmp_path) as env:
        status, body = await post(env, "/v1/node/undrain")
        assert status == 200 and body["changed"] is False and body["node"]["state"] == "active"


async def test_decommission_refusals_are_409_and_each_is_audited(
    sim: SimServer, tmp_path: Path
) -> None:
    """Not draining, too young, guests remain, system node: each a 409 with its code, audited."""
    async with serving(sim, tmp_path) as env:
        status, body = await post(env, "/v1/node/decommission")
        assert status == 409 and body["error"]["code"] == "invalid_node_transition"
        assert "drain it first" in body["error"]["message"]
        await post(env, "/v1/node/drain")
        status, body = await post(env, "/v1/node/decommission", {"reason": "retire"})
        assert status == 409 and body["error"]["code"] == "node_too_young"
    # Same journal, older-than setting satisfied: the simulator's guests on pve1 remain.
    async with serving(sim, tmp_path, node_min_age=0.0) as env:
        status, node = await env.get_json("/v1/node")
        assert node["state"] == "draining"  # a restart does not undrain
        status, body = await post(env, "/v1/node/decommission")
        assert status == 409 and body["error"]["code"] == "guests_remain"
        expected = sorted(g.vmid for g in sim.sim.guests.values() if g.node == "pve1")
        assert body["error"]["details"]["guests"] == expected
        assert body["error"]["details"]["proxmox_checked"] is True
    async with serving(sim, tmp_path, node_min_age=0.0, system_node=True) as env:
        status, body = await post(env, "/v1/node/decommission")
        assert status == 409 and body["error"]["code"] == "system_node"
        status, node = await env.get_json("/v1/node")
        assert node["is_system"] is True and node["state"] == "draining"
        records = await refused_audit(env, "decommission")
        codes = [r.reason.split(":", 1)[0] for r in records]
        assert codes == [
            "system_node",
            "guests_remain",
            "node_too_young",
            "invalid_node_transition",
        ]
        assert all(r.node == "pve1" for r in records)


async def test_an_empty_old_drained_node_is_decommissioned_for_good(
    sim_factory: Any, tmp_path: Path
) -> None:
    """A node with no guests decommissions; then it refuses new guests (409) and undrain."""
    sim = await sim_factory(nodes=("pve1", "pve2", "pve9"))
    for guest in [g for g in sim.sim.guests.values() if g.node == "pve9"]:
        sim.sim.move_guest(guest.vmid, "pve1")
    async with serving(sim, tmp_path, node="pve9", node_min_age=0.0) as env:
        await post(env, "/v1/node/drain")
        status, body = await post(env, "/v1/node/decommission", {"reason": "hardware retired"})
        assert status == 200, body
        assert body["node"]["state"] == "decommissioned" and body["guests"] == []
        status, answer = await env.submit(
            {"action": "create", "vmid": 9100, "kind": "lxc", "node": "pve9"}
        )
        assert status == 409 and answer["error"]["code"] == "node_decommissioned"
        status, answer = await post(env, "/v1/node/undrain")
        assert status == 409 and answer["error"]["code"] == "node_not_draining"
        status, again = await post(env, "/v1/node/decommission")
        assert status == 200 and again["changed"] is False
        assert await env.op_count() == 0


async def test_node_bodies_are_validated(sim: SimServer, tmp_path: Path) -> None:
    """Unknown fields and a non-string reason are 400s that change nothing."""
    async with serving(sim, tmp_path, run=False) as env:
        status, body = await post(env, "/v1/node/drain", {"why": "x"})
        assert status == 400 and body["error"]["code"] == "unknown_field"
        status, body = await post(env, "/v1/node/drain", {"reason": 5})
        assert status == 400 and body["error"]["code"] == "invalid_request"
        record = await env.runtime.journal.get_node("pve1")
        assert record is None or record.state != "draining"
