"""``/v1/ops`` over real HTTP: submission, idempotency, listing, cancel (SPEC §1, §5)."""

from __future__ import annotations

from pathlib import Path

from conftest_web import pick, posts_to, serving

from lifecycled.sim import SimServer


async def test_submitted_start_is_accepted_and_really_starts_the_guest(
    sim: SimServer, tmp_path: Path
) -> None:
    """POST /v1/ops answers 202 with the op; the dispatcher then starts the guest."""
    guest = pick(sim, "qemu", running=False)
    async with serving(sim, tmp_path) as env:
        async with env.http.post(
            "/v1/ops",
            json={"action": "start", "vmid": guest.vmid, "kind": "qemu", "node": guest.node},
        ) as resp:
            assert resp.status == 202
            body = await resp.json()
            assert resp.headers["Location"] == f"/v1/ops/{body['id']}"
        assert body["deduplicated"] is False
        assert body["state"] == "pending"
        assert body["guest"] == {"node": guest.node, "kind": "qemu", "vmid": guest.vmid}
        assert body["origin"] == "api"
        done = await env.wait_state(body["id"])
        assert done["state"] == "succeeded"
        assert done["upid"] is not None and done["upid"].startswith("UPID:")
    assert sim.sim.guests[guest.vmid].running


async def test_kind_and_node_are_resolved_from_proxmox(sim: SimServer, tmp_path: Path) -> None:
    """A submission without kind and node gets them from /cluster/resources."""
    guest = pick(sim, "lxc", running=False)
    async with serving(sim, tmp_path, run=False) as env:
        status, body = await env.submit({"action": "start", "vmid": guest.vmid})
    assert status == 202
    assert body["guest"] == {"node": guest.node, "kind": "lxc", "vmid": guest.vmid}


async def test_resubmitting_a_key_deduplicates_and_executes_once(
    sim: SimServer, tmp_path: Path
) -> None:
    """The same key answers 200 with the same op, deduplicated, and Proxmox sees one POST."""
    guest = pick(sim, "qemu", running=False)
    sub = {"action": "start", "vmid": guest.vmid, "idempotency_key": "order-1-start"}
    async with serving(sim, tmp_path) as env:
        status, first = await env.submit(sub)
        assert status == 202
        status, again = await env.submit(sub)
        assert status == 200
        assert again["id"] == first["id"]
        assert again["deduplicated"] is True
        await env.wait_state(first["id"])
        status, after = await env.submit(sub)
        assert status == 200
        assert after["deduplicated"] is True
        assert after["state"] == "succeeded"
        assert await env.op_count() == 1
    assert len(posts_to(sim, guest.vmid, "/status/start")) == 1


async def test_idempotency_key_header_is_the_same_key(sim: SimServer, tmp_path: Path) -> None:
    """The Idempotency-Key header deduplicates like the body field; both differing is a 409."""
    guest = pick(sim, "qemu", running=False)
    sub = {"action": "start", "vmid": guest.vmid, "kind": "qemu", "node": guest.node}
    async with serving(sim, tmp_path, run=False) as env:
        status, first = await env.submit(sub, headers={"Idempotency-Key": "hdr-key-1"})
        assert status == 202
        assert first["idempotency_key"] == "hdr-key-1"
        status, again = await env.submit({**sub, "idempotency_key": "hdr-key-1"})
        assert (status, again["id"]) == (200, first["id"])
        status, both = await env.submit(
            {**sub, "idempotency_key": "body-key"}, headers={"Idempotency-Key": "hdr-key-1"}
        )
        assert status == 409
        assert both["error"]["code"] == "idempotency_key_mismatch"
        assert await env.op_count() == 1


async def test_changed_params_under_the_same_key_is_a_conflict(
    sim: SimServer, tmp_path: Path
) -> None:
    """Reusing a key for another action, guest or params answers 409 and writes nothing."""
    guest = pick(sim, "qemu", running=False)
    base = {
        "action": "configure",
        "vmid": guest.vmid,
        "kind": "qemu",
        "node": guest.node,
        "params": {"cores": 2},
        "idempotency_key": "cfg-1",
    }
    async with serving(sim, tmp_path, run=False) as env:
        assert (await env.submit(base))[0] == 202
        for changed in (
            {**base, "params": {"cores": 4}},
            {**base, "action": "start", "params": {}},
            {**base, "vmid": guest.vmid + 1},
        ):
            status, body = await env.submit(changed)
            assert status == 409, body
            assert body["error"]["code"] == "idempotency_conflict"
        assert await env.op_count() == 1


async def test_a_failed_op_is_rearmed_by_resubmitting_its_key(
    sim: SimServer, tmp_path: Path
) -> None:
    """A key whose op failed starts a new attempt series (202) that can succeed."""
    guest = pick(sim, "qemu", running=False)
    fault = sim.sim.add_fault(
        method="POST",
        path=rf"/qemu/{guest.vmid}/status/start$",
        status=400,
        reason="Parameter verification failed.",
        errors={"vmid": "invalid"},
        count=None,
    )
    sub = {"action": "start", "vmid": guest.vmid, "idempotency_key": "rearm-1"}
    async with serving(sim, tmp_path) as env:
        status, first = await env.submit(sub)
        assert status == 202
        failed = await env.wait_state(first["id"])
        assert failed["state"] == "failed"
        assert failed["error"]["class"] == "permanent"
        sim.sim.remove_fault(fault.id)
        status, again = await env.submit(sub)
        assert status == 202
        assert again["id"] == first["id"]
        assert again["deduplicated"] is False
        assert again["state"] == "pending"
        done = await env.wait_state(first["id"])
        assert done["state"] == "succeeded"
        reasons = [h["reason"] for h in done["history"]]
        assert any("re-armed" in r for r in reasons)
        assert await env.op_count() == 1
    assert sim.sim.guests[guest.vmid].running


async def test_get_op_shows_its_history(sim: SimServer, tmp_path: Path) -> None:
    """GET /v1/ops/{id} is the op plus every transition, with RFC 3339 times."""
    guest = pick(sim, "qemu", running=False)
    async with serving(sim, tmp_path) as env:
        _, op = await env.submit({"action": "start", "vmid": guest.vmid, "idempotency_key": "h-1"})
        done = await env.wait_state(op["id"])
    states = [(h["from"], h["to"]) for h in done["history"]]
    assert states[0] == (None, "pending")
    assert ("pending", "dispatching") in states
    assert states[-1][1] == "succeeded"
    assert done["history"][0]["reason"] == "submitted by api:alice"
    assert done["created_at"].endswith("Z") and done["finished_at"].endswith("Z")


async def test_unknown_op_is_404(sim: SimServer, tmp_path: Path) -> None:
    """An op id that does not exist (or cannot exist) answers 404 JSON."""
    async with serving(sim, tmp_path, run=False) as env:
        for path in ("/v1/ops/999", "/v1/ops/99999999999999999999999", "/v1/ops/abc"):
            status, body = await env.get_json(path)
            assert status == 404, path
            assert body["error"]["code"] == "not_found"


async def test_listing_paginates_with_a_cursor_and_filters(sim: SimServer, tmp_path: Path) -> None:
    """GET /v1/ops pages newest first; next_cursor walks every op exactly once."""
    avoid: set[int] = set()
    guests = [pick(sim, "qemu", running=False, avoid=avoid) for _ in range(3)]
    async with serving(sim, tmp_path, run=False) as env:
        ids = []
        for i in range(7):
            g = guests[i % 3]
            action = "start" if i % 2 == 0 else "configure"
            params = {} if action == "start" else {"cores": i + 1}
            _, op = await env.submit(
                {
                    "action": action,
                    "vmid": g.vmid,
                    "kind": "qemu",
                    "node": g.node,
                    "params": params,
                    "idempotency_key": f"page-{i}",
                }
            )
            ids.append(op["id"])
        seen: list[int] = []
        cursor = None
        pages = 0
        while True:
            query = {"limit": "3"} | ({"cursor": str(cursor)} if cursor is not None else {})
            status, page = await env.get_json("/v1/ops", params=query)
            assert status == 200
            seen += [op["id"] for op in page["items"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == sorted(ids, reverse=True)
        assert pages == 3
        _, starts = await env.get_json("/v1/ops", params={"action": "start"})
        assert {op["action"] for op in starts["items"]} == {"start"}
        assert len(starts["items"]) == 4
        _, one_guest = await env.get_json("/v1/ops", params={"vmid": str(guests[0].vmid)})
        assert {op["guest"]["vmid"] for op in one_guest["items"]} == {guests[0].vmid}
        _, pending = await env.get_json("/v1/ops", params={"state": "pending", "limit": "500"})
        assert len(pending["items"]) == 7
        _, none = await env.get_json("/v1/ops", params={"state": "succeeded"})
        assert none == {"items": [], "next_cursor": None}


async def test_bad_list_filters_are_400(sim: SimServer, tmp_path: Path) -> None:
    """Unknown, repeated or malformed query parameters answer 400 invalid_query."""
    async with serving(sim, tmp_path, run=False) as env:
        for query in (
            "state=bogus",
            "vmid=abc",
            "vmid=5",
            "action=explode",
            "limit=0",
            "limit=501",
            "limit=1.5",
            "cursor=-1",
            "stat=pending",
            "state=pending&state=failed",
        ):
            status, body = await env.get_json(f"/v1/ops?{query}")
            assert status == 400, query
            assert body["error"]["code"] == "invalid_query", query
            assert body["error"]["details"], query
        status, body = await env.get_json("/v1/dead-letters?limit=1000")
        assert status == 400
        assert "limit" in body["error"]["details"]


async def test_cancel_a_pending_op(sim: SimServer, tmp_path: Path) -> None:
    """A pending op can be cancelled (twice is fine); a finished one answers 409."""
    guest = pick(sim, "qemu", running=False)
    async with serving(sim, tmp_path, run=False) as env:
        _, op = await env.submit(
            {"action": "start", "vmid": guest.vmid, "kind": "qemu", "node": guest.node}
        )
        async with env.http.post(f"/v1/ops/{op['id']}/cancel") as resp:
            assert resp.status == 200
            cancelled = await resp.json()
        assert cancelled["state"] == "cancelled"
        async with env.http.post(f"/v1/ops/{op['id']}/cancel") as resp:
            assert resp.status == 200
        _, shown = await env.get_json(f"/v1/ops/{op['id']}")
        assert shown["history"][-1]["reason"] == "cancelled by api:alice"
        async with env.http.post("/v1/ops/424242/cancel") as resp:
            assert resp.status == 404
    other = pick(sim, "qemu", running=False, avoid={guest.vmid})
    async with serving(sim, tmp_path / "run") as env:
        _, op = await env.submit({"action": "start", "vmid": other.vmid})
        await env.wait_state(op["id"])
        async with env.http.post(f"/v1/ops/{op['id']}/cancel") as resp:
            assert resp.status == 409
            body = await resp.json()
        assert body["error"]["code"] == "invalid_state"
        assert body["error"]["details"] == {"state": "succeeded"}
    assert not sim.sim.guests[guest.vmid].running
