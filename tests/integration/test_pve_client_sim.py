"""Contract tests: every PveClient call against the simulator over real loopback HTTP(S).

The same tests run over each adapter (see ``conftest_pve``): the aiohttp client, proxmoxer's
``https`` backend (TLS, token) and proxmoxer's ``local`` backend (a stand-in ``pvesh``).
Assertions are on what the simulator holds afterwards, not on calls made.

Seeded roles (SIMULATOR.md; two nodes, 20 guests): vmid ``100 + i``, every 4th (103, 107, …)
a container; 100 and 103 run, 101 is stopped, 102 is protected, 104 (VM) and 107 (CT) are
HA-managed and started, 106 is a template. Owning nodes are read from the simulator.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest_pve import (
    ADAPTERS,
    PASSWORD,
    TOKEN,
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
from lifecycled.domain.upid import Upid
from lifecycled.errors import PveError, RequestNotSent
from lifecycled.pve.auth import TicketAuth
from lifecycled.pve.http import HttpPveClient
from lifecycled.pve.port import is_guest_missing, is_no_such_task, read_guest
from lifecycled.pve.proxmoxer_backend import build_proxmoxer_client
from lifecycled.pve.timeouts import Timeouts
from lifecycled.pve.tls import TlsOptions

Q, L = GuestKind.QEMU, GuestKind.LXC

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=ADAPTERS)
async def pve(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Harness]:
    async with harness_for(request.param, tmp_path, monkeypatch) as harness:
        yield harness


def at(pve: Harness, vmid: int) -> str:
    """The node that owns ``vmid`` in the simulator."""
    return str(pve.sim.guests[vmid].node)


async def failure(coro: object) -> PveError:
    with pytest.raises(PveError) as info:
        await coro  # type: ignore[misc]
    return info.value


# --- lifecycle calls and tasks ---------------------------------------------------------------


async def test_start_returns_our_upid_and_the_guest_runs(pve: Harness) -> None:
    """A start answers a UPID of the owning node, our user and ``qmstart``; the VM then runs."""
    upid = await pve.client.dispatch(at(pve, 101), Q, Action.START, 101, {})
    assert upid is not None
    assert (upid.node, upid.type, upid.id, upid.user) == (
        at(pve, 101),
        "qmstart",
        "101",
        pve.client.user,
    )
    if pve.waits_for_tasks:  # pvesh answers only once the task has ended
        assert pve.sim.guests[101].running
    status = await wait_task(pve.client, upid)
    assert (status.running, status.exitstatus) == (False, "OK")
    assert pve.sim.guests[101].running
    assert (await pve.client.guest_status(at(pve, 101), Q, 101)).status == "running"


async def test_task_log_and_task_list(pve: Harness) -> None:
    """The finished task's log ends ``TASK OK``; the node's task list finds it by filters."""
    before = int(time.time()) - 5
    upid = await pve.client.dispatch(at(pve, 100), Q, Action.SHUTDOWN, 100, {"timeout": 10})
    assert upid is not None
    await wait_task(pve.client, upid)
    lines = await pve.client.task_log(upid)
    assert lines[-1] == "TASK OK"
    listed = await pve.client.tasks(
        at(pve, 100), source="all", vmid=100, typefilter="qmshutdown", since=before
    )
    assert [e.upid for e in listed.items] == [upid]
    assert listed.total in (1, None)  # proxmoxer's backends cannot see ``total``
    assert listed.items[0].user == pve.client.user
    assert not pve.sim.guests[100].running


async def test_task_list_paging_and_user_filter(pve: Harness) -> None:
    """``start``/``limit`` page the list; ``userfilter`` keeps our tasks."""
    node = at(pve, 101)
    upids = []
    for _ in range(2):  # the second start fails in its task: still a qmstart task
        upid = await pve.client.dispatch(node, Q, Action.START, 101, {})
        assert upid is not None
        await wait_task(pve.client, upid)
        upids.append(upid)
    page = await pve.client.tasks(node, vmid=101, typefilter="qmstart", limit=1)
    rest = await pve.client.tasks(node, vmid=101, typefilter="qmstart", start=1, limit=50)
    assert len(page.items) == len(rest.items) == 1
    assert {e.upid for e in page.items + rest.items} == set(upids)
    mine = await pve.client.tasks(node, userfilter=pve.client.user.split("!")[0])
    assert mine.items
    assert all(e.user.startswith(pve.client.user.split("!")[0]) for e in mine.items)


async def test_node_guests_is_live(pve: Harness) -> None:
    """The node's guest list shows a power change at once (``/cluster/resources`` lags)."""
    node = at(pve, 100)
    before = {g.vmid: g.status for g in await pve.client.node_guests(node, Q)}
    pve.sim.set_guest_status(100, "stopped" if before[100] == "running" else "running")
    after = {g.vmid: g.status for g in await pve.client.node_guests(node, Q)}
    assert after[100] != before[100]
    assert set(after) == {
        g.vmid for g in pve.sim.guests.values() if g.node == node and g.kind == "qemu"
    }


async def test_node_guests_read_what_the_listing_holds(pve: Harness) -> None:
    """Every adapter decodes the listing: a paused VM reads ``running`` with no run state
    (only ``status/current`` has it), its lock and tags from the config, a template's flag."""
    node = at(pve, 100)
    pve.sim.set_guest_status(100, "paused")
    pve.sim.update_config(100, {"lock": "backup", "tags": "web;lc"})
    listed = {g.vmid: g for g in await pve.client.node_guests(node, Q)}
    vm = listed[100]
    assert (vm.status, vm.qmpstatus, vm.lock, vm.tags) == ("running", None, "backup", "web;lc")
    assert vm.listed().qmpstatus is None
    assert (await pve.client.guest_status(node, Q, 100)).qmpstatus == "paused"
    templates = {v for v, g in pve.sim.guests.items() if g.node == node and g.kind == "qemu"}
    assert {v for v, g in listed.items() if g.template} == {
        v for v in templates if pve.sim.guests[v].template
    }


async def test_lxc_configure_is_synchronous(pve: Harness) -> None:
    """LXC ``PUT config`` answers null: no task; the value is set when it returns."""
    got = await pve.client.dispatch(at(pve, 103), L, Action.CONFIGURE, 103, {"cores": 3})
    assert got is None
    assert str(pve.sim.guests[103].config["cores"]) == "3"
    config = await pve.client.guest_config(at(pve, 103), L, 103)
    assert str(config.values["cores"]) == "3"
    assert config.digest == pve.sim.guests[103].digest()


async def test_qemu_configure_forks_a_task(pve: Harness) -> None:
    """QEMU ``POST config`` answers a ``qmconfig`` UPID; the change lands when it ends."""
    upid = await pve.client.dispatch(at(pve, 101), Q, Action.CONFIGURE, 101, {"memory": 4096})
    assert upid is not None and upid.type == "qmconfig"
    assert (await wait_task(pve.client, upid)).exitstatus == "OK"
    values = (await pve.client.guest_config(at(pve, 101), Q, 101)).values
    assert str(values["memory"]) == "4096"


async def test_resize_and_migrate(pve: Harness) -> None:
    """Resize grows the disk; an offline migrate moves the guest to the target node."""
    config = await pve.client.guest_config(at(pve, 101), Q, 101)
    disk = next(k for k in ("scsi0", "virtio0", "sata0", "ide0") if k in config.values)
    upid = await pve.client.dispatch(
        at(pve, 101), Q, Action.RESIZE, 101, {"disk": disk, "size": "+1G"}
    )
    assert upid is not None and upid.type == "resize"
    assert (await wait_task(pve.client, upid)).exitstatus == "OK"
    target = "pve1" if at(pve, 101) == "pve2" else "pve2"
    upid = await pve.client.dispatch(at(pve, 101), Q, Action.MIGRATE, 101, {"target": target})
    assert upid is not None and upid.type == "qmigrate"
    await wait_task(pve.client, upid)
    assert pve.sim.guests[101].node == target
    view = await read_guest(pve.client, target, Q, 101)
    assert view.exists and view.node == target


async def test_clone_create_and_terminate(pve: Harness) -> None:
    """Clone answers a UPID whose id is the source; the clone can then be destroyed."""
    upid = await pve.client.dispatch(
        at(pve, 101), Q, Action.CLONE, 150, {"source_vmid": 101, "name": "copy-150"}
    )
    assert upid is not None and (upid.type, upid.id) == ("qmclone", "101")
    assert (await wait_task(pve.client, upid)).exitstatus == "OK"
    assert pve.sim.guests[150].config["name"] == "copy-150"
    upid = await pve.client.dispatch(at(pve, 150), Q, Action.TERMINATE, 150, {"purge": True})
    assert upid is not None and upid.type == "qmdestroy"
    await wait_task(pve.client, upid)
    assert 150 not in pve.sim.guests
    assert not (await read_guest(pve.client, at(pve, 101), Q, 150)).exists


async def test_stop_task(pve: Harness) -> None:
    """Stopping a running task ends it with ``received interrupt``."""
    pve.sim.add_fault(method="POST", path=r"/status/start$", task_seconds=5.0)
    starter = pve.direct_client()  # pvesh would wait for the task to end
    try:
        upid = await starter.dispatch(at(pve, 101), Q, Action.START, 101, {})
    finally:
        await starter.close()
    assert upid is not None
    await pve.client.stop_task(upid)
    status = await wait_task(pve.client, upid)
    assert status.exitstatus == "received interrupt"


# --- reads -----------------------------------------------------------------------------------


async def test_guest_status_fields(pve: Harness) -> None:
    """Status maps HA state and template flags as the simulator holds them."""
    ha = await pve.client.guest_status(at(pve, 104), Q, 104)
    assert (ha.status, ha.ha_managed, ha.ha_state) == ("running", True, "started")
    template = await pve.client.guest_status(at(pve, 106), Q, 106)
    assert (template.template, template.status, template.ha_managed) == (True, "stopped", False)
    ct = await pve.client.guest_status(at(pve, 103), L, 103)
    assert (ct.vmid, ct.status, ct.qmpstatus) == (103, "running", None)


async def test_guest_config_current(pve: Harness) -> None:
    """``current`` config reads work and carry the digest."""
    config = await pve.client.guest_config(at(pve, 100), Q, 100, current=True)
    assert config.digest == pve.sim.guests[100].digest()
    assert "digest" not in config.values


async def test_cluster_resources_match_the_simulator(pve: Harness) -> None:
    """``/cluster/resources?type=vm`` lists every guest with its node and kind."""
    resources = await pve.client.cluster_resources()
    assert {(r.vmid, r.kind.value, r.node) for r in resources} == {
        (g.vmid, g.kind, g.node) for g in pve.sim.guests.values()
    }
    by_vmid = {r.vmid: r for r in resources}
    assert by_vmid[104].hastate is not None
    assert by_vmid[106].template


async def test_node_status(pve: Harness) -> None:
    """A node's status is a non-empty mapping."""
    assert await pve.client.node_status("pve1")


async def test_ha_resources(pve: Harness) -> None:
    """HA resources read back; a non-HA guest reads None; a state request is applied."""
    resource = await pve.client.ha_resource("vm:104")
    assert resource is not None and resource["state"] == "started"
    assert await pve.client.ha_resource("vm:100") is None
    await pve.client.ha_set_state("vm:104", "stopped")
    assert pve.sim.guests[104].ha.state == "stopped"


async def test_ha_managed_start_is_routed(pve: Harness) -> None:
    """Starting an HA-managed guest answers an ``hastart`` task."""
    await pve.client.ha_set_state("ct:107", "stopped")
    await asyncio.sleep(0.5)  # the simulated LRM stops it (ha_delay 0.2 s)
    upid = await pve.client.dispatch(at(pve, 107), L, Action.START, 107, {})
    assert upid is not None and upid.type == "hastart"
    assert (await wait_task(pve.client, upid)).exitstatus == "OK"


# --- errors, per class ---------------------------------------------------------------------------


async def test_already_running_container_is_satisfied_for_start(pve: Harness) -> None:
    """``CT 103 already running`` is satisfied for a start intent."""
    err = await failure(pve.client.dispatch(at(pve, 103), L, Action.START, 103, {}))
    assert (err.status, err.reason) == (500, "CT 103 already running")
    assert err.error_class is ErrorClass.SATISFIED


async def test_stopped_container_is_satisfied_for_stop(pve: Harness) -> None:
    """``CT n not running`` is satisfied for a stop intent."""
    pve.sim.guests[111].set_stopped()
    err = await failure(pve.client.dispatch(at(pve, 111), L, Action.STOP, 111, {}))
    assert err.reason == "CT 111 not running"
    assert err.error_class is ErrorClass.SATISFIED


async def test_missing_guest_is_satisfied_for_terminate(pve: Harness) -> None:
    """Destroying a guest that does not exist is satisfied for terminate."""
    err = await failure(pve.client.dispatch("pve1", Q, Action.TERMINATE, 999, {}))
    assert "does not exist" in err.reason
    assert err.error_class is ErrorClass.SATISFIED
    assert is_guest_missing(await failure(pve.client.guest_status("pve1", Q, 999)))


async def test_locked_guest(pve: Harness) -> None:
    """A config ``lock`` refuses a config change: class ``locked``."""
    pve.sim.guests[101].config["lock"] = "backup"
    err = await failure(pve.client.dispatch(at(pve, 101), Q, Action.CONFIGURE, 101, {"cores": 2}))
    assert (err.reason, err.error_class) == ("VM is locked (backup)", ErrorClass.LOCKED)


async def test_protected_guest_is_permanent(pve: Harness) -> None:
    """Destroying a protected guest is refused for good."""
    pve.sim.guests[102].set_stopped()
    err = await failure(pve.client.dispatch(at(pve, 102), Q, Action.TERMINATE, 102, {}))
    assert err.error_class is ErrorClass.PERMANENT
    assert err.reason.endswith("protection mode enabled")
    assert 102 in pve.sim.guests


async def test_root_only_option(pve: Harness) -> None:
    """``skiplock``: a token gets 400 with ``errors``; pvesh as root@pam may use it."""
    if pve.client.user == "root@pam":
        upid = await pve.client.dispatch(at(pve, 101), Q, Action.START, 101, {"skiplock": True})
        assert upid is not None
        return
    err = await failure(pve.client.dispatch(at(pve, 101), Q, Action.START, 101, {"skiplock": True}))
    assert (err.status, err.error_class) == (400, ErrorClass.PERMANENT)
    assert "skiplock" in err.errors


async def test_booleans_go_out_as_one_or_zero(pve: Harness) -> None:
    """§13.7: a boolean a client spelled ``"true"`` is sent as ``1`` and accepted."""
    guest = pve.sim.pick_guest("qemu", running=True)
    upid = await pve.client.dispatch(
        guest.node, Q, Action.STOP, guest.vmid, {"overrule-shutdown": "true"}
    )
    assert upid is not None
    assert (await wait_task(pve.client, upid)).exitstatus == "OK"
    assert not guest.running
    sent = [r for r in pve.sim.requests if r.path.endswith(f"/{guest.vmid}/status/stop")]
    assert [r.params.get("overrule-shutdown") for r in sent] == ["1"]


async def test_template_start_fails_in_the_task(pve: Harness) -> None:
    """Starting a template forks a task that fails with the template text."""
    upid = await pve.client.dispatch(at(pve, 106), Q, Action.START, 106, {})
    assert upid is not None
    status = await wait_task(pve.client, upid)
    assert status.exitstatus == "you can't start a vm if it's a template"


async def test_no_such_task(pve: Harness) -> None:
    """An unknown UPID reads as ``no such task`` (400 with ``errors.upid``)."""
    ghost = Upid.parse(f"UPID:pve1:00000001:00000001:{int(time.time()):08X}:qmstart:100:root@pam:")
    err = await failure(pve.client.task_status(ghost))
    assert is_no_such_task(err)


async def test_sync_lock_timeout_is_transient(pve: Harness) -> None:
    """A synchronous ``can't lock file … got timeout`` is transient."""
    text = "can't lock file '/run/lock/lxc/pve-config-103.lock' - got timeout"
    pve.sim.add_fault(method="PUT", path=r"/lxc/103/config$", status=500, reason=text)
    err = await failure(pve.client.dispatch(at(pve, 103), L, Action.CONFIGURE, 103, {"cores": 2}))
    assert (err.reason, err.error_class) == (text, ErrorClass.TRANSIENT)


async def test_offline_node_is_transient(pve: Harness) -> None:
    """A 595 for a read of an offline node is transient."""
    pve.sim.add_fault(
        method="GET", path=r"/nodes/pve2/status$", status=595, reason="No route to host"
    )
    err = await failure(pve.client.node_status("pve2"))
    assert (err.status, err.error_class) == (595, ErrorClass.TRANSIENT)


async def test_596_after_the_task_started_is_ambiguous(pve: Harness) -> None:
    """A 596 to a POST that did start its task is ambiguous, and the task is findable."""
    pve.sim.add_fault(
        method="POST",
        path=r"/qemu/101/status/start$",
        status=596,
        reason="Connection timed out",
        execute=True,
    )
    before = int(time.time()) - 5
    err = await failure(pve.client.dispatch(at(pve, 101), Q, Action.START, 101, {}))
    assert (err.status, err.error_class) == (596, ErrorClass.AMBIGUOUS)
    found = await pve.client.tasks(at(pve, 101), vmid=101, typefilter="qmstart", since=before)
    assert [e.user for e in found.items] == [pve.client.user]


async def test_connection_dropped_after_post_is_ambiguous(pve: Harness) -> None:
    """A connection closed after the POST was handled: ambiguous (HTTP adapters only)."""
    if pve.adapter == "proxmoxer-local":
        pytest.skip("pvesh does not talk HTTP to the local node")
    pve.sim.add_fault(method="POST", path=r"/qemu/101/status/start$", drop=True)
    err = await failure(pve.client.dispatch(at(pve, 101), Q, Action.START, 101, {}))
    assert (err.status, err.sent, err.error_class) == (None, True, ErrorClass.AMBIGUOUS)
    await asyncio.sleep(0.3)
    assert pve.sim.guests[101].running  # the task ran although no answer came


async def test_hook_labels_are_templates(pve: Harness) -> None:
    """The metrics hook never sees a vmid, a UPID or a node name."""
    upid = await pve.client.dispatch(at(pve, 101), Q, Action.START, 101, {})
    assert upid is not None
    await wait_task(pve.client, upid)
    await pve.client.guest_status(at(pve, 101), Q, 101)
    endpoints = {endpoint for _, endpoint, _ in pve.hooks}
    assert "/nodes/{node}/{kind}/{vmid}/status/{action}" in endpoints
    assert "/nodes/{node}/tasks/{upid}/status" in endpoints or pve.waits_for_tasks
    for endpoint in endpoints:
        assert "UPID" not in endpoint and "101" not in endpoint
        assert "pve1" not in endpoint and "pve2" not in endpoint


# --- aiohttp-only: ticket auth, TLS, timeouts --------------------------------------------------


async def test_ticket_auth_against_the_simulator(caplog: pytest.LogCaptureFixture) -> None:
    """A password login works for reads and writes (CSRF), renews its ticket, logs no secret."""
    caplog.set_level(logging.DEBUG)
    now = [0.0]
    async with running_sim(sim_config()) as server:
        auth = TicketAuth(username="root@pam", password=PASSWORD)
        async with HttpPveClient(server.url, auth=auth, clock=lambda: now[0]) as client:
            node = server.sim.guests[101].node
            assert (await client.guest_status(node, Q, 101)).status == "stopped"
            upid = await client.dispatch(node, Q, Action.START, 101, {})
            assert upid is not None and upid.user == "root@pam" == client.user
            await wait_task(client, upid)
            now[0] += 3601
            assert (await client.guest_status(node, Q, 101)).status == "running"
        logins = [r for r in server.sim.requests if r.path.endswith("/access/ticket")]
        assert len(logins) == 2
    assert PASSWORD not in caplog.text
    assert "PVE:root@pam:" not in caplog.text  # no ticket


async def test_wrong_password_is_refused() -> None:
    """A wrong password fails the login: a 401 PveError without the password in it."""
    async with running_sim(sim_config()) as server:
        auth = TicketAuth(username="root@pam", password="wrong-password")
        async with HttpPveClient(server.url, auth=auth) as client:
            err = await failure(client.node_status("pve1"))
    assert err.status == 401
    assert "wrong-password" not in str(err)


async def test_wrong_token_is_a_401() -> None:
    """A wrong token secret: 401 ``Authentication failed!``, transient, secret not shown."""
    async with running_sim(sim_config()) as server:
        bad = type(TOKEN)(user=TOKEN.user, secret="not-the-secret")
        async with HttpPveClient(server.url, auth=bad) as client:
            err = await failure(client.node_status("pve1"))
    assert (err.status, err.error_class) == (401, ErrorClass.TRANSIENT)
    assert "not-the-secret" not in str(err)


async def test_tls_with_ca_file_and_fingerprint(tmp_path: Path) -> None:
    """Over HTTPS the client verifies with a CA file, or with a pinned SHA-256."""
    tls = make_tls(tmp_path)
    async with running_sim(sim_config(), tls.server_context) as server:
        assert server.url.startswith("https://")
        for options in (
            TlsOptions(ca_file=tls.ca_file),
            TlsOptions(fingerprint=tls.fingerprint),
            TlsOptions(
                fingerprint=":".join(tls.fingerprint[i : i + 2].upper() for i in range(0, 64, 2))
            ),
        ):
            async with HttpPveClient(server.url, auth=TOKEN, tls=options) as client:
                node = server.sim.guests[100].node
                assert (await client.guest_status(node, Q, 100)).status == "running"


async def test_tls_failures_are_not_sent(tmp_path: Path) -> None:
    """A wrong pin or an unknown CA fails before sending: transient, ``sent`` False."""
    tls = make_tls(tmp_path)
    async with running_sim(sim_config(), tls.server_context) as server:
        for options in (TlsOptions(fingerprint="00" * 32), TlsOptions()):
            async with HttpPveClient(server.url, auth=TOKEN, tls=options) as client:
                err = await failure(client.dispatch("pve9", Q, Action.STOP, 100, {}))
            assert (err.status, err.sent, err.error_class) == (None, False, ErrorClass.TRANSIENT)
            assert err.reason.startswith("TLS")
        assert server.sim.guests[100].running


async def test_slow_answer_times_out(tmp_path: Path) -> None:
    """A write slower than its limit is ambiguous; a slow read is transient."""
    timeouts = Timeouts(read=0.2, write=0.2)
    async with running_sim(sim_config()) as server:
        server.sim.add_fault(method="POST", path=r"/status/start$", delay=1.0)
        server.sim.add_fault(method="GET", path=r"/status/current$", delay=1.0)
        async with HttpPveClient(server.url, auth=TOKEN, timeouts=timeouts) as client:
            node = server.sim.guests[101].node
            write = await failure(client.dispatch(node, Q, Action.START, 101, {}))
            read = await failure(client.guest_status(node, Q, 101))
    assert (write.status, write.error_class) == (None, ErrorClass.AMBIGUOUS)
    assert (read.status, read.error_class) == (None, ErrorClass.TRANSIENT)


async def test_refused_connection_is_transient() -> None:
    """Nothing listening: a connect failure, transient, ``sent`` False."""
    async with running_sim(sim_config()) as server:
        url = server.url
    async with HttpPveClient(url, auth=TOKEN) as client:
        err = await failure(client.dispatch("pve1", Q, Action.START, 100, {}))
    assert (err.sent, err.error_class) == (False, ErrorClass.TRANSIENT)


async def test_many_concurrent_reads_share_one_session() -> None:
    """Concurrent calls through one client all succeed."""
    async with (
        running_sim(sim_config()) as server,
        HttpPveClient(server.url, auth=TOKEN) as client,
    ):
        guests = list(server.sim.guests.values())
        results = await asyncio.gather(
            *(client.guest_status(g.node, GuestKind(g.kind), g.vmid) for g in guests)
        )
    assert [r.vmid for r in results] == [g.vmid for g in guests]


async def test_proxmoxer_https_with_password(tmp_path: Path) -> None:
    """proxmoxer's https backend logs in with a password ticket (in the pool)."""
    tls = make_tls(tmp_path)
    async with running_sim(sim_config(), tls.server_context) as server:
        client = build_proxmoxer_client(
            "https",
            server.url.split("://", 1)[1],
            user="root@pam",
            password=PASSWORD,
            tls=TlsOptions(ca_file=tls.ca_file),
            timeout=30.0,
        )
        try:
            node = server.sim.guests[101].node
            upid = await client.dispatch(node, Q, Action.START, 101, {})
            assert upid is not None and upid.user == "root@pam" == client.user
            assert (await wait_task(client, upid)).exitstatus == "OK"
        finally:
            await client.close()


@pytest.mark.parametrize(
    "params",
    [{"cores\n": 3}, {"description": "\ud800"}, {"cores": 3, "bad\x00key": "1"}],
    ids=["newline-in-name", "lone-surrogate", "nul-in-name"],
)
async def test_a_request_that_cannot_be_encoded_is_refused_unsent(
    pve: Harness, params: dict[str, object]
) -> None:
    """Every adapter refuses an unencodable request before sending: RequestNotSent."""
    node = at(pve, 101)
    seen = len(pve.sim.requests)
    before = dict(pve.sim.guests[101].config)
    with pytest.raises(RequestNotSent, match="not sent"):
        await pve.client.dispatch(node, Q, Action.CONFIGURE, 101, params)
    with pytest.raises(RequestNotSent):
        await pve.client.guest_config(f"{node}\n", Q, 101)
    assert len(pve.sim.requests) == seen
    assert pve.sim.guests[101].config == before
