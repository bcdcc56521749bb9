"""The privileges each action needs and how a permission map grants them (pure)."""

from __future__ import annotations

from lifecycled.domain.actions import Action
from lifecycled.domain.privileges import ACTION_PRIVILEGES, Grant, grant, verdicts


def test_every_action_has_privileges() -> None:
    """Each catalogued action names what Proxmox checks for it."""
    assert set(ACTION_PRIVILEGES) == set(Action)
    assert all(ACTION_PRIVILEGES[a] for a in Action)


def test_root_and_kind_roots_grant_fully() -> None:
    """A privilege on / or on its kind's root (/vms, /storage, /nodes/{node}) is full."""
    assert grant({"/": frozenset({"VM.Allocate"})}, "VM.Allocate", node="pve1") is Grant.FULL
    assert grant({"/vms": frozenset({"VM.Allocate"})}, "VM.Allocate", node="pve1") is Grant.FULL
    perms = {"/storage": frozenset({"Datastore.AllocateSpace"})}
    assert grant(perms, "Datastore.AllocateSpace", node="pve1") is Grant.FULL
    assert grant({"/nodes/pve1": frozenset({"Sys.Audit"})}, "Sys.Audit", node="pve1") is Grant.FULL
    assert grant({"/nodes/pve2": frozenset({"Sys.Audit"})}, "Sys.Audit", node="pve1") is (
        Grant.PARTIAL
    )


def test_narrow_paths_are_partial_and_absent_is_missing() -> None:
    """One guest or a pool is partial; nowhere is missing; /vms does not grant Datastore.*."""
    perms = {"/vms/101": frozenset({"VM.PowerMgmt"}), "/vms": frozenset({"Datastore.Audit"})}
    assert grant(perms, "VM.PowerMgmt", node="pve1") is Grant.PARTIAL
    assert grant(perms, "VM.Migrate", node="pve1") is Grant.MISSING
    assert grant(perms, "Datastore.Audit", node="pve1") is Grant.PARTIAL


def test_verdicts_name_what_is_missing() -> None:
    """Reading first, then one verdict per action, each naming its missing privileges."""
    perms = {"/": frozenset({"VM.Audit", "Sys.Audit", "VM.PowerMgmt", "VM.Allocate"})}
    found = {v.subject: v for v in verdicts(perms, node="pve1")}
    assert next(iter(found)) == "read"
    assert found["read"].ok and found["start"].ok and found["terminate"].ok
    assert found["clone"].missing == ("VM.Clone", "Datastore.AllocateSpace")
    assert not found["migrate"].ok and found["migrate"].missing == ("VM.Migrate",)
