"""``GET /v1/guests?scope=cluster&node=`` (SPEC §7: "``--node`` must name a node of the
cluster"): a node the cluster does not have is refused (404 naming it), not answered with an
empty list a control plane would read as "no guests there"."""

from __future__ import annotations

from pathlib import Path

from conftest_web import serving
from test_web_cluster import call

from lifecycled.sim import SimServer


async def test_cluster_scope_refuses_a_node_the_cluster_lacks(
    sim: SimServer, tmp_path: Path
) -> None:
    """node=pve9 (no such node): 404 naming it; node=pve2 (a node of the cluster): 200."""
    async with serving(sim, tmp_path, run=False, manage_guests=False, node="pve1") as env:
        status, body = await call(env, "GET", "/v1/guests?scope=cluster&node=pve9")
        assert status == 404, body
        assert "pve9" in body["error"]["message"]
        status, body = await call(env, "GET", "/v1/guests?scope=cluster&node=pve2")
        assert status == 200 and body["items"]
