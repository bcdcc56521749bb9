"""Safety verdicts (SPEC §4) and the pure guest helpers they rely on."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from lifecycled.config import load_settings
from lifecycled.domain.actions import GuestView, spec_for
from lifecycled.domain.guests import (
    MANAGED_ORIGINS,
    DesiredState,
    GuestFacts,
    GuestOrigin,
    GuestRecord,
    ObservedState,
    desired_for,
    listing_hash,
    observed_from,
    observed_hash,
    resources_of,
)
from lifecycled.domain.op import GuestKind, GuestRef, Op, Origin
from lifecycled.errors import ConfigError
from lifecycled.policy import Verdict, decide, evaluate

UUID = "smbios1"
CONFIG = {"name": "web-1", UUID: "uuid=AAAA-1", "meta": "creation-qemu=9,ctime=100"}
FP = {"uuid": "aaaa-1", "ctime": "100", "name": "web-1"}


def op(action: str, vmid: int = 101, **params: Any) -> Op:
    return Op(
        id=1,
        idempotency_key="k",
        action=action,
        guest=GuestRef(node="pve1", kind=GuestKind.QEMU, vmid=vmid),
        params=params,
        created_at=0.0,
        updated_at=0.0,
    )


def view(**config: Any) -> GuestView:
    return GuestView(exists=True, node="pve1", status="stopped", config={**CONFIG, **config})


def verdict(action: str, facts: GuestFacts, v: GuestView | None = None, **kw: Any) -> Any:
    o = op(action)
    return decide(o, spec_for(GuestKind.QEMU, action), v or view(), facts, **kw)


def test_unknown_discovered_and_released_guests_are_not_managed() -> None:
    """No row, discovered or released: every action but create/clone is refused."""
    for origin in (None, "discovered", "released"):
        v = verdict("start", GuestFacts(origin=origin))
        assert v.verdict is Verdict.REFUSE and v.code == "guest_not_managed"
    assert verdict("create", GuestFacts()).verdict is Verdict.ALLOW
    assert verdict("create", GuestFacts(origin="adopted")).code == "vmid_in_use"


@pytest.mark.parametrize("origin", list(GuestOrigin))
def test_the_policy_manages_exactly_the_domain_s_managed_origins(origin: GuestOrigin) -> None:
    """One ownership rule: a start is refused as not managed unless the origin is one of
    MANAGED_ORIGINS; the facts carry the origin as the domain's enum, not a string."""
    facts = GuestFacts(origin=str(origin))
    assert facts.origin is origin
    refused = verdict("start", facts).code == "guest_not_managed"
    assert refused is (origin not in MANAGED_ORIGINS)


def test_terminate_of_an_adopted_guest_is_a_soft_delete() -> None:
    """Adopted + terminate → soft delete (never a destroy)."""
    v = verdict("terminate", GuestFacts(origin="adopted", fingerprint=FP))
    assert v.verdict is Verdict.SOFT_DELETE and v.refusal is None


def test_destructive_ops_verify_the_fingerprint() -> None:
    """A reused VMID (another uuid) is refused for terminate, stop and reset; start is not
    destructive; a renamed guest with the same uuid is the same guest."""
    other = view(**{UUID: "uuid=BBBB-2"})
    facts = GuestFacts(origin="native", fingerprint=FP)
    for action in ("terminate", "stop", "reset"):
        assert verdict(action, facts, other).code == "fingerprint_mismatch"
    assert verdict("start", facts, other).verdict is Verdict.ALLOW
    assert verdict("terminate", facts, view(name="renamed")).verdict is Verdict.ALLOW
    reused_adopted = verdict("terminate", GuestFacts(origin="adopted", fingerprint=FP), other)
    assert reused_adopted.code == "fingerprint_mismatch"


def test_protected_guests_are_never_destroyed() -> None:
    """The Proxmox protection flag, the configured list, or the row's flag refuse terminate."""
    facts = GuestFacts(origin="native", fingerprint=FP)
    assert verdict("terminate", facts, view(protection=1)).code == "protected"
    assert verdict("terminate", facts, protected_vmids=frozenset({101})).code == "protected"
    assert verdict("terminate", GuestFacts(origin="native", protected=True)).code == "protected"
    assert verdict("start", facts, view(protection=1)).verdict is Verdict.ALLOW
    refusal = evaluate(
        op("terminate"), spec_for(GuestKind.QEMU, "terminate"), view(protection=1), facts
    )
    assert refusal is not None and refusal.code == "protected"


def with_params(action: str, facts: GuestFacts, v: GuestView, **params: Any) -> Any:
    o = attrs.evolve(op(action), params=params)
    return decide(o, spec_for(GuestKind.QEMU, action), v, facts)


@pytest.mark.parametrize(
    ("action", "params"),
    [
        ("stop", {}),
        ("reset", {}),
        ("shutdown", {"force_stop": True}),
        ("configure", {"delete": "scsi0"}),
        ("configure", {"delete": "unused0"}),
        ("configure", {"virtio1": "none"}),
        ("configure", {"delete": "unused0", "protection": 0}),
        ("migrate", {"target": "pve2", "with-local-disks": 1}),
    ],
)
def test_protection_refuses_every_destructive_variant(action: str, params: dict[str, Any]) -> None:
    """Not only terminate: a forced shutdown, a disk removal or a local-disk migrate of a
    protected guest is refused, from the Proxmox flag or the row's flag."""
    facts = GuestFacts(origin="native", fingerprint=FP)
    assert with_params(action, facts, view(protection=1), **params).code == "protected"
    row = GuestFacts(origin="native", fingerprint=FP, protected=True)
    assert with_params(action, row, view(), **params).code == "protected"


def test_protection_allows_lifting_it_and_the_harmless_variants() -> None:
    """Turning protection off is the way out (signed, audited: not refused by protection);
    a plain shutdown, a config change and a shared-storage migrate stay allowed."""
    facts = GuestFacts(origin="native", fingerprint=FP)
    protected = view(protection=1)
    for action, params in (
        ("configure", {"protection": 0}),
        ("configure", {"delete": "protection"}),
        ("configure", {"cores": 4}),
        ("shutdown", {}),
        ("migrate", {"target": "pve2"}),
    ):
        assert with_params(action, facts, protected, **params).verdict is Verdict.ALLOW


def test_reconciles_own_forced_shutdown_is_exempt_from_protection() -> None:
    """Reconcile converges a protected native guest to stopped with its forced shutdown."""
    o = attrs.evolve(op("shutdown"), params={"force_stop": True}, origin=Origin.RECONCILE)
    facts = GuestFacts(origin="native", fingerprint=FP, protected=True)
    v = decide(o, spec_for(GuestKind.QEMU, "shutdown"), view(protection=1), facts)
    assert v.verdict is Verdict.ALLOW


def test_observed_state_from_proxmox_status_and_lock() -> None:
    """status (qmpstatus when known) and lock map onto the observed states."""
    assert observed_from("running", None) is ObservedState.RUNNING
    assert observed_from("paused", None) is ObservedState.PAUSED
    assert observed_from("stopped", "suspended") is ObservedState.SUSPENDED
    assert observed_from("stopped", "backup") is ObservedState.STOPPED
    assert observed_from("unknown", None) is ObservedState.UNKNOWN
    assert observed_from(None, None) is ObservedState.UNKNOWN


def test_desired_state_of_each_power_action() -> None:
    """start/resume → running, stop/shutdown → stopped, terminate → absent; others none."""
    assert desired_for("start") is desired_for("resume") is DesiredState.RUNNING
    assert desired_for("stop") is desired_for("shutdown") is DesiredState.STOPPED
    assert desired_for("terminate") is DesiredState.ABSENT
    assert desired_for("reboot") is None and desired_for("nonsense") is None


def record(vmid: int, **kw: Any) -> GuestRecord:
    values: dict[str, Any] = {
        "vmid": vmid,
        "node": "pve1",
        "kind": GuestKind.QEMU,
        "origin": GuestOrigin.NATIVE,
        "observed_state": ObservedState.RUNNING,
        "created_at": 0.0,
        "updated_at": 0.0,
    }
    values.update(kw)
    return GuestRecord(**values)


def test_state_hashes_follow_what_they_cover() -> None:
    """The observed hash moves with status, lock, node and ownership (SPEC §7), in any order;
    the listing hash too."""
    a, b = record(101), record(102, lock="backup")
    assert observed_hash([a, b]) == observed_hash([b, a])
    assert observed_hash([a]) != observed_hash([record(101, observed_state=ObservedState.STOPPED)])
    assert observed_hash([a]) != observed_hash([record(101, origin=GuestOrigin.ADOPTED)])
    assert observed_hash([a]) != observed_hash([record(101, node="pve9")])
    assert observed_hash([a]) != observed_hash([record(101, desired_generation=7)])
    assert listing_hash([a]) != listing_hash([record(101, origin=GuestOrigin.ADOPTED)])
    assert listing_hash([a]) != listing_hash([record(101, desired_state=DesiredState.RUNNING)])


def test_resources_of_a_config() -> None:
    """CPUs, memory and each disk's size (CD-ROMs left out)."""
    config = {
        "memory": "2048",
        "cores": 2,
        "scsi0": "local-lvm:vm-101-disk-0,size=32G",
        "ide2": "local:iso/x.iso,media=cdrom,size=1G",
    }
    res = resources_of(GuestKind.QEMU, config, cpus=2.0, maxmem=None)
    assert res["memory"] == 2048 * 1024 * 1024 and res["cpus"] == 2.0
    assert res["disks"] == {"scsi0": 32 * 1024**3}


def test_protected_vmids_setting() -> None:
    """--protected takes a comma list (flag, env) or a TOML array; anything else is refused."""
    assert load_settings({"protected_vmids": "100, 101"}).protected_vmids == {100, 101}
    assert load_settings({}, env={"LIFECYCLED_PROTECTED_VMIDS": "105"}).protected_vmids == {105}
    assert load_settings({"protected_vmids": [100]}).protected_vmids == {100}
    with pytest.raises(ConfigError, match="not a VMID"):
        load_settings({"protected_vmids": "100,abc"})
