"""Three sidecars, one cluster (SPEC §7): a three-node simulator, one Runtime per node, each
with its own journal; the ownership record lives in the guests' Proxmox tags."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from engine_support import running, wait_terminal

from lifecycled.domain.cluster import WrongNode
from lifecycled.domain.guests import DesiredState, GuestOrigin, ObservedState
from lifecycled.domain.ownership import decode, key_digest
from lifecycled.domain.tags import stored_tags
from lifecycled.engine.runtime import Runtime
from lifecycled.engine.submit import KeyUsedElsewhere, Submission
from lifecycled.errors import ConfigError, OwnershipUnavailable
from lifecycled.sim import SimServer

NODES = ("pve1", "pve2", "pve3")


@contextlib.asynccontextmanager
async def sidecar(sim: SimServer, tmp_path: Path, node: str, **kw: Any) -> AsyncIterator[Runtime]:
    where = tmp_path / node
    where.mkdir(exist_ok=True)
    async with running(
        sim, where, manage_guests=False, node=node, reconcile_interval=3600.0, **kw
    ) as rt:
        yield rt


def record(sim: SimServer, vmid: int) -> Any:
    return decode(sim.sim.guests[vmid].config.get("tags"))


async def op_for(rt: Runtime, action: str, vmid: int, key: str | None = None, **params: Any) -> Any:
    result = await rt.submit(
        Submission(action=action, vmid=vmid, params=params, idempotency_key=key)
    )
    return await wait_terminal(rt, result.op.id)


async def settle(rt: Runtime) -> Any:
    """One reconcile pass, and every op it enqueued carried out."""
    report = await rt.reconciler.pass_once()
    for item in report.enqueued:
        await wait_terminal(rt, item["op_id"])
    return report


async def three_node_sim(sim_factory: Any) -> SimServer:
    server: SimServer = await sim_factory(nodes=NODES, guests=0)
    for vmid, node, status in (
        (101, "pve1", "stopped"),
        (102, "pve2", "running"),
        (103, "pve3", "running"),
        (104, "pve2", "stopped"),
        (105, "pve1", "running"),
    ):
        server.sim.create_guest(vmid, kind="qemu", node=node, status=status)
    return server


async def test_three_sidecars_keep_one_truth_per_guest(sim_factory: Any, tmp_path: Path) -> None:
    """Managed guests on each node; a migration by API and one out of band (the target
    enforces desired state); a crashed node's guest restored elsewhere; a guest deleted after
    leaving its node is LOST once; one key sent to two sidecars runs once."""
    sim = await three_node_sim(sim_factory)
    async with contextlib.AsyncExitStack() as stack:
        a = await stack.enter_async_context(sidecar(sim, tmp_path, "pve1"))
        b = await stack.enter_async_context(sidecar(sim, tmp_path, "pve2"))
        c_stack = contextlib.AsyncExitStack()
        stack.push_async_callback(c_stack.aclose)
        c = await c_stack.enter_async_context(sidecar(sim, tmp_path, "pve3"))
        for rt in (a, b, c):  # the outbox is written while push is on (as with --notify-url)
            await rt.journal.set_push(enabled=True)

        # Placement is Proxmox's: another node's guest is refused, nothing written.
        with pytest.raises(WrongNode) as wrong:
            await a.guests.manage(102, actor="test")
        assert wrong.value.node == "pve2"
        assert await a.journal.find_guest(102) is None
        assert (await a.journal.list_audit(vmid=102)).items == []
        for rt, vmids in ((a, (101, 105)), (b, (102, 104)), (c, (103,))):
            for vmid in vmids:
                await rt.guests.manage(vmid, actor="test")
        assert record(sim, 102).origin is GuestOrigin.NATIVE
        assert record(sim, 102).desired is DesiredState.RUNNING
        with pytest.raises(WrongNode):
            await a.submit(Submission(action="stop", vmid=102, kind="qemu", node="pve2"))
        assert sum((await a.journal.counts_by_state()).values()) == 0

        # Migration by API (101, desired stopped): the target enforces the record.
        op = await op_for(a, "migrate", 101, key="mig-101", target="pve2")
        assert op.state.value == "succeeded" and sim.sim.guests[101].node == "pve2"
        sim.sim.set_guest_status(101, "running")  # someone starts it behind our back
        await settle(a)
        assert (await a.journal.get_guest(101)).node == "pve2"
        report_b = await settle(b)
        assert [e["vmid"] for e in report_b.enqueued] == [101]
        assert not sim.sim.guests[101].running
        moved = [e for e in await b.journal.unsent_events(limit=1000) if e.type == "guest.moved"]
        assert [(e.vmid, e.payload["to_node"]) for e in moved] == [(101, "pve2")]
        moved_a = [e for e in await a.journal.unsent_events(limit=1000) if e.type == "guest.moved"]
        assert [(e.vmid, e.payload["to_node"]) for e in moved_a] == [(101, "pve2")]
        assert moved[0].payload["generation"] == moved_a[0].payload["generation"]

        # Out of band (102, desired running): stopped and moved to pve3 by an operator.
        sim.sim.set_guest_status(102, "stopped")
        sim.sim.move_guest(102, "pve3")
        assert (await settle(b)).enqueued == []
        report_c = await settle(c)
        assert [(e["vmid"], e["action"]) for e in report_c.enqueued] == [(102, "start")]
        assert sim.sim.guests[102].running

        # Node crash: pve3 goes down with its sidecar; the operator moves 103 to pve1.
        await c_stack.aclose()
        sim.sim.set_node_offline("pve3", crash=True)
        sim.sim.move_guest(103, "pve1")
        report_a = await settle(a)
        assert (103, "start") in [(e["vmid"], e["action"]) for e in report_a.enqueued]
        assert sim.sim.guests[103].running and sim.sim.guests[103].node == "pve1"
        sim.sim.set_node_offline("pve3", offline=False)

        # A guest deleted after leaving its node is LOST once, reported by its last node's.
        op = await op_for(b, "migrate", 104, key="mig-104", target="pve1")
        assert op.state.value == "succeeded"
        await settle(a)
        sim.sim.delete_guest(104)
        for rt in (a, b, a, b):
            await settle(rt)
        lost = [
            audit
            for rt in (a, b)
            for audit in (await rt.journal.list_audit(vmid=104, decision="lost")).items
        ]
        assert len(lost) == 1 and lost[0].node == "pve1"
        assert (await a.journal.get_guest(104)).observed_state is ObservedState.LOST
        assert (await b.journal.get_guest(104)).observed_state is ObservedState.MISSING

        # One key, one run: a reboot accepted by pve1's sidecar, resent to pve2's after a move.
        op = await op_for(a, "reboot", 105, key="order-7:reboot")
        assert op.state.value == "succeeded", op.error
        op = await op_for(
            a, "migrate", 105, key="mig-105", target="pve2", online=True, with_local_disks=True
        )
        assert op.state.value == "succeeded", op.error
        await settle(b)
        with pytest.raises(KeyUsedElsewhere):
            await b.submit(Submission(action="reboot", vmid=105, idempotency_key="order-7:reboot"))
        reboots = [
            r
            for r in sim.sim.requests
            if r.method == "POST" and r.path.endswith("/105/status/reboot")
        ]
        assert len(reboots) == 1
        assert await b.journal.by_key("order-7:reboot") is None


async def test_a_sidecar_refuses_to_start_for_a_node_the_cluster_lacks(
    sim_factory: Any, tmp_path: Path
) -> None:
    """--node naming no cluster node stops the start with one clear ConfigError."""
    sim = await sim_factory(nodes=NODES, guests=0)
    with pytest.raises(ConfigError, match="pve9, not a node of this cluster"):
        async with sidecar(sim, tmp_path, "pve1,pve9"):
            pass


async def test_a_daemon_serving_two_nodes_acts_for_both_and_refuses_the_third(
    sim_factory: Any, tmp_path: Path
) -> None:
    """--node pve1,pve2: guests on either are managed here; pve3's guest answers wrong_node."""
    sim = await three_node_sim(sim_factory)
    async with sidecar(sim, tmp_path, "pve1,pve2") as rt:
        for vmid in (101, 102):
            assert (await rt.guests.manage(vmid, actor="test")).changed
        with pytest.raises(WrongNode):
            await rt.guests.adopt(103, actor="test")
        op = await op_for(rt, "stop", 102, key="s-102")
        assert op.state.value == "succeeded"
        assert record(sim, 102).desired is DesiredState.STOPPED


async def test_ownership_changes_are_refused_when_the_cluster_cannot_write(
    sim_factory: Any, tmp_path: Path
) -> None:
    """pmxcfs read-only (no quorum): the tag write fails → the ownership change is refused
    with OwnershipUnavailable and neither the tags nor the journal change."""
    sim = await three_node_sim(sim_factory)
    async with sidecar(sim, tmp_path, "pve1") as rt:
        sim.sim.add_fault(
            method="PUT",
            path=r"/nodes/pve1/qemu/101/config$",
            status=500,
            reason="cluster not ready - no quorum?",
        )
        with pytest.raises(OwnershipUnavailable, match="no quorum"):
            await rt.guests.manage(101, actor="test")
        assert record(sim, 101) is None
        assert await rt.journal.find_guest(101) is None


async def test_a_drain_binds_every_sidecar_and_an_offline_node_is_unhealthy(
    sim_factory: Any, tmp_path: Path
) -> None:
    """pve2 drained by its sidecar is published in its Proxmox description: pve1's sidecar
    refuses a migrate into it (audited) while one to pve3 runs; pve3 offline in /nodes makes
    its sidecar mark it unhealthy, and online again clears it."""
    from lifecycled.domain.node import NodeRefused, NodeState
    from lifecycled.engine import node as node_service

    sim = await three_node_sim(sim_factory)
    async with contextlib.AsyncExitStack() as stack:
        a = await stack.enter_async_context(sidecar(sim, tmp_path, "pve1"))
        b = await stack.enter_async_context(sidecar(sim, tmp_path, "pve2"))
        c = await stack.enter_async_context(sidecar(sim, tmp_path, "pve3"))
        await a.guests.manage(101, actor="test")
        await node_service.drain(b.journal, "pve2", actor="test", reason="maintenance", now=1.0)
        await b.reconciler.pass_once()
        assert "lifecycled-node-state: draining" in sim.sim.nodes["pve2"].description
        with pytest.raises(NodeRefused) as refused:
            await a.submit(
                Submission(
                    action="migrate", vmid=101, params={"target": "pve2"}, idempotency_key="m1"
                )
            )
        assert refused.value.code == "node_draining"
        assert await a.journal.by_key("m1") is None
        audits = (await a.journal.list_audit(vmid=101, decision="refused")).items
        assert len(audits) == 1 and "node_draining" in audits[0].reason
        op = await op_for(a, "migrate", 101, key="m2", target="pve3")
        assert op.state.value == "succeeded" and sim.sim.guests[101].node == "pve3"

        sim.sim.set_node_offline("pve3")
        await c.reconciler.pass_once()
        node = await c.journal.get_node("pve3")
        assert node is not None and node.state is NodeState.UNHEALTHY
        sim.sim.set_node_offline("pve3", offline=False)
        await c.reconciler.pass_once()
        node = await c.journal.get_node("pve3")
        assert node is not None and node.state is NodeState.ACTIVE

        await node_service.undrain(b.journal, "pve2", actor="test", reason="done", now=2.0)
        await b.reconciler.pass_once()
        assert "lifecycled-node-state" not in sim.sim.nodes["pve2"].description


async def test_a_reused_vmid_elsewhere_carrying_the_tags_is_never_acted_on(
    sim_factory: Any, tmp_path: Path
) -> None:
    """Identity follows the guest: 101 (desired running) vanishes from pve1 and a different
    guest appears as 101 on pve2 with a copy of its tags; the node changed, so the fingerprint
    is checked — it does not match, nothing is enqueued and the guest is reported skipped."""
    sim = await three_node_sim(sim_factory)
    async with sidecar(sim, tmp_path, "pve1,pve2") as rt:
        sim.sim.set_guest_status(101, "running")
        await rt.guests.manage(101, actor="test")
        await settle(rt)
        tags = sim.sim.guests[101].config["tags"]
        sim.sim.delete_guest(101)
        sim.sim.create_guest(101, kind="qemu", node="pve2", status="stopped", config={"tags": tags})
        report = await settle(rt)
        assert report.enqueued == []
        assert {"vmid": 101, "reason": "identity does not match its record: not acted on"} in (
            report.skipped
        )
        assert not sim.sim.guests[101].running
        assert (await settle(rt)).enqueued == []  # and on every later pass


async def test_a_daemon_serving_two_nodes_keeps_both_lifecycles(
    sim_factory: Any, tmp_path: Path
) -> None:
    """--node pve1,pve2: both nodes are active at start; a drain of the second one is
    published for every sidecar, and the second node going offline marks it unhealthy."""
    from lifecycled.domain.node import NodeState
    from lifecycled.engine import node as node_service

    sim = await three_node_sim(sim_factory)
    async with sidecar(sim, tmp_path, "pve1,pve2") as rt:
        for name in ("pve1", "pve2"):
            node = await rt.journal.get_node(name)
            assert node is not None and node.state is NodeState.ACTIVE, name
        await node_service.drain(rt.journal, "pve2", actor="test", reason="kernel", now=1.0)
        await rt.reconciler.pass_once()
        assert "lifecycled-node-state: draining" in sim.sim.nodes["pve2"].description
        assert "lifecycled-node-state" not in sim.sim.nodes["pve1"].description
        sim.sim.set_node_offline("pve2")
        await rt.reconciler.pass_once()
        second = await rt.journal.get_node("pve2")
        assert second is not None and second.state is NodeState.UNHEALTHY
        first = await rt.journal.get_node("pve1")
        assert first is not None and first.state is NodeState.ACTIVE
        sim.sim.set_node_offline("pve2", offline=False)
        await rt.reconciler.pass_once()
        second = await rt.journal.get_node("pve2")
        assert second is not None and second.state is NodeState.DRAINING  # back to the drain


async def test_a_record_with_several_keys_survives_proxmox_sorting_its_tags(
    sim_factory: Any, tmp_path: Path
) -> None:
    """Proxmox stores every tag write sorted and lower-cased: after six recorded ops the record
    still names the newest four keys, newest first, beside the operator's own tags; after a
    hand-off the target's sidecar refuses each of them (nothing sent) — one key, one run."""
    sim = await sim_factory(nodes=("pve1", "pve2"), guests=0)
    sim.sim.create_guest(201, kind="qemu", node="pve1", status="running")
    sim.sim.update_config(201, {"tags": "Web;prod"}, ())  # the operator's, as hand-written
    keys = ["Order-1:Reboot", "Order-2:Stop", "Order-3:Start", "Order-4:Reset", "Order-5:Reboot"]
    async with sidecar(sim, tmp_path, "pve1") as a, sidecar(sim, tmp_path, "pve2") as b:
        await a.guests.manage(201, actor="test")
        for key in keys:
            op = await op_for(a, key.split(":")[1].lower(), 201, key=key)
            assert op.state.value == "succeeded", (key, op.error)
        op = await op_for(
            a, "migrate", 201, key="Order-6:Move", target="pve2", online=True,
            with_local_disks=True,
        )  # fmt: skip
        assert op.state.value == "succeeded", op.error

        tags = sim.sim.guests[201].config["tags"]
        assert tags == stored_tags(tags)  # as Proxmox stores them: sorted, lower case, once
        assert {"prod", "web"} <= set(tags.split(";"))
        newest = ["Order-6:Move", *reversed(keys[1:])][:4]
        assert record(sim, 201).last_keys == tuple(key_digest(k) for k in newest)
        assert record(sim, 201).desired is DesiredState.RUNNING

        await settle(b)
        assert (await b.journal.get_guest(201)).node == "pve2"
        for key in newest[1:]:
            action = key.split(":")[1].lower()
            with pytest.raises(KeyUsedElsewhere):
                await b.submit(Submission(action=action, vmid=201, idempotency_key=key))
            assert await b.journal.by_key(key) is None
        posts = [r.path.rsplit("/", 1)[-1] for r in sim.sim.requests if r.method == "POST"]
        assert [p for p in posts if p in ("reboot", "reset")] == ["reboot", "reset", "reboot"]
