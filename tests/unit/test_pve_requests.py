"""Every request the client builds (lifecycled.pve.wire) is valid for Proxmox's schema (§13.7)."""

from __future__ import annotations

from typing import Any

import pytest

from lifecycled.domain.actions import Action, ActionSpec, BadParam, all_specs
from lifecycled.domain.classify import ErrorClass
from lifecycled.domain.op import GuestKind
from lifecycled.errors import PveError
from lifecycled.pve import schema, wire

#: What an op of each action needs besides booleans (lifecycled's own names).
_REQUIRED: dict[tuple[GuestKind, Action], dict[str, Any]] = {
    (GuestKind.QEMU, Action.RESIZE): {"disk": "scsi0", "size": "40G"},
    (GuestKind.LXC, Action.RESIZE): {"disk": "rootfs", "size": "16G"},
    (GuestKind.QEMU, Action.MIGRATE): {"target": "pve2", "with_local_disks": "true"},
    (GuestKind.LXC, Action.MIGRATE): {"target": "pve2"},
    (GuestKind.QEMU, Action.CONFIGURE): {"cores": 2, "net0": "virtio,bridge=vmbr0"},
    (GuestKind.LXC, Action.CONFIGURE): {"cores": 2, "mp0": "local-lvm:8,mp=/data"},
    (GuestKind.QEMU, Action.CREATE): {"name": "web", "scsi0": "local-lvm:32"},
    (GuestKind.LXC, Action.CREATE): {"ostemplate": "local:vztmpl/debian-12.tar.zst"},
    (GuestKind.QEMU, Action.CLONE): {"source_vmid": 100, "name": "copy"},
    (GuestKind.LXC, Action.CLONE): {"source_vmid": 103, "hostname": "copy"},
    (GuestKind.QEMU, Action.SHUTDOWN): {"force_stop": "true", "timeout": 60},
    (GuestKind.LXC, Action.SHUTDOWN): {"force_stop": True, "timeout": 60},
}
#: The spellings of a boolean an API client may send, and what goes on the wire.
_SPELLINGS: list[tuple[Any, str]] = [
    (True, "1"),
    (False, "0"),
    ("true", "1"),
    ("FALSE", "0"),
    ("1", "1"),
    ("0", "0"),
    (1, "1"),
    (0, "0"),
]


def _ids(spec: ActionSpec) -> str:
    return f"{spec.kind}-{spec.action}"


def _endpoint(spec: ActionSpec, path: str) -> tuple[schema.Endpoint, dict[str, str]]:
    found = schema.match(spec.method, path)
    assert found is not None, f"{spec.method} {path} is not in Proxmox's schema"
    return found


@pytest.mark.parametrize("spec", all_specs(), ids=_ids)
@pytest.mark.parametrize(("given", "sent"), _SPELLINGS)
def test_every_lifecycle_request_fits_the_schema(spec: ActionSpec, given: Any, sent: str) -> None:
    """Each action × kind builds a request of a schema endpoint whose parameters all pass
    Proxmox's checks, with every boolean on the wire as 1/0 whatever the client spelled."""
    booleans = wire.boolean_params(spec)
    params = {
        **{name: given for name in booleans if name not in ("skiplock", "force")},
        **_REQUIRED.get((spec.kind, spec.action), {}),
    }
    req = wire.dispatch_request("pve1", spec, 200, params)
    ep, args = _endpoint(spec, req.path)
    assert ep.path == wire.schema_template(spec)
    assert schema.check(ep, {**req.form, **args}) == {}
    for name in booleans & set(req.form):
        if name not in ("forceStop", "with-local-disks"):
            assert req.form[name] == sent, name
    assert req.in_query == (spec.method == "DELETE")


@pytest.mark.parametrize("spec", [s for s in all_specs() if wire.boolean_params(s)], ids=_ids)
def test_a_value_that_is_no_boolean_is_refused_before_sending(spec: ActionSpec) -> None:
    """yes/on/2 for a boolean raise a permanent 400-shaped PveError; nothing is sent."""
    booleans = sorted(wire.boolean_params(spec))
    for value in ("yes", "on", 2, "enabled"):
        params = {**_REQUIRED.get((spec.kind, spec.action), {}), booleans[0]: value}
        with pytest.raises(PveError) as info:
            wire.dispatch_request("pve1", spec, 200, params)
        err = info.value
        assert (err.error_class, err.status, err.sent) == (ErrorClass.PERMANENT, 400, False)
        assert set(err.errors) == {booleans[0]}


def test_task_list_query_fits_the_schema() -> None:
    """The task-list query (both adapters) passes GET /nodes/{node}/tasks's checks."""
    query = wire.task_list_query(
        source="all",
        vmid=100,
        typefilter="qmstart",
        since=1_700_000_000,
        userfilter="root@pam",
        start=0,
        limit=500,
    )
    ep = schema.endpoint("GET", "/nodes/{node}/tasks")
    assert schema.check(ep, {**query, "node": "pve1"}) == {}


def test_submission_booleans_are_normalised_or_refused() -> None:
    """Submissions: true/false/1/0 become JSON booleans; other values name the parameter."""
    params = {"online": "true", "with_local_disks": "0", "target": "pve2"}
    assert wire.normalized_params(Action.MIGRATE, GuestKind.QEMU, params) == {
        "online": True,
        "with_local_disks": False,
        "target": "pve2",
    }
    with pytest.raises(BadParam) as refused:
        wire.normalized_params(Action.MIGRATE, GuestKind.LXC, {"restart": "yes"})
    assert (refused.value.name, refused.value.text) == (
        "restart",
        "expected a boolean (true, false, 1 or 0), got 'yes'",
    )
    assert wire.normalized_params(Action.START, GuestKind.QEMU, {"timeout": "yes"}) == {
        "timeout": "yes"
    }


@pytest.mark.parametrize("kind", list(GuestKind))
def test_node_guest_listing_fits_the_schema(kind: GuestKind) -> None:
    """The node listing both adapters send (``wire.node_guests_path``, no parameters) is
    Proxmox's ``vmlist`` endpoint of that kind and passes its checks — no ``full``."""
    found = schema.match("GET", wire.node_guests_path("pve1", kind))
    assert found is not None
    ep, args = found
    assert ep.path == f"/nodes/{{node}}/{kind}"
    assert schema.check(ep, args) == {}
    # QEMU's listing knows ``full`` (QMP state of every running VM), LXC's does not.
    assert ("full" in schema.check(ep, {**args, "full": "1"})) is (kind is GuestKind.LXC)
