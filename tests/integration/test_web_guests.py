"""``/v1/guests`` and ``/v1/audit`` over real HTTP: listing, ETag/304, ownership, desired
state, audit queries; every 4xx writes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest_web import WebEnv, pick, serving

from lifecycled.sim import SimServer


async def call(env: WebEnv, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with env.http.request(method, path, **kwargs) as resp:
        body = await resp.json() if resp.status != 304 else None
        return resp.status, body


async def snapshot(env: WebEnv) -> tuple[Any, ...]:
    journal = env.runtime.journal
    return (
        await journal.all_guests(),
        len((await journal.list_audit(limit=1000)).items),
        await env.op_count(),
    )


async def test_listing_has_an_etag_and_an_unchanged_set_answers_304(
    sim: SimServer, tmp_path: Path
) -> None:
    """GET /v1/guests carries an ETag; If-None-Match with it → 304; a change → a new ETag."""
    guest = pick(sim, "qemu", running=False)
    async with serving(sim, tmp_path, run=False) as env:
        async with env.http.get("/v1/guests") as resp:
            assert resp.status == 200
            etag = resp.headers["ETag"]
            body = await resp.json()
        assert [g["vmid"] for g in body["items"]] == sorted(sim.sim.guests)
        assert body["next_cursor"] is None and len(body["state_hash"]) == 32
        async with env.http.get("/v1/guests", headers={"If-None-Match": etag}) as resp:
            assert resp.status == 304
            assert resp.headers["ETag"] == etag
        async with env.http.get("/v1/guests?origin=native", headers={"If-None-Match": etag}) as r:
            assert r.status == 200  # another query, another ETag
        status, _ = await call(
            env, "PUT", f"/v1/guests/{guest.vmid}/desired", json={"state": "running"}
        )
        assert status == 200
        async with env.http.get("/v1/guests", headers={"If-None-Match": etag}) as resp:
            assert resp.status == 200 and resp.headers["ETag"] != etag


async def test_listing_filters_and_pages(sim: SimServer, tmp_path: Path) -> None:
    """origin/observed/drifted filters and a vmid cursor; bad queries are 400."""
    async with serving(sim, tmp_path, run=False) as env:
        first = (await call(env, "GET", "/v1/guests?limit=5"))[1]
        assert len(first["items"]) == 5 and first["next_cursor"] == first["items"][-1]["vmid"]
        second = (await call(env, "GET", f"/v1/guests?limit=5&cursor={first['next_cursor']}"))[1]
        assert second["items"][0]["vmid"] > first["next_cursor"]
        status, body = await call(env, "GET", "/v1/guests?origin=adopted")
        assert status == 200 and body["items"] == []
        status, body = await call(env, "GET", "/v1/guests?observed=running&drifted=false")
        assert status == 200 and all(g["observed_state"] == "running" for g in body["items"])
        for bad in ("origin=owned", "observed=up", "drifted=maybe", "cursor=5", "color=red"):
            status, body = await call(env, "GET", f"/v1/guests?{bad}")
            assert status == 400 and body["error"]["code"] == "invalid_query", bad


async def test_show_a_guest_with_its_snapshot_and_404_for_an_unknown_one(
    sim: SimServer, tmp_path: Path
) -> None:
    """GET /v1/guests/{vmid} has the config snapshot and open ops; unknown → 404."""
    guest = pick(sim, "qemu", running=False)
    async with serving(sim, tmp_path, run=False) as env:
        await env.submit({"action": "start", "vmid": guest.vmid})
        status, body = await call(env, "GET", f"/v1/guests/{guest.vmid}")
        assert status == 200
        assert body["origin"] == "native" and body["desired_state"] == "running"
        assert body["config_snapshot"]["name"] == guest.config["name"]
        assert len(body["open_ops"]) == 1
        for missing in ("999999", "42", "abc"):
            status, body = await call(env, "GET", f"/v1/guests/{missing}")
            assert status == 404 and body["error"]["code"] == "guest_not_found"


async def test_manage_adopt_release_round_trip_with_audit(sim: SimServer, tmp_path: Path) -> None:
    """adopt (from Proxmox), repeat (unchanged), release, then ops are refused 409."""
    guest = pick(sim, "lxc", running=False)
    async with serving(sim, tmp_path, run=False, manage_guests=False) as env:
        status, body = await env.submit({"action": "start", "vmid": guest.vmid})
        assert status == 409 and body["error"]["code"] == "guest_not_managed"
        status, body = await call(env, "POST", f"/v1/guests/{guest.vmid}/adopt")
        assert status == 200 and body["changed"] is True
        assert body["guest"]["origin"] == "adopted"
        assert body["guest"]["config_digest"] == guest.digest()
        adopted_digest = guest.digest()  # manage and release rewrite its tags (SPEC §7)
        status, body = await call(env, "POST", f"/v1/guests/{guest.vmid}/adopt")
        assert status == 200 and body["changed"] is False
        status, body = await call(env, "POST", f"/v1/guests/{guest.vmid}/manage")
        assert status == 200 and body["changed"] is True and body["guest"]["origin"] == "native"
        status, body = await call(env, "POST", f"/v1/guests/{guest.vmid}/release")
        assert status == 200 and body["guest"]["origin"] == "released"
        status, body = await env.submit({"action": "start", "vmid": guest.vmid})
        assert status == 409 and body["error"]["code"] == "guest_not_managed"
        status, body = await call(env, "GET", f"/v1/audit?vmid={guest.vmid}")
    assert status == 200
    assert [(r["decision"], r["actor"]) for r in body["items"]] == [
        ("released", "api:alice"),
        ("managed", "api:alice"),
        ("adopted", "api:alice"),
    ]
    assert body["items"][-1]["snapshot"]["config_digest"] == adopted_digest


async def test_rejected_requests_write_nothing(sim: SimServer, tmp_path: Path) -> None:
    """Every 4xx of the guest endpoints leaves the journal exactly as it was."""
    guest = pick(sim, "qemu", running=True)
    async with serving(sim, tmp_path, run=False, manage_guests=False) as env:
        await call(env, "POST", f"/v1/guests/{guest.vmid}/manage")
        discovered_vmid = pick(sim, "qemu", running=False).vmid
        before = await snapshot(env)
        cases: list[tuple[str, str, dict[str, Any], int, str]] = [
            ("POST", "/v1/guests/99999/manage", {}, 404, "guest_not_found"),
            ("POST", "/v1/guests/99999/adopt", {}, 404, "guest_not_found"),
            ("POST", "/v1/guests/99999/release", {}, 404, "guest_not_found"),
            (
                "PUT",
                f"/v1/guests/{guest.vmid}/desired",
                {"json": {"state": "absent"}},
                422,
                "validation_failed",
            ),
            (
                "PUT",
                f"/v1/guests/{guest.vmid}/desired",
                {"json": {"state": 1}},
                400,
                "invalid_request",
            ),
            (
                "PUT",
                f"/v1/guests/{guest.vmid}/desired",
                {"json": {"state": "running", "x": 1}},
                400,
                "unknown_field",
            ),
            (
                "PUT",
                f"/v1/guests/{guest.vmid}/desired",
                {"data": b"{", "headers": {"Content-Type": "application/json"}},
                400,
                "malformed_json",
            ),
            (
                "PUT",
                f"/v1/guests/{guest.vmid}/desired",
                {"data": b'{"state": "running"}'},
                415,
                "unsupported_media_type",
            ),
            (
                "PUT",
                f"/v1/guests/{discovered_vmid}/desired",
                {"json": {"state": "running"}},
                404,
                "guest_not_found",
            ),
            (
                "POST",
                "/v1/ops",
                {"json": {"action": "stop", "vmid": discovered_vmid}},
                409,
                "guest_not_managed",
            ),
            ("GET", "/v1/audit?decision=maybe", {}, 400, "invalid_query"),
            ("GET", "/v1/audit?since=yesterday", {}, 400, "invalid_query"),
        ]
        for method, path, kwargs, want, code in cases:
            status, body = await call(env, method, path, **kwargs)
            assert (status, body["error"]["code"]) == (want, code), (method, path, body)
        assert await snapshot(env) == before
        status, body = await call(env, "GET", "/v1/guests/1/desired")
        assert status in (404, 405)


async def test_desired_state_of_a_discovered_guest_is_refused(
    sim: SimServer, tmp_path: Path
) -> None:
    """A discovered guest has no desired state: PUT desired → 409 guest_not_managed."""
    async with serving(sim, tmp_path, run=False, manage_guests=False) as env:
        await env.runtime.reconciler.pass_once()
        vmid = next(g.vmid for g in sim.sim.guests.values() if g.node == "pve1")
        before = await snapshot(env)
        status, body = await call(
            env, "PUT", f"/v1/guests/{vmid}/desired", json={"state": "running"}
        )
        assert status == 409 and body["error"]["code"] == "guest_not_managed"
        status, body = await call(env, "POST", f"/v1/guests/{vmid}/release")
        assert status == 409 and body["error"]["code"] == "guest_not_managed"
        assert await snapshot(env) == before


async def test_audit_filters_by_decision_action_and_time(sim: SimServer, tmp_path: Path) -> None:
    """/v1/audit filters combine; since/until bound the time; pages chain with the cursor."""
    guests = [pick(sim, "qemu", running=False, avoid=set()) for _ in range(1)]
    async with serving(sim, tmp_path, run=False, manage_guests=False) as env:
        for g in guests:
            await call(env, "POST", f"/v1/guests/{g.vmid}/adopt")
            await call(env, "POST", f"/v1/guests/{g.vmid}/release")
        status, body = await call(env, "GET", "/v1/audit?decision=adopted&action=adopt")
        assert status == 200 and [r["vmid"] for r in body["items"]] == [guests[0].vmid]
        status, body = await call(env, "GET", "/v1/audit?limit=1")
        assert len(body["items"]) == 1 and body["next_cursor"] is not None
        status, rest = await call(env, "GET", f"/v1/audit?limit=1&cursor={body['next_cursor']}")
        assert rest["items"][0]["id"] < body["items"][0]["id"]
        status, body = await call(env, "GET", "/v1/audit?since=2999-01-01T00:00:00Z")
        assert status == 200 and body["items"] == []
        status, body = await call(env, "GET", "/v1/audit?until=2000-01-01T00:00:00Z")
        assert status == 200 and body["items"] == []


async def test_status_shows_the_last_reconcile_pass(sim: SimServer, tmp_path: Path) -> None:
    """/v1/status carries the last reconcile pass (outcome, counts, LOST, drifted)."""
    async with serving(sim, tmp_path, manage_guests=False) as env:
        status, body = await call(env, "GET", "/v1/status")
        assert body["reconcile"] is None
        await env.runtime.reconciler.pass_once()
        status, body = await call(env, "GET", "/v1/status")
    assert status == 200
    assert body["reconcile"]["outcome"] == "ok" and body["reconcile"]["discovered"] > 0
    assert body["reconcile"]["lost"] == [] and body["reconcile"]["at"].endswith("Z")
