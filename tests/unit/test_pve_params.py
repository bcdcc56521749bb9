"""The params each action takes, from Proxmox's API schema, and the text rule at the door."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lifecycled.domain.actions import Action
from lifecycled.domain.op import GuestKind
from lifecycled.domain.text import text_problem
from lifecycled.pve.params import (
    allowed_params,
    lookup,
    param_problems,
    params_for,
)

QEMU, LXC = GuestKind.QEMU, GuestKind.LXC


def test_every_catalogue_action_has_its_endpoint_in_the_table() -> None:
    """Each (kind, action) the catalogue supports finds its endpoint's params."""
    for kind in GuestKind:
        for action in Action:
            if action is Action.RESET and kind is LXC:
                continue
            assert isinstance(params_for(kind, action), dict)


def test_known_params_are_accepted() -> None:
    """Everyday submissions pass: configure, migrate, shutdown, resize, clone, create."""
    assert (
        param_problems(QEMU, Action.CONFIGURE, {"cores": 2, "memory": 512, "net0": "virtio"}) == {}
    )
    assert param_problems(None, Action.CONFIGURE, {"cores": 2, "description": "a\nb\tc"}) == {}
    assert param_problems(QEMU, Action.MIGRATE, {"target": "pve2", "with_local_disks": True}) == {}
    assert param_problems(LXC, Action.SHUTDOWN, {"force_stop": 1, "timeout": 30}) == {}
    assert param_problems(None, Action.RESIZE, {"disk": "scsi0", "size": "40G"}) == {}
    assert param_problems(LXC, Action.CLONE, {"source_vmid": 101, "hostname": "ct1"}) == {}
    assert param_problems(QEMU, Action.CREATE, {"name": "vm1", "cores": 1, "onboot": 0}) == {}
    assert param_problems(QEMU, Action.MIGRATE, {"target": "pve2", "online": " TRUE "}) == {}


@pytest.mark.parametrize(
    ("kind", "action", "params", "field"),
    [
        (QEMU, Action.START, {"name": "x"}, "params.name"),  # start takes no name
        (None, Action.CONFIGURE, {"zzz": "x"}, "params.zzz"),  # neither kind's
        (LXC, Action.MIGRATE, {"with_local_disks": 1}, "params.with_local_disks"),
        (QEMU, Action.CREATE, {"vmid": 101}, "params.vmid"),  # set by lifecycled
        (QEMU, Action.CLONE, {"source_vmid": 101, "newid": 5}, "params.newid"),
        (QEMU, Action.CONFIGURE, {"net32x": "virtio"}, "params.net32x"),
        (QEMU, Action.CONFIGURE, {"efidisk1": "x"}, "params.efidisk1"),  # n_range 0..0
        (QEMU, Action.CONFIGURE, {"net": "virtio"}, "params.net"),  # indexed only
        (QEMU, Action.CONFIGURE, {"cores": [1, 2]}, "params.cores"),
        (QEMU, Action.CONFIGURE, {"cores": {"n": 1}}, "params.cores"),
        (QEMU, Action.CONFIGURE, {"cores": None}, "params.cores"),
        (QEMU, Action.CONFIGURE, {"cores": "2"}, "params.cores"),
        (QEMU, Action.CONFIGURE, {"cores": 0}, "params.cores"),
        (QEMU, Action.CONFIGURE, {"cores": 2**70}, "params.cores"),
        (QEMU, Action.CONFIGURE, {"cores": True}, "params.cores"),
        (QEMU, Action.CONFIGURE, {"cpulimit": float("inf")}, "params.cpulimit"),
        (QEMU, Action.CONFIGURE, {"onboot": 2}, "params.onboot"),
        (QEMU, Action.CONFIGURE, {"onboot": "yes"}, "params.onboot"),
        (QEMU, Action.CONFIGURE, {"onboot": "1\x1c"}, "params.onboot"),
        (QEMU, Action.CONFIGURE, {"ostype": "dos"}, "params.ostype"),
        (QEMU, Action.CONFIGURE, {"description": "x" * 8193}, "params.description"),
        (QEMU, Action.CONFIGURE, {"description": "a\x00b"}, "params.description"),
        (QEMU, Action.CONFIGURE, {"name": "vm\n"}, "params.name"),
        (QEMU, Action.CONFIGURE, {"name": "vm\ud800"}, "params.name"),
        (QEMU, Action.CONFIGURE, {"tags": "x" * 5000}, "params.tags"),
        (QEMU, Action.CONFIGURE, {"cores\n": 1}, "params.cores\\n"),
    ],
)
def test_bad_params_are_named(
    kind: GuestKind | None, action: Action, params: dict[str, object], field: str
) -> None:
    """Unknown keys, nested or mistyped values, out-of-range numbers and bad text are refused."""
    assert field in param_problems(kind, action, params)


def test_too_many_params_are_refused() -> None:
    """More than 128 params is refused as a whole."""
    params = {f"unused{i}": "local:1" for i in range(129)}
    assert param_problems(QEMU, Action.CONFIGURE, params) == {"params": "at most 128 parameters"}


@given(key=st.text(min_size=1, max_size=20))
def test_a_key_outside_the_schema_is_never_accepted(key: str) -> None:
    """Whatever the key, it passes only when the endpoint's schema names it."""
    table = params_for(QEMU, Action.CONFIGURE)
    ok = not param_problems(QEMU, Action.CONFIGURE, {key: "1"})
    if ok:
        assert lookup(table, key) is not None


def test_without_a_kind_params_of_either_kind_are_allowed() -> None:
    """allowed_params(None, …) is the union of the two kinds' params, each with its specs."""
    either = allowed_params(None, Action.CONFIGURE)
    assert {"cores", "name", "hostname"} <= set(either)
    assert set(either) == set(params_for(QEMU, Action.CONFIGURE)) | set(
        params_for(LXC, Action.CONFIGURE)
    )
    assert len(either["cores"]) == 2 and len(either["name"]) == 1
    assert param_problems(None, Action.CONFIGURE, {"name": "vm1", "hostname": "ct1"}) == {}


@pytest.mark.parametrize(
    ("value", "free", "ok"),
    [
        ("plain text é ✓", False, True),
        ("a\nb", False, False),
        ("a\nb\tc", True, True),
        ("a\rb", True, False),
        ("nul\x00", True, False),
        ("del\x7f", False, False),
        ("c1\x85", True, False),
        ("sep\u2028", True, False),
        ("lone\ud800", True, False),
        ("lone\udfff", False, False),
        ("x" * 11, False, False),
    ],
)
def test_the_text_rule(value: str, free: bool, ok: bool) -> None:
    """NUL, controls, separators and lone surrogates are refused; free text may hold \\n, \\t."""
    assert (text_problem(value, max_length=10 if not ok else 100, free_text=free) is None) is ok
