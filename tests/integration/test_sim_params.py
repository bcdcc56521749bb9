"""Request parameters as Proxmox checks them: its schema, strict booleans, root-only options,
bodies on GET/DELETE, ``limit=0`` and the empty task log (reference §13.7, §13.9, §13.13)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lifecycled.pve import schema
from lifecycled.sim import SimServer, api
from lifecycled.sim.rawclient import RawClient

_UNDEFINED = "property is not defined in schema and the schema does not allow additional properties"
_MISSING = "property is missing and it is not optional"

#: The reference file itself (not the shipped copy), when it sits beside the checkout.
_REFERENCE = next(
    (
        p / "shared" / "reference" / "pve-api-schema.json"
        for p in Path(__file__).resolve().parents
        if (p / "shared" / "reference" / "pve-api-schema.json").is_file()
    ),
    None,
)


def _endpoints() -> list[tuple[str, str, dict[str, dict[str, object]]]]:
    """(method, path template, parameters) of every endpoint in the reference schema (or, without
    it, in the shipped copy)."""
    if _REFERENCE is not None:
        data = json.loads(_REFERENCE.read_text(encoding="utf-8"))
        return [(e["method"], e["path"], e["parameters"]) for e in data["endpoints"]]
    return [
        (
            ep.method,
            ep.path,
            {
                n: {
                    "type": p.type,
                    "optional": p.optional,
                    "enum": p.enum,
                    "minimum": p.minimum,
                    "maximum": p.maximum,
                }
                for n, p in ep.params.items()
            },
        )
        for ep in schema.endpoints()
    ]


def _real_path(sim: SimServer, template: str) -> str:
    kind = "lxc" if "/lxc" in template else "qemu"
    vmid = 103 if kind == "lxc" else 100
    node = sim.sim.guests[vmid].node
    return (
        template.replace("{node}", node)
        .replace("{vmid}", str(vmid))
        .replace("{upid}", f"UPID:{node}:00001234:00005678:65000000:qmstart:{vmid}:root@pam:")
        .replace("{sid}", "vm:104")
    )


def _bad_value(spec: dict[str, object]) -> tuple[str, str] | None:
    """A value the schema refuses for this parameter, with JSONSchema's text (None: no simple
    one, e.g. a free-form string)."""
    kind = spec["type"]
    if kind == "boolean":
        return "yes", "type check ('boolean') failed - got 'yes'"
    if kind == "integer" and spec.get("minimum") is not None:
        low = int(str(spec["minimum"]))
        return str(low - 1), f"value must have a minimum value of {low}"
    if kind == "integer" and spec.get("maximum") is not None:
        high = int(str(spec["maximum"]))
        return str(high + 1), f"value must have a maximum value of {high}"
    if kind == "integer":
        return "x1", "type check ('integer') failed - got 'x1'"
    if kind == "number":
        return "x1", "type check ('number') failed - got 'x1'"
    if kind == "string" and spec.get("enum"):
        listed = ", ".join(str(v) for v in spec["enum"])  # type: ignore[attr-defined]
        return "zz-none", f"value 'zz-none' does not have a value in the enumeration '{listed}'"
    return None


async def test_every_served_endpoint_checks_its_schema(sim: SimServer, sim_api: RawClient) -> None:
    """Each endpoint of the reference schema that the simulator serves refuses, in one 400, an
    unknown name, every wrongly typed or out-of-range value and every missing required one."""
    checked = 0
    for method, template, params in _endpoints():
        path = _real_path(sim, template)
        if api.find_route(method, path) is None:
            continue
        sent: dict[str, str] = {"no-such-param": "1"}
        expected = {"no-such-param": _UNDEFINED}
        for name, spec in params.items():
            if "{" + name + "}" in template or name.endswith("[n]"):
                continue
            bad = _bad_value(spec)
            if bad is not None:
                sent[name], expected[name] = bad
            elif not spec.get("optional"):
                expected[name] = _MISSING
        answer = await sim_api.call(method, path, sent)
        assert (method, template, answer.status, answer.errors) == (
            method,
            template,
            400,
            expected,
        ), answer.text
        checked += 1
    assert checked >= 45


@pytest.mark.parametrize("value", ["true", "false", "yes", "on", "no", "off"])
async def test_booleans_are_one_or_zero(sim: SimServer, sim_api: RawClient, value: str) -> None:
    """§13.7: a boolean other than 1/0 (true, yes, on, …) gets Proxmox's 400."""
    guest = sim.sim.pick_guest("qemu", running=True)
    path = f"/nodes/{guest.node}/qemu/{guest.vmid}/status/shutdown"
    answer = await sim_api.post(path, {"forceStop": value})
    assert (answer.status, answer.reason) == (400, "Parameter verification failed.")
    assert answer.errors == {"forceStop": f"type check ('boolean') failed - got '{value}'"}
    assert guest.running


async def test_json_booleans_are_one_and_zero(sim: SimServer, sim_api: RawClient) -> None:
    """A JSON body's true/false decode as 1/0 and pass; the JSON text "true" does not."""
    guest = sim.sim.pick_guest("qemu", running=True)
    path = f"/nodes/{guest.node}/qemu/{guest.vmid}/status/shutdown"
    text = await sim_api.call("POST", path, json_body={"forceStop": "true"})
    assert (text.status, text.errors) == (
        400,
        {"forceStop": "type check ('boolean') failed - got 'true'"},
    )
    answer = await sim_api.call("POST", path, json_body={"forceStop": True})
    assert answer.status == 200, answer.text
    await sim_api.wait_task(answer.data)
    assert not guest.running


async def test_root_only_options_are_refused_only_when_truthy(
    sim: SimServer, sim_api: RawClient
) -> None:
    """§13.7: skiplock=0 from a token is accepted; skiplock=1 is root@pam's only."""
    guest = sim.sim.pick_guest("qemu", running=False)
    path = f"/nodes/{guest.node}/qemu/{guest.vmid}/status/start"
    off = await sim_api.post(path, {"skiplock": 0})
    assert off.status == 200, off.reason
    assert (await sim_api.wait_task(off.data))["exitstatus"] == "OK"
    other = sim.sim.pick_guest("qemu", running=False)
    on = await sim_api.post(f"/nodes/{other.node}/qemu/{other.vmid}/status/start", {"skiplock": 1})
    assert on.status == 400
    assert on.errors == {"skiplock": "Only root may use this option."}


async def test_lxc_destroy_has_no_skiplock(sim: SimServer, sim_api: RawClient) -> None:
    """The schema's LXC destroy and config have no skiplock (not defined), QEMU's do."""
    ct = sim.sim.create_guest(900, kind="lxc", node="pve1", status="stopped")
    for method, tail, params in (("DELETE", "", {}), ("PUT", "/config", {"cores": 2})):
        answer = await sim_api.call(
            method, f"/nodes/pve1/lxc/{ct.vmid}{tail}", {**params, "skiplock": 0}
        )
        assert (answer.status, answer.errors) == (400, {"skiplock": _UNDEFINED})


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_body_on_get_or_delete_is_refused(
    sim: SimServer, sim_api: RawClient, method: str
) -> None:
    """§13.13: a request body on GET or DELETE gets 501 Unexpected content."""
    guest = sim.sim.pick_guest("qemu", running=False)
    path = f"/nodes/{guest.node}/qemu/{guest.vmid}"
    answer = await sim_api.call(method, path, json_body={"purge": 1})
    assert (answer.status, answer.reason) == (501, "Unexpected content")
    assert guest.vmid in sim.sim.guests


async def test_task_list_limit_zero_lists_nothing(sim: SimServer, sim_api: RawClient) -> None:
    """§13.9: limit=0 returns no entries (it is not "no limit")."""
    guest = sim.sim.pick_guest("qemu", running=False)
    started = await sim_api.post(f"/nodes/{guest.node}/qemu/{guest.vmid}/status/start")
    await sim_api.wait_task(started.data)
    some = await sim_api.get(f"/nodes/{guest.node}/tasks", {"source": "all"})
    assert some.data
    none = await sim_api.get(f"/nodes/{guest.node}/tasks", {"source": "all", "limit": 0})
    assert none.status == 200
    assert none.data == []


async def test_empty_task_log_reads_no_content(sim: SimServer, sim_api: RawClient) -> None:
    """§13.9: a task whose log is still empty reads [{"n": 1, "t": "no content"}], total 1."""
    guest = sim.sim.pick_guest("qemu", running=False)
    sim.sim.add_fault(method="POST", path=f"/{guest.vmid}/status/start$", task_seconds=1.0)
    started = await sim_api.post(f"/nodes/{guest.node}/qemu/{guest.vmid}/status/start")
    log = await sim_api.get(f"/nodes/{guest.node}/tasks/{started.data}/log")
    assert log.json == {"data": [{"n": 1, "t": "no content"}], "total": 1}
    await sim_api.delete(f"/nodes/{guest.node}/tasks/{started.data}")


async def test_empty_path_segments_are_skipped(sim: SimServer, sim_api: RawClient) -> None:
    """§13.13: ``/nodes//pve1/qemu/100//status/current`` is the same endpoint as without ``//``."""
    node = sim.sim.guests[100].node
    answer = await sim_api.get(f"/nodes//{node}/qemu/100//status/current")
    assert answer.status == 200, answer.reason
    assert answer.data["vmid"] == 100
