"""``/v1/dead-letters``: listing, idempotent retry and discard over real HTTP (SPEC §2, §5)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest_web import WebEnv, pick, posts_to, serving

from lifecycled.sim import SimServer


async def _dead_letter(env: WebEnv, vmid: int, key: str) -> dict[str, Any]:
    """Submit a start that Proxmox keeps refusing with 595 until it is dead-lettered."""
    status, op = await env.submit({"action": "start", "vmid": vmid, "idempotency_key": key})
    assert status == 202
    done = await env.wait_state(op["id"])
    assert done["state"] == "dead_lettered", done
    return done


async def test_dead_letters_are_listed_retried_and_discarded(
    sim: SimServer, tmp_path: Path
) -> None:
    """Exhausted retries land in the listing; retry re-runs one, discard removes the other."""
    avoid: set[int] = set()
    first = pick(sim, "qemu", running=False, avoid=avoid)
    second = pick(sim, "qemu", running=False, avoid=avoid)
    fault = sim.sim.add_fault(method="POST", path=r"/status/start$", status=595, count=None)
    async with serving(sim, tmp_path) as env:
        a = await _dead_letter(env, first.vmid, "dl-a")
        b = await _dead_letter(env, second.vmid, "dl-b")
        assert a["error"]["class"] == "transient"
        status, page = await env.get_json("/v1/dead-letters")
        assert status == 200
        assert [op["id"] for op in page["items"]] == [b["id"], a["id"]]
        assert page["next_cursor"] is None
        _, limited = await env.get_json("/v1/dead-letters", params={"limit": "1"})
        assert [op["id"] for op in limited["items"]] == [b["id"]]
        assert limited["next_cursor"] == b["id"]
        _, filtered = await env.get_json("/v1/dead-letters", params={"action": "stop"})
        assert filtered["items"] == []
        _, status_body = await env.get_json("/v1/status")
        assert status_body["dead_letters"] == 2

        sim.sim.remove_fault(fault.id)
        async with env.http.post(f"/v1/dead-letters/{a['id']}/retry") as resp:
            assert resp.status == 200
            retried = await resp.json()
        assert retried["state"] == "pending"
        assert retried["attempts"] == 0
        async with env.http.post(f"/v1/dead-letters/{a['id']}/retry") as resp:
            assert resp.status == 200  # repeating the retry changes nothing
            assert (await resp.json())["id"] == a["id"]
        done = await env.wait_state(a["id"])
        assert done["state"] == "succeeded"
        assert any(h["reason"] == "retried by api:alice" for h in done["history"])
        async with env.http.post(f"/v1/dead-letters/{a['id']}/retry") as resp:
            assert resp.status == 200  # still a repeat after it succeeded
            assert (await resp.json())["state"] == "succeeded"

        async with env.http.delete(f"/v1/dead-letters/{b['id']}") as resp:
            assert resp.status == 200
            discarded = await resp.json()
        assert discarded["state"] == "dead_lettered"
        async with env.http.delete(f"/v1/dead-letters/{b['id']}") as resp:
            assert resp.status == 200  # discarding twice is fine
        _, page = await env.get_json("/v1/dead-letters")
        assert page["items"] == []
        async with env.http.post(f"/v1/dead-letters/{b['id']}/retry") as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["code"] == "not_found"
        count = await env.op_count()
        assert count == 2
    assert sim.sim.guests[first.vmid].running
    assert not sim.sim.guests[second.vmid].running
    # two failed attempts (max_retries 2) and the one after the retry
    assert len(posts_to(sim, first.vmid, "/status/start")) == 3


async def test_only_dead_letters_can_be_retried_or_discarded(
    sim: SimServer, tmp_path: Path
) -> None:
    """Ops that are not dead letters (or do not exist) answer 404 and are left unchanged."""
    guest = pick(sim, "qemu", running=False)
    async with serving(sim, tmp_path, run=False) as env:
        _, op = await env.submit(
            {"action": "start", "vmid": guest.vmid, "kind": "qemu", "node": guest.node}
        )
        for method, path in (
            ("POST", f"/v1/dead-letters/{op['id']}/retry"),
            ("DELETE", f"/v1/dead-letters/{op['id']}"),
            ("POST", "/v1/dead-letters/987654/retry"),
            ("DELETE", "/v1/dead-letters/987654"),
        ):
            async with env.http.request(method, path) as resp:
                assert resp.status == 404, path
                assert (await resp.json())["error"]["code"] == "not_found"
        _, shown = await env.get_json(f"/v1/ops/{op['id']}")
        assert shown["state"] == "pending"
        assert len(shown["history"]) == 1
