"""Both Proxmox adapters classify the same failures identically (reference §11, §13).

Each adapter (the aiohttp client, proxmoxer's ``https`` backend, proxmoxer's ``local``
backend with a stand-in ``pvesh``) meets the same scripted failures on its own simulator;
the classes its errors carry must be the same, and the ones the classifier's table gives.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import attrs
import pytest
from conftest_pve import (
    ADAPTERS,
    Harness,
    harness_for,
    make_tls,
    running_sim,
    sim_config,
    wait_task,
)

from lifecycled.domain.actions import Action
from lifecycled.domain.classify import ErrorClass
from lifecycled.domain.op import GuestKind
from lifecycled.errors import PveError
from lifecycled.pve.auth import TicketAuth
from lifecycled.pve.http import HttpPveClient
from lifecycled.pve.port import PveClient
from lifecycled.pve.proxmoxer_backend import build_proxmoxer_client
from lifecycled.pve.tls import TlsOptions

pytestmark = pytest.mark.timeout(120)

Q, L = GuestKind.QEMU, GuestKind.LXC
HTTP_ONLY = ("aiohttp", "proxmoxer-https")  # pvesh does not read an HTTP answer


@attrs.frozen(kw_only=True)
class Case:
    """One scripted failure of one lifecycle call."""

    name: str
    vmid: int
    kind: GuestKind
    action: Action
    running: bool
    fault: dict[str, Any]
    expected: ErrorClass
    params: dict[str, Any] = attrs.field(factory=dict)
    adapters: tuple[str, ...] = ADAPTERS


def _suffix(action: Action) -> str:
    return {Action.CONFIGURE: "/config", Action.MIGRATE: "/migrate"}.get(
        action, f"/status/{action}"
    )


CASES = (
    Case(
        name="garbled 200 to a start",
        vmid=105,
        kind=Q,
        action=Action.START,
        running=False,
        fault={"answer": "garbled"},
        expected=ErrorClass.AMBIGUOUS,
        adapters=HTTP_ONLY,
    ),
    Case(
        name="truncated 200 to a start",
        vmid=108,
        kind=Q,
        action=Action.START,
        running=False,
        fault={"answer": "truncated"},
        expected=ErrorClass.AMBIGUOUS,
        adapters=HTTP_ONLY,
    ),
    Case(
        name="fork_worker's .active.lock timeout",
        vmid=109,
        kind=Q,
        action=Action.REBOOT,
        running=True,
        fault={"answer": "fork-lock-timeout"},
        expected=ErrorClass.AMBIGUOUS,
    ),
    Case(
        name="the guest's own lock-file timeout",
        vmid=110,
        kind=Q,
        action=Action.REBOOT,
        running=True,
        fault={
            "status": 500,
            "reason": "can't lock file '/var/lock/qemu-server/lock-110.conf' - got timeout",
        },
        expected=ErrorClass.TRANSIENT,
    ),
    Case(
        name="container already running, for a start",
        vmid=111,
        kind=L,
        action=Action.START,
        running=True,
        fault={},
        expected=ErrorClass.SATISFIED,
    ),
    Case(
        name="background_delay: the config task failed on a lock",
        vmid=112,
        kind=Q,
        action=Action.CONFIGURE,
        running=False,
        fault={"exitstatus": "VM is locked (backup)"},
        params={"cores": 2, "background_delay": 5},
        expected=ErrorClass.LOCKED,
    ),
    Case(
        name="no such cluster node",
        vmid=113,
        kind=Q,
        action=Action.MIGRATE,
        running=False,
        fault={"status": 500, "reason": "no such cluster node 'pve9'"},
        params={"target": "pve9"},
        expected=ErrorClass.PERMANENT,
    ),
)


async def _classes(harness: Harness, adapter: str) -> dict[str, ErrorClass]:
    sim = harness.sim
    got: dict[str, ErrorClass] = {}
    for case in CASES:
        if adapter not in case.adapters:
            continue
        guest = sim.guests[case.vmid]
        assert guest.kind == case.kind
        sim.set_guest_status(case.vmid, "running" if case.running else "stopped")
        if case.fault:
            path = f"/{case.kind}/{case.vmid}{_suffix(case.action)}$"
            sim.add_fault(method="*", path=path, **case.fault)
        with pytest.raises(PveError) as info:
            await harness.client.dispatch(
                guest.node, case.kind, case.action, case.vmid, case.params
            )
        got[case.name] = info.value.error_class
    return got


async def test_every_adapter_classifies_the_same_failures_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiohttp, proxmoxer https and proxmoxer local give each scripted failure the same class."""
    seen: dict[str, dict[str, ErrorClass]] = {}
    for adapter in ADAPTERS:
        home = tmp_path / adapter
        home.mkdir()
        async with harness_for(adapter, home, monkeypatch) as harness:
            seen[adapter] = await _classes(harness, adapter)
    expected = {case.name: case.expected for case in CASES}
    for adapter, classes in seen.items():
        wanted = {name: cls for name, cls in expected.items() if name in classes}
        assert classes == wanted, adapter
    assert set(seen["aiohttp"]) == set(expected)


async def test_both_adapters_take_the_canonical_user_from_the_ticket(tmp_path: Path) -> None:
    """Both adapters report the canonical user id their UPIDs carry after a ticket login."""
    users = {"john@corp.com@ad": "pw-john"}
    tls = make_tls(tmp_path)
    cfg = sim_config(users=users, case_insensitive_realms=("ad",))
    async with running_sim(cfg, tls.server_context) as server:
        login = TicketAuth(username="JOHN@Corp.com@ad", password="pw-john")
        clients: list[PveClient] = [
            HttpPveClient(server.url, auth=login, tls=TlsOptions(ca_file=tls.ca_file)),
            build_proxmoxer_client(
                "https",
                server.url.split("://", 1)[1],
                user=login.username,
                password=login.password,
                tls=TlsOptions(ca_file=tls.ca_file),
                timeout=30.0,
            ),
        ]
        try:
            for vmid, client in zip((101, 105), clients, strict=True):
                server.sim.set_guest_status(vmid, "stopped")
                node = server.sim.guests[vmid].node
                upid = await client.dispatch(node, Q, Action.START, vmid, {})
                assert upid is not None
                assert upid.user == client.user == "john@corp.com@ad"
        finally:
            for client in clients:
                await client.close()


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_nine_hex_digit_pstart_upids_work_with_every_adapter(
    adapter: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A UPID with 9 hex digits of pstart is the answer with every adapter (§13.14)."""
    async with harness_for(adapter, tmp_path, monkeypatch) as harness:
        node = harness.sim.guests[106].node
        harness.sim.nodes[node].boot_time = time.time() - 600 * 86400
        upid = await harness.client.dispatch(node, Q, Action.START, 106, {})  # a template
        assert upid is not None and upid.pstart > 0xFFFFFFFF
        status = await wait_task(harness.client, upid)
        assert status.exitstatus == "you can't start a vm if it's a template"
