"""The node listing ``GET /nodes/{node}/qemu|lxc`` as Proxmox's source builds it, and the
Check it settles: the same verdict as ``status/current`` for every guest state."""

from __future__ import annotations

import itertools
from typing import Any

from engine_support import client_for

from lifecycled.domain.actions import all_specs
from lifecycled.domain.check import check_from_listing, precheck
from lifecycled.domain.guests import GuestFacts
from lifecycled.domain.op import GuestKind, GuestRef, Op
from lifecycled.policy import decide
from lifecycled.pve.port import read_guest_status
from lifecycled.pve.schema import config_locks
from lifecycled.sim import SimServer
from lifecycled.sim.model import Guest
from lifecycled.sim.rawclient import RawClient

#: Every config lock either kind knows (Proxmox's schema), and none.
LOCKS = (None, *config_locks())
PARAMS: tuple[dict[str, Any], ...] = ({}, {"force_stop": True})
FACTS = (GuestFacts(origin="native"), GuestFacts(origin="released"))


def guest_of(sim: SimServer, kind: str, **where: Any) -> Guest:
    for guest in sorted(sim.sim.guests.values(), key=lambda g: g.vmid):
        if guest.kind == kind and all(getattr(guest, k) == v for k, v in where.items()):
            return guest
    raise LookupError(f"no {kind} guest with {where}")


async def test_qemu_listing_has_no_qmp_state_without_full(
    sim: SimServer, sim_api: RawClient
) -> None:
    """A paused VM lists as ``running`` with no ``qmpstatus``, ``ha`` or QMP fields, its
    ``lock`` and ``tags`` from the config (set only when the config has them); with
    ``full=1`` its ``qmpstatus`` reads ``paused`` (qemu-server ``vmstatus``)."""
    vm = guest_of(sim, "qemu", running=True, ha=None)
    sim.sim.set_guest_status(vm.vmid, "paused")
    sim.sim.update_config(vm.vmid, {"lock": "backup", "tags": ""})
    plain = {i["vmid"]: i for i in (await sim_api.get(f"/nodes/{vm.node}/qemu")).data}
    item = plain[vm.vmid]
    assert (item["status"], item["lock"], item["tags"]) == ("running", "backup", "")
    for vmid, each in plain.items():
        assert ("lock" in each) == bool(sim.sim.guests[vmid].lock)
    for absent in ("qmpstatus", "ha", "running-machine", "running-qemu", "diskread", "agent"):
        assert absent not in item, absent
    full = {i["vmid"]: i for i in (await sim_api.get(f"/nodes/{vm.node}/qemu", {"full": 1})).data}
    assert full[vm.vmid]["qmpstatus"] == "paused"
    assert "ha" not in full[vm.vmid]
    assert all(i["qmpstatus"] == i["status"] for i in full.values() if i["status"] == "stopped")


async def test_lxc_listing_is_status_current_without_ha(sim: SimServer, sim_api: RawClient) -> None:
    """Each container's item is its ``status/current`` minus ``ha`` (pve-container
    ``vmstatus``); only that node's containers are listed, and ``full`` is refused (400)."""
    ct = guest_of(sim, "lxc")
    node = ct.node
    items = (await sim_api.get(f"/nodes/{node}/lxc")).data
    assert {i["vmid"] for i in items} == {
        g.vmid for g in sim.sim.guests.values() if g.node == node and g.kind == "lxc"
    }
    for item in items:
        current = (await sim_api.get(f"/nodes/{node}/lxc/{item['vmid']}/status/current")).data
        assert "ha" in current
        del current["ha"]
        current.pop("uptime"), item.pop("uptime")
        assert item == current
    assert (await sim_api.get(f"/nodes/{node}/lxc", {"full": 1})).status == 400


def _states(kind: str) -> tuple[str, ...]:
    if kind == "qemu":
        return ("stopped", "running", "paused", "prelaunch", "hibernated")
    return ("stopped", "running")


def _arrange(sim: SimServer, guest: Guest, state: str, lock: str | None, ha: bool) -> None:
    sim.sim.set_guest_status(guest.vmid, state)
    if state != "hibernated":
        guest.config.pop("lock", None)
        if lock:
            guest.config["lock"] = lock
    sim.sim.set_ha(guest.vmid, "started" if ha else None)


async def test_every_simulated_state_gets_the_status_current_verdict(sim: SimServer) -> None:
    """Over the simulator's guest states — stopped, running, paused, prelaunch, hibernated,
    each lock, a template, HA-managed, missing — and every action: where the listing read over
    HTTP settles the Check, policy's and the precheck's verdicts equal those from the same
    guest's ``status/current``; a missing guest is never settled from the listing."""
    client = client_for(sim)
    settled = compared = 0
    try:
        for kind in ("qemu", "lxc"):
            guest = guest_of(sim, kind, template=False)
            template = guest_of(sim, kind, template=True) if kind == "qemu" else None
            for target, state, lock, ha in itertools.product(
                [g for g in (guest, template) if g is not None],
                _states(kind),
                LOCKS,
                (False, True),
            ):
                _arrange(sim, target, state, lock, ha)
                gk = GuestKind(kind)
                listing = {s.vmid: s.listed() for s in await client.node_guests(target.node, gk)}
                current = await read_guest_status(client, target.node, gk, target.vmid)
                for spec, params, facts in itertools.product(all_specs(), PARAMS, FACTS):
                    if spec.kind is not gk:
                        continue
                    found = check_from_listing(spec, params, target.node, listing.get(target.vmid))
                    compared += 1
                    if found.view is None:
                        continue
                    settled += 1
                    op = Op(
                        id=1,
                        idempotency_key="k",
                        action=str(spec.action),
                        guest=GuestRef(node=target.node, kind=gk, vmid=target.vmid),
                        params=params,
                        created_at=0.0,
                        updated_at=0.0,
                    )
                    assert (decide(op, spec, found.view, facts), precheck(op, found.view)) == (
                        decide(op, spec, current, facts),
                        precheck(op, current),
                    ), (kind, state, lock, ha, spec.action, params)
            sim.sim.delete_guest(guest.vmid)
            listing = {
                s.vmid: s.listed() for s in await client.node_guests(guest.node, GuestKind(kind))
            }
            assert guest.vmid not in listing
            for spec in all_specs():
                if spec.kind is GuestKind(kind):
                    assert not check_from_listing(spec, {}, guest.node, None).settled
    finally:
        await client.close()
    assert 0 < settled < compared
