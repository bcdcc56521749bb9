"""The HTTP faces of SPEC §7: 421 wrong_node, 503 ownership_unavailable, 409 for a key used
by another daemon, and ``GET /v1/guests?scope=cluster`` / ``node=``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest_web import WebEnv, serving

from lifecycled.domain.guests import GuestOrigin
from lifecycled.domain.ownership import OwnershipRecord, encode, key_digest
from lifecycled.sim import SimServer


async def call(env: WebEnv, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with env.http.request(method, path, **kwargs) as resp:
        return resp.status, await resp.json()


def on(sim: SimServer, node: str) -> int:
    return min(g.vmid for g in sim.sim.guests.values() if g.node == node and g.ha is None)


async def test_another_nodes_guest_is_421_and_nothing_is_written(
    sim: SimServer, tmp_path: Path
) -> None:
    """A daemon serving pve1 refuses ops and ownership requests for a pve2 guest with 421
    wrong_node naming pve2; no op, guest row, audit record or tag is written."""
    vmid = on(sim, "pve2")
    async with serving(sim, tmp_path, run=False, manage_guests=False, node="pve1") as env:
        status, body = await env.submit({"action": "start", "vmid": vmid, "idempotency_key": "k1"})
        assert status == 421, body
        assert body["error"]["code"] == "wrong_node" and body["error"]["details"]["node"] == "pve2"
        status, body = await call(env, "POST", f"/v1/guests/{vmid}/manage")
        assert status == 421 and body["error"]["code"] == "wrong_node"
        journal = env.runtime.journal
        assert await journal.find_guest(vmid) is None
        assert (await journal.list_audit(limit=10)).items == []
        assert await env.op_count() == 0
    assert "tags" not in sim.sim.guests[vmid].config


async def test_cluster_scope_lists_every_guest_with_its_shared_record(
    sim: SimServer, tmp_path: Path
) -> None:
    """scope=cluster answers for both nodes from the tags (managed, origin, generation,
    served_here); node= filters both scopes."""
    vmid = on(sim, "pve1")
    other = on(sim, "pve2")
    sim.sim.update_config(
        other, {"tags": encode(OwnershipRecord(origin=GuestOrigin.ADOPTED, generation=3))}, ()
    )
    async with serving(sim, tmp_path, run=False, manage_guests=False, node="pve1") as env:
        status, body = await call(env, "POST", f"/v1/guests/{vmid}/manage")
        assert status == 200, body
        status, body = await call(env, "GET", "/v1/guests?scope=cluster&limit=500")
        assert status == 200 and body["scope"] == "cluster"
        items = {i["vmid"]: i for i in body["items"]}
        assert set(items) == set(sim.sim.guests)
        assert items[vmid]["managed"] and items[vmid]["origin"] == "native"
        assert items[vmid]["served_here"] is True
        assert items[other]["origin"] == "adopted" and items[other]["generation"] == 3
        assert items[other]["served_here"] is False
        status, body = await call(env, "GET", "/v1/guests?scope=cluster&node=pve2&limit=500")
        assert {i["node"] for i in body["items"]} == {"pve2"}
        status, body = await call(env, "GET", "/v1/guests?node=pve1")
        assert [g["vmid"] for g in body["items"]] == [vmid]
        status, body = await call(env, "GET", "/v1/guests?node=bad_node!")
        assert status == 400


async def test_read_only_cluster_is_503_and_a_key_from_elsewhere_is_409(
    sim: SimServer, tmp_path: Path
) -> None:
    """No quorum: manage answers 503 ownership_unavailable (nothing written); a key the
    guest's record names but this journal lacks answers 409 and runs nothing."""
    vmid = on(sim, "pve1")
    async with serving(sim, tmp_path, run=False, manage_guests=False, node="pve1") as env:
        fault = sim.sim.add_fault(
            method="PUT",
            path=rf"/qemu/{vmid}/config$|/lxc/{vmid}/config$",
            status=500,
            reason="cluster not ready - no quorum?",
        )
        status, body = await call(env, "POST", f"/v1/guests/{vmid}/manage")
        assert status == 503 and body["error"]["code"] == "ownership_unavailable"
        assert await env.runtime.journal.find_guest(vmid) is None
        sim.sim.remove_fault(fault.id)
        status, body = await call(env, "POST", f"/v1/guests/{vmid}/manage")
        assert status == 200
        tags = sim.sim.guests[vmid].config["tags"]
        sim.sim.update_config(vmid, {"tags": f"{tags};lcd.k.{key_digest('order-9')}"}, ())
        status, body = await env.submit(
            {"action": "reboot", "vmid": vmid, "idempotency_key": "order-9"}
        )
        assert status == 409 and body["error"]["code"] == "idempotency_key_used_elsewhere"
        assert await env.op_count() == 0


async def test_cli_lists_the_cluster_from_the_tags(sim: SimServer, tmp_path: Path) -> None:
    """`lifecycled guests list --cluster --node pve2 --json` reads Proxmox: every pve2 guest
    with its record; an exit code 0 and JSON only on stdout."""
    import asyncio
    import json
    import sys

    other = on(sim, "pve2")
    sim.sim.update_config(
        other, {"tags": encode(OwnershipRecord(origin=GuestOrigin.NATIVE, generation=2))}, ()
    )
    token = tmp_path / "token"
    token.write_text(sim.cfg.token + "\n")
    token.chmod(0o600)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lifecycled",
        "guests",
        "list",
        "--cluster",
        "--node",
        "pve2",
        "--json",
        "--pve-url",
        sim.url,
        "--pve-token-file",
        str(token),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    items = json.loads(out)
    assert {i["node"] for i in items} == {"pve2"}
    assert [i["generation"] for i in items if i["vmid"] == other] == [2]
