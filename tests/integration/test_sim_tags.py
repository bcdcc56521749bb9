"""Guest ``tags`` as Proxmox stores them: pve-guest-common ``GuestHelpers::get_unique_tags`` on
every config write that sets them (lower-cased, sorted, each once, by the datacenter's default
``tag-style``), and pve-common's ``pve-tag`` format refusing anything else with a 400."""

from __future__ import annotations

from typing import Any

import pytest

from lifecycled.sim import SimServer
from lifecycled.sim.model import Guest
from lifecycled.sim.rawclient import RawClient

_INVALID = {"tags": "invalid format - invalid characters in tag"}


def _config(guest: Guest) -> str:
    sub = "qemu" if guest.kind == "qemu" else "lxc"
    return f"/nodes/{guest.node}/{sub}/{guest.vmid}/config"


async def _stored(sim_api: RawClient, guest: Guest) -> Any:
    return (await sim_api.get(_config(guest))).data.get("tags")


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        # sorted (``sort { lc($a) cmp lc($b) }``), lower-cased, each kept once
        ("web;prod;db", "db;prod;web"),
        ("Web;prod;WEB;web", "prod;web"),
        # ``split_list``: ``;``, ``,`` and white space all separate tags
        ("b,a c;;a", "a;b;c"),
        # code-point order, as Perl's ``cmp``: digits, then ``_``, then letters
        ("z;_x;9;a-b;a+b;a.b;a_b", "9;_x;a+b;a-b;a.b;a_b;z"),
        # lifecycled's record: ranks keep the key order that the sort takes away
        (
            "prod;lcd.o.native;lcd.g.12;lcd.k.0.ff;lcd.k.1.0a;lcd.k.2.3b",
            "lcd.g.12;lcd.k.0.ff;lcd.k.1.0a;lcd.k.2.3b;lcd.o.native;prod",
        ),
    ],
)
async def test_a_put_stores_tags_as_get_unique_tags_makes_them(
    sim: SimServer, sim_api: RawClient, sent: str, stored: str
) -> None:
    """PUT config (QEMU and LXC) stores the tags sorted, lower-cased and each once, and every
    read answers them so."""
    for kind in ("qemu", "lxc"):
        guest = sim.sim.pick_guest(kind, running=False)
        answer = await sim_api.put(_config(guest), {"tags": sent})
        assert answer.status == 200, answer.errors
        assert await _stored(sim_api, guest) == stored
        listed = (await sim_api.get("/cluster/resources", {"type": "vm"})).data
        assert [r["tags"] for r in listed if r["vmid"] == guest.vmid] == [stored]


async def test_every_write_that_sets_tags_normalises_them(
    sim: SimServer, sim_api: RawClient
) -> None:
    """A running VM's PUT (tags hot-plug), the async QEMU POST and both creates store the same
    normalised tags."""
    running = sim.sim.pick_guest("qemu", running=True)
    assert (await sim_api.put(_config(running), {"tags": "B;a"})).status == 200
    assert await _stored(sim_api, running) == "a;b"
    assert "tags" not in sim.sim.guests[running.vmid].pending

    stopped = sim.sim.pick_guest("qemu", running=False)
    posted = await sim_api.post(_config(stopped), {"tags": "Zeta,alpha zeta"})
    assert (await sim_api.wait_task(posted.data))["exitstatus"] == "OK"
    assert await _stored(sim_api, stopped) == "alpha;zeta"

    vm = await sim_api.post("/nodes/pve1/qemu", {"vmid": 600, "tags": "new;Fresh;new"})
    await sim_api.wait_task(vm.data)
    ct = await sim_api.post(
        "/nodes/pve1/lxc",
        {"vmid": 601, "ostemplate": "local:vztmpl/debian.tar.zst", "tags": "Two one"},
    )
    await sim_api.wait_task(ct.data)
    assert sim.sim.guests[600].config["tags"] == "fresh;new"
    assert sim.sim.guests[601].config["tags"] == "one;two"


@pytest.mark.parametrize(
    "tag",
    ["-lead", ".lead", "+lead", "a/b", "a:b", "a=b", "a@b", "a!b", "é", "lcd.k.0:ff"],
)
async def test_a_tag_outside_the_pve_tag_format_is_refused_and_nothing_written(
    sim: SimServer, sim_api: RawClient, tag: str
) -> None:
    """``[a-z0-9_][a-z0-9_+.-]*`` (case-insensitive) or 400 ``Parameter verification failed.``
    with ``invalid characters in tag``; the guest's tags are untouched, on every endpoint."""
    guest = sim.sim.pick_guest("qemu", running=False)
    ct = sim.sim.pick_guest("lxc", running=False)
    sim.sim.update_config(guest.vmid, {"tags": "keep"}, ())
    before = len(sim.sim.guests)
    for method, path, params in (
        ("PUT", _config(guest), {"tags": f"ok;{tag}"}),
        ("POST", _config(guest), {"tags": tag}),
        ("PUT", _config(ct), {"tags": tag}),
        ("POST", "/nodes/pve1/qemu", {"vmid": 602, "tags": tag}),
    ):
        answer = await sim_api.call(method, path, params)
        assert (answer.status, answer.reason, answer.errors) == (
            400,
            "Parameter verification failed.",
            _INVALID,
        )
    assert sim.sim.guests[guest.vmid].config["tags"] == "keep"
    assert len(sim.sim.guests) == before


async def test_upper_case_and_every_allowed_character_are_accepted(
    sim: SimServer, sim_api: RawClient
) -> None:
    """The format matches case-insensitively and allows ``_ + . -`` after the first character;
    ``_`` and digits may lead."""
    guest = sim.sim.pick_guest("qemu", running=False)
    answer = await sim_api.put(_config(guest), {"tags": "A_b+C.d-E;_9;0x"})
    assert answer.status == 200, answer.errors
    assert await _stored(sim_api, guest) == "0x;_9;a_b+c.d-e"


@pytest.mark.parametrize(
    ("style", "stored"),
    [
        ({"tag_ordering": "config"}, "web;prod"),
        ({"tags_case_sensitive": True}, "Web;prod;web"),
        ({"tag_ordering": "config", "tags_case_sensitive": True}, "web;prod;Web"),
    ],
)
async def test_the_datacenter_tag_style_changes_what_is_stored(
    sim_factory: Any, style: dict[str, Any], stored: str
) -> None:
    """``ordering=config`` keeps the given order; ``case-sensitive=1`` keeps the case and tells
    ``Web`` from ``web``; duplicates are dropped either way."""
    server: SimServer = await sim_factory(**style)
    guest = server.sim.pick_guest("qemu", running=False)
    async with RawClient(server.url, token=server.cfg.token) as client:
        answer = await client.put(_config(guest), {"tags": "web;prod;Web;web"})
        assert answer.status == 200, answer.errors
        assert await _stored(client, guest) == stored
