"""The action catalogue, target predicates, wire params and fingerprints (SPEC §1, reference §1, §3.2)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lifecycled.domain.actions import (
    HA_ROUTED,
    Action,
    BadParam,
    Effect,
    GuestView,
    UnsupportedAction,
    all_specs,
    as_boolean,
    destructive_effects,
    disk_size,
    fingerprint_matches,
    fingerprint_of,
    is_destructive,
    lock_blocks,
    parse_size,
    spec_for,
    wire_params,
)
from lifecycled.domain.op import GuestKind

Q = GuestKind.QEMU
X = GuestKind.LXC
GiB = 1024**3


class Entry(NamedTuple):
    """What the reference says about one (kind, action)."""

    kind: GuestKind
    action: Action
    method: str
    path: str
    worker_types: tuple[str, ...]
    ha: str | None = None
    sync: bool = False
    destructive: bool = False
    convergent: bool = True


CATALOGUE = [
    # QEMU, reference §1.1 and §3.2
    Entry(Q, Action.START, "POST", "/qemu/{vmid}/status/start", ("qmstart",), "hastart"),
    Entry(
        Q, Action.STOP, "POST", "/qemu/{vmid}/status/stop", ("qmstop",), "hastop", destructive=True
    ),
    Entry(Q, Action.SHUTDOWN, "POST", "/qemu/{vmid}/status/shutdown", ("qmshutdown",), "hastop"),
    Entry(Q, Action.REBOOT, "POST", "/qemu/{vmid}/status/reboot", ("qmreboot",), convergent=False),
    Entry(
        Q,
        Action.RESET,
        "POST",
        "/qemu/{vmid}/status/reset",
        ("qmreset",),
        destructive=True,
        convergent=False,
    ),
    Entry(Q, Action.SUSPEND, "POST", "/qemu/{vmid}/status/suspend", ("qmpause", "qmsuspend")),
    Entry(Q, Action.RESUME, "POST", "/qemu/{vmid}/status/resume", ("qmresume",)),
    Entry(Q, Action.RESIZE, "PUT", "/qemu/{vmid}/resize", ("resize",)),
    Entry(Q, Action.CONFIGURE, "POST", "/qemu/{vmid}/config", ("qmconfig",)),
    Entry(Q, Action.MIGRATE, "POST", "/qemu/{vmid}/migrate", ("qmigrate",), "hamigrate"),
    Entry(Q, Action.TERMINATE, "DELETE", "/qemu/{vmid}", ("qmdestroy",), destructive=True),
    Entry(Q, Action.CREATE, "POST", "/qemu", ("qmcreate", "qmrestore")),
    Entry(Q, Action.CLONE, "POST", "/qemu/{vmid}/clone", ("qmclone",)),
    # LXC, reference §1.2 and §3.2: no reset; config is a synchronous PUT
    Entry(X, Action.START, "POST", "/lxc/{vmid}/status/start", ("vzstart",), "hastart"),
    Entry(
        X, Action.STOP, "POST", "/lxc/{vmid}/status/stop", ("vzstop",), "hastop", destructive=True
    ),
    Entry(X, Action.SHUTDOWN, "POST", "/lxc/{vmid}/status/shutdown", ("vzshutdown",), "hastop"),
    Entry(X, Action.REBOOT, "POST", "/lxc/{vmid}/status/reboot", ("vzreboot",), convergent=False),
    Entry(
        X, Action.SUSPEND, "POST", "/lxc/{vmid}/status/suspend", ("vzsuspend",), convergent=False
    ),
    Entry(X, Action.RESUME, "POST", "/lxc/{vmid}/status/resume", ("vzresume",)),
    Entry(X, Action.RESIZE, "PUT", "/lxc/{vmid}/resize", ("resize",)),
    Entry(X, Action.CONFIGURE, "PUT", "/lxc/{vmid}/config", (), sync=True),
    Entry(X, Action.MIGRATE, "POST", "/lxc/{vmid}/migrate", ("vzmigrate",), "hamigrate"),
    Entry(X, Action.TERMINATE, "DELETE", "/lxc/{vmid}", ("vzdestroy",), destructive=True),
    Entry(X, Action.CREATE, "POST", "/lxc", ("vzcreate", "vzrestore")),
    Entry(X, Action.CLONE, "POST", "/lxc/{vmid}/clone", ("vzclone",)),
]


@pytest.mark.parametrize("entry", [pytest.param(e, id=f"{e.kind}-{e.action}") for e in CATALOGUE])
def test_catalogue_entry_matches_reference(entry: Entry) -> None:
    """Method, path, UPID worker types, HA type, sync-ness, destructiveness per the reference."""
    spec = spec_for(entry.kind, entry.action)
    assert (spec.kind, spec.action) == (entry.kind, entry.action)
    assert spec.method == entry.method
    assert spec.path == entry.path
    assert spec.worker_types == entry.worker_types
    assert spec.ha_worker_type == entry.ha
    assert spec.sync is entry.sync
    assert spec.destructive is entry.destructive
    assert spec.convergent is entry.convergent
    assert spec.one_shot is not entry.convergent


def test_catalogue_has_exactly_the_reference_entries() -> None:
    """Every v1 action for both kinds, except LXC reset, and nothing else (SPEC §1)."""
    assert {(s.kind, s.action) for s in all_specs()} == {(e.kind, e.action) for e in CATALOGUE}
    assert {(k, a) for k in GuestKind for a in Action} - {
        (s.kind, s.action) for s in all_specs()
    } == {(X, Action.RESET)}


def test_migrate_worker_type_is_qmigrate() -> None:
    """The QEMU migrate task type is ``qmigrate``, not ``qmmigrate`` (reference §3.2)."""
    assert spec_for(Q, Action.MIGRATE).worker_types == ("qmigrate",)


def test_lxc_has_no_reset() -> None:
    """LXC has no reset endpoint (reference §1.2, §3.2)."""
    with pytest.raises(UnsupportedAction, match="not available for lxc"):
        spec_for(X, Action.RESET)


def test_unknown_action_is_unsupported() -> None:
    """An unknown action name is refused with a ``ValueError`` subclass."""
    with pytest.raises(UnsupportedAction, match="unknown action 'explode'"):
        spec_for(Q, "explode")
    assert issubclass(UnsupportedAction, ValueError)


def test_spec_for_accepts_the_action_text() -> None:
    """Actions may be named by their text, as the API and the journal carry them."""
    assert spec_for(Q, "start") is spec_for(Q, Action.START)


def test_ha_routed_actions_are_those_with_an_ha_worker_type() -> None:
    """start, stop, shutdown and migrate go through HA for HA-managed guests (§1.3, §3.2)."""
    assert {Action.START, Action.STOP, Action.SHUTDOWN, Action.MIGRATE} == HA_ROUTED
    for spec in all_specs():
        assert (spec.ha_worker_type is not None) is (spec.action in HA_ROUTED)


def test_only_lxc_config_is_synchronous() -> None:
    """LXC config is the one sync endpoint; QEMU config uses the async POST (§1.1, §1.2, §11)."""
    assert [(s.kind, s.action) for s in all_specs() if s.sync] == [(X, Action.CONFIGURE)]


@pytest.mark.parametrize("kind", list(GuestKind))
def test_one_shot_actions(kind: GuestKind) -> None:
    """reboot and reset are one-shot (SPEC §1); LXC suspend is one-shot too (no target)."""
    one_shot = {s.action for s in all_specs() if s.kind is kind and s.one_shot}
    expected = {Action.REBOOT, Action.RESET} if kind is Q else {Action.REBOOT, Action.SUSPEND}
    assert one_shot == expected


@pytest.mark.parametrize("action", [Action.REBOOT, Action.RESET])
def test_one_shot_target_never_holds(action: Action) -> None:
    """A one-shot action has no target, so the pre-dispatch check never skips it."""
    spec = spec_for(Q, action)
    assert not spec.holds(GuestView(exists=True, status="running"), {})
    assert not spec.holds(GuestView(exists=True, status="stopped"), {})


# --- endpoints -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "action", "vmid", "params", "endpoint", "task_vmid"),
    [
        pytest.param(Q, Action.START, 100, {}, "/qemu/100/status/start", 100, id="qemu-start"),
        pytest.param(X, Action.STOP, 101, {}, "/lxc/101/status/stop", 101, id="lxc-stop"),
        pytest.param(Q, Action.TERMINATE, 100, {}, "/qemu/100", 100, id="qemu-terminate"),
        pytest.param(Q, Action.CREATE, 100, {"name": "web"}, "/qemu", 100, id="qemu-create"),
        pytest.param(
            Q, Action.CLONE, 200, {"source_vmid": 9000}, "/qemu/9000/clone", 9000, id="qemu-clone"
        ),
        pytest.param(
            X, Action.CLONE, 201, {"source_vmid": "9001"}, "/lxc/9001/clone", 9001, id="lxc-clone"
        ),
    ],
)
def test_endpoint_and_task_vmid(
    kind: GuestKind,
    action: Action,
    vmid: int,
    params: Mapping[str, Any],
    endpoint: str,
    task_vmid: int,
) -> None:
    """Clone is addressed, and its UPID ``id`` written, with the SOURCE vmid (§1.1, §3.2)."""
    spec = spec_for(kind, action)
    assert spec.endpoint(vmid, params) == endpoint
    assert spec.task_vmid(vmid, params) == task_vmid


# --- destructiveness -------------------------------------------------------------------------

D = Effect.DISK_REMOVAL


@pytest.mark.parametrize(
    ("action", "kind", "params", "effects"),
    [
        pytest.param("terminate", Q, {}, {Effect.DESTROY}, id="terminate"),
        pytest.param("stop", X, {}, {Effect.POWER_KILL}, id="stop"),
        pytest.param("reset", None, {}, {Effect.POWER_KILL}, id="reset-any-kind"),
        pytest.param("reset", X, {}, set(), id="reset-not-for-lxc"),
        pytest.param("start", None, {}, set(), id="start"),
        pytest.param("reboot", Q, {}, set(), id="reboot"),
        pytest.param("suspend", Q, {"todisk": 1}, set(), id="suspend"),
        pytest.param("resume", Q, {}, set(), id="resume"),
        pytest.param("resize", Q, {"disk": "scsi0", "size": "40G"}, set(), id="resize"),
        pytest.param("clone", Q, {"source_vmid": 100}, set(), id="clone"),
        pytest.param("create", Q, {}, set(), id="create"),
        pytest.param("create", X, {"force": 1}, {Effect.OVERWRITE}, id="create-force"),
        pytest.param("shutdown", Q, {}, set(), id="shutdown"),
        pytest.param("shutdown", Q, {"force_stop": True}, {Effect.POWER_KILL}, id="force-stop"),
        pytest.param("shutdown", X, {"forceStop": "1"}, {Effect.POWER_KILL}, id="forceStop-1"),
        pytest.param("shutdown", Q, {"force_stop": "0"}, set(), id="force-stop-text-0"),
        pytest.param("shutdown", Q, {"force_stop": None}, set(), id="force-stop-null"),
        pytest.param("configure", Q, {"cores": 4}, set(), id="configure-cores"),
        pytest.param("configure", Q, {"delete": "balloon"}, set(), id="delete-plain-key"),
        pytest.param("configure", Q, {"delete": "scsi0"}, {D}, id="delete-scsi0"),
        pytest.param("configure", Q, {"delete": "cores,virtio1"}, {D}, id="delete-list"),
        pytest.param("configure", Q, {"delete": "ide2;sata0"}, {D}, id="delete-semicolons"),
        pytest.param("configure", Q, {"delete": "efidisk0"}, {D}, id="delete-efidisk0"),
        pytest.param("configure", Q, {"delete": "tpmstate0"}, {D}, id="delete-tpmstate0"),
        pytest.param("configure", Q, {"delete": "unused3"}, {D}, id="delete-unused3"),
        pytest.param("configure", X, {"delete": "mp0"}, {D}, id="delete-mp0"),
        pytest.param("configure", X, {"delete": "rootfs"}, {D}, id="delete-rootfs"),
        pytest.param("configure", Q, {"revert": "scsi1"}, {D}, id="revert-disk"),
        pytest.param("configure", Q, {"scsi0": "none"}, {D}, id="disk-none"),
        pytest.param("configure", Q, {"virtio2": ""}, {D}, id="disk-empty"),
        pytest.param("configure", Q, {"sata1": "file=none,media=disk"}, {D}, id="disk-file-none"),
        pytest.param("configure", Q, {"scsi1": "local-lvm:32"}, set(), id="disk-added"),
        pytest.param("configure", Q, {"protection": 0}, {Effect.PROTECTION_OFF}, id="prot-0"),
        pytest.param("configure", X, {"protection": False}, {Effect.PROTECTION_OFF}, id="prot-f"),
        pytest.param("configure", Q, {"delete": "protection"}, {Effect.PROTECTION_OFF}, id="del-p"),
        pytest.param("configure", Q, {"protection": 1}, set(), id="protection-on"),
        pytest.param("migrate", Q, {"target": "pve2"}, set(), id="migrate-shared"),
        pytest.param("migrate", Q, {"with-local-disks": 1}, {Effect.LOCAL_DISK_MIGRATION}),
        pytest.param(
            "migrate", None, {"with_local_disks": True, "online": 1}, {Effect.LOCAL_DISK_MIGRATION}
        ),
        pytest.param("migrate", Q, {"with_local_disks": "false"}, set(), id="local-text-false"),
        pytest.param("migrate", Q, {"targetstorage": "local"}, {Effect.LOCAL_DISK_MIGRATION}),
        pytest.param("migrate", X, {"target-storage": "a:b"}, {Effect.LOCAL_DISK_MIGRATION}),
        pytest.param("migrate", X, {"target": "pve2", "restart": 1}, set(), id="lxc-restart"),
        pytest.param("nonsense", None, {}, set(), id="unknown-action"),
        pytest.param("stop", "xen", {}, set(), id="unknown-kind"),
    ],
)
def test_destructive_means_destructive_whatever_the_name(
    action: str, kind: GuestKind | None, params: Mapping[str, Any], effects: set[Effect]
) -> None:
    """The one predicate names the data-losing variants of every action (issue 11 point 3)."""
    assert destructive_effects(action, kind, params) == effects
    assert is_destructive(action, kind, params) is bool(effects)


# --- target predicates -----------------------------------------------------------------------

RUNNING = GuestView(exists=True, node="pve", status="running", qmpstatus="running")
STOPPED = GuestView(exists=True, node="pve", status="stopped")
ABSENT = GuestView.absent()


class Target(NamedTuple):
    kind: GuestKind
    action: Action
    view: GuestView
    params: Mapping[str, Any]
    holds: bool


def _t(
    id_: str,
    kind: GuestKind,
    action: Action,
    view: GuestView,
    params: Mapping[str, Any],
    holds: bool,
) -> object:
    return pytest.param(Target(kind, action, view, params, holds), id=id_)


DISKS = {"scsi0": "local-lvm:vm-100-disk-0,size=32G", "rootfs": "local:101/vm-101-disk-0.raw"}
QCONF = {
    "cores": 2,
    "memory": "2048",  # QEMU returns memory as a string (reference §12.10)
    "onboot": 1,
    "name": "web",
    "balloon": 0,
}
UUID = "6f5c2c8e-1b2a-4c3d-8e9f-0a1b2c3d4e5f"
QEMU_IDENTITY = {
    "name": "web",
    "smbios1": f"uuid={UUID.upper()},manufacturer=acme",
    "meta": "creation-qemu=8.1.2,ctime=1700000000",
}


def _with(view: GuestView, **changes: Any) -> GuestView:
    return attrs.evolve(view, **changes)


def _size(disk: str, size: str) -> dict[str, str]:
    return {"disk": disk, "size": size}


CREATE_PARAMS = {"name": "web", "smbios1": f"uuid={UUID}", "memory": 2048}

TARGETS = [
    # start / resume → running; a paused VM is not running (qmpstatus, reference §5.1)
    _t("start-running", Q, Action.START, RUNNING, {}, True),
    _t("start-running-no-qmp", Q, Action.START, _with(RUNNING, qmpstatus=None), {}, True),
    _t("start-paused", Q, Action.START, _with(RUNNING, qmpstatus="paused"), {}, False),
    _t("start-suspended", Q, Action.START, _with(RUNNING, qmpstatus="suspended"), {}, False),
    _t("start-prelaunch", Q, Action.START, _with(RUNNING, qmpstatus="prelaunch"), {}, False),
    _t("start-stopped", Q, Action.START, STOPPED, {}, False),
    _t("start-absent", Q, Action.START, ABSENT, {}, False),
    _t("lxc-start-running", X, Action.START, _with(RUNNING, qmpstatus=None), {}, True),
    _t("resume-running", Q, Action.RESUME, RUNNING, {}, True),
    _t("resume-paused", Q, Action.RESUME, _with(RUNNING, qmpstatus="paused"), {}, False),
    # stop / shutdown → stopped
    _t("stop-stopped", Q, Action.STOP, STOPPED, {}, True),
    _t("stop-running", Q, Action.STOP, RUNNING, {}, False),
    _t("stop-absent", Q, Action.STOP, ABSENT, {}, False),
    _t("shutdown-stopped", Q, Action.SHUTDOWN, STOPPED, {}, True),
    _t("shutdown-paused", Q, Action.SHUTDOWN, _with(RUNNING, qmpstatus="paused"), {}, False),
    _t("lxc-shutdown-stopped", X, Action.SHUTDOWN, STOPPED, {}, True),
    # suspend (QEMU) → paused in RAM, or hibernated (stopped with lock suspended, §5.1)
    _t("suspend-paused", Q, Action.SUSPEND, _with(RUNNING, qmpstatus="paused"), {}, True),
    _t("suspend-hibernated", Q, Action.SUSPEND, _with(STOPPED, lock="suspended"), {}, True),
    _t("suspend-running", Q, Action.SUSPEND, RUNNING, {}, False),
    _t("suspend-stopped", Q, Action.SUSPEND, STOPPED, {}, False),
    # resize → size ≥ target (absolute sizes; reference §1.1 size regex)
    _t("resize-equal", Q, Action.RESIZE, _with(RUNNING, config=DISKS), _size("scsi0", "32G"), True),
    _t("resize-below", Q, Action.RESIZE, _with(RUNNING, config=DISKS), _size("scsi0", "30G"), True),
    _t(
        "resize-above", Q, Action.RESIZE, _with(RUNNING, config=DISKS), _size("scsi0", "33G"), False
    ),
    _t(
        "resize-other-unit",
        Q,
        Action.RESIZE,
        _with(RUNNING, config=DISKS),
        _size("scsi0", "32768M"),
        True,
    ),
    _t(
        "resize-fraction",
        Q,
        Action.RESIZE,
        _with(RUNNING, config=DISKS),
        _size("scsi0", "0.03125T"),
        True,
    ),
    _t(
        "resize-relative-never-holds",
        Q,
        Action.RESIZE,
        _with(RUNNING, config=DISKS),
        _size("scsi0", "+1G"),
        False,
    ),
    _t(
        "resize-unknown-disk",
        Q,
        Action.RESIZE,
        _with(RUNNING, config=DISKS),
        _size("scsi1", "1G"),
        False,
    ),
    _t(
        "resize-entry-without-size",
        X,
        Action.RESIZE,
        _with(RUNNING, config=DISKS),
        _size("rootfs", "1G"),
        False,
    ),
    _t("resize-absent", Q, Action.RESIZE, ABSENT, _size("scsi0", "1G"), False),
    # configure → values equal as Proxmox shows them (stringified, booleans 0/1), delete
    _t(
        "configure-equal",
        Q,
        Action.CONFIGURE,
        _with(RUNNING, config=QCONF),
        {"cores": 2, "memory": 2048},
        True,
    ),
    _t("configure-differs", Q, Action.CONFIGURE, _with(RUNNING, config=QCONF), {"cores": 4}, False),
    _t(
        "configure-bool-1",
        Q,
        Action.CONFIGURE,
        _with(RUNNING, config=QCONF),
        {"onboot": True},
        True,
    ),
    _t(
        "configure-bool-0",
        Q,
        Action.CONFIGURE,
        _with(RUNNING, config=QCONF),
        {"onboot": False},
        False,
    ),
    _t(
        "configure-key-missing",
        Q,
        Action.CONFIGURE,
        _with(RUNNING, config=QCONF),
        {"agent": 1},
        False,
    ),
    _t(
        "configure-text-none-vs-missing",
        Q,
        Action.CONFIGURE,
        _with(RUNNING, config=QCONF),
        {"description": "None"},
        False,
    ),
    _t(
        "configure-none-value-not-sent",
        Q,
        Action.CONFIGURE,
        _with(RUNNING, config=QCONF),
        {"cores": 2, "sockets": None},
        True,
    ),
    _t(
        "configure-control-keys-ignored",
        Q,
        Action.CONFIGURE,
        _with(RUNNING, config=QCONF),
        {"cores": 2, "digest": "abc", "background_delay": 5, "force": 1, "skiplock": 1},
        True,
    ),
    _t(
        "configure-delete-present",
        Q,
        Action.CONFIGURE,
        _with(RUNNING, config=QCONF),
        {"delete": "balloon"},
        False,
    ),
    _t(
        "configure-delete-gone",
        Q,
        Action.CONFIGURE,
        _with(RUNNING, config=QCONF),
        {"delete": "vcpus"},
        True,
    ),
    _t(
        "configure-delete-list",
        Q,
        Action.CONFIGURE,
        _with(RUNNING, config=QCONF),
        {"delete": ["vcpus", "balloon"]},
        False,
    ),
    _t(
        "configure-delete-text-list",
        Q,
        Action.CONFIGURE,
        _with(RUNNING, config=QCONF),
        {"delete": "vcpus, cpulimit"},
        True,
    ),
    _t("configure-absent", Q, Action.CONFIGURE, ABSENT, {"cores": 2}, False),
    _t(
        "lxc-configure-equal",
        X,
        Action.CONFIGURE,
        _with(STOPPED, config={"cores": 1, "memory": 512}),
        {"memory": "512"},
        True,
    ),
    # migrate → on the target node, and the migrate lock cleared (§10)
    _t("migrate-done", Q, Action.MIGRATE, _with(RUNNING, node="pve2"), {"target": "pve2"}, True),
    _t(
        "migrate-lock-left",
        Q,
        Action.MIGRATE,
        _with(RUNNING, node="pve2", lock="migrate"),
        {"target": "pve2"},
        False,
    ),
    _t("migrate-still-source", Q, Action.MIGRATE, RUNNING, {"target": "pve2"}, False),
    _t("migrate-absent", X, Action.MIGRATE, ABSENT, {"target": "pve2"}, False),
    # terminate → absent
    _t("terminate-absent", Q, Action.TERMINATE, ABSENT, {}, True),
    _t("terminate-stopped", Q, Action.TERMINATE, STOPPED, {}, False),
    _t("lxc-terminate-absent", X, Action.TERMINATE, ABSENT, {}, True),
    # create / clone → exists with our fingerprint and not locked create/clone
    _t(
        "create-done",
        Q,
        Action.CREATE,
        _with(STOPPED, config=QEMU_IDENTITY),
        CREATE_PARAMS,
        True,
    ),
    _t(
        "create-still-locked",
        Q,
        Action.CREATE,
        _with(STOPPED, config=QEMU_IDENTITY, lock="create"),
        CREATE_PARAMS,
        False,
    ),
    _t(
        "create-other-guest",
        Q,
        Action.CREATE,
        _with(STOPPED, config={**QEMU_IDENTITY, "smbios1": "uuid=0000"}),
        CREATE_PARAMS,
        False,
    ),
    _t(
        "create-name-only",
        Q,
        Action.CREATE,
        _with(STOPPED, config=QEMU_IDENTITY),
        {"name": "web"},
        True,
    ),
    _t(
        "create-name-differs",
        Q,
        Action.CREATE,
        _with(STOPPED, config=QEMU_IDENTITY),
        {"name": "db"},
        False,
    ),
    _t(
        "create-no-fingerprint-proves-nothing",
        Q,
        Action.CREATE,
        _with(STOPPED, config=QEMU_IDENTITY),
        {"memory": 2048},
        False,
    ),
    _t("create-absent", Q, Action.CREATE, ABSENT, CREATE_PARAMS, False),
    _t(
        "clone-done",
        Q,
        Action.CLONE,
        _with(STOPPED, config=QEMU_IDENTITY),
        {"source_vmid": 9000, "name": "web"},
        True,
    ),
    _t(
        "clone-still-locked",
        Q,
        Action.CLONE,
        _with(STOPPED, config=QEMU_IDENTITY, lock="clone"),
        {"source_vmid": 9000, "name": "web"},
        False,
    ),
    _t(
        "lxc-create-done",
        X,
        Action.CREATE,
        _with(STOPPED, config={"hostname": "ct1"}),
        {"hostname": "ct1", "ostemplate": "local:vztmpl/debian.tar.zst"},
        True,
    ),
    _t(
        "lxc-create-other-hostname",
        X,
        Action.CREATE,
        _with(STOPPED, config={"hostname": "ct2"}),
        {"hostname": "ct1"},
        False,
    ),
    _t(
        "lxc-clone-done",
        X,
        Action.CLONE,
        _with(STOPPED, config={"hostname": "ct1"}),
        {"source_vmid": 9001, "hostname": "ct1"},
        True,
    ),
]


@pytest.mark.parametrize("case", TARGETS)
def test_target_predicate(case: Target) -> None:
    """The convergent target per SPEC §1 holds exactly when the observed guest shows it."""
    assert spec_for(case.kind, case.action).holds(case.view, case.params) is case.holds


# --- sizes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        pytest.param("32G", 32 * GiB, id="gib"),
        pytest.param("512M", 512 * 1024**2, id="mib"),
        pytest.param("1K", 1024, id="kib"),
        pytest.param("1.5T", int(1.5 * 1024**4), id="fractional-tib"),
        pytest.param("1024", 1024, id="bare-bytes"),
        pytest.param(" 4G ", 4 * GiB, id="surrounding-space"),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    """Proxmox sizes: a number with an optional K/M/G/T (powers of 1024); bare is bytes."""
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("G", id="unit-only"),
        pytest.param("+1G", id="relative"),
        pytest.param("-1G", id="negative"),
        pytest.param("1g", id="lowercase-unit"),
        pytest.param("1GB", id="two-letter-unit"),
        pytest.param("1 G", id="inner-space"),
        pytest.param("1.G", id="dangling-point"),
        pytest.param("1P", id="unknown-unit"),
    ],
)
def test_parse_size_rejects(text: str) -> None:
    """Anything but digits, an optional decimal part and one of K/M/G/T is a ``ValueError``."""
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("config", "size"),
    [
        pytest.param({"scsi0": "local-lvm:vm-100-disk-0,size=32G"}, 32 * GiB, id="sized"),
        pytest.param({"scsi0": "local-lvm:vm-100-disk-0,cache=none,size=8G"}, 8 * GiB, id="later"),
        pytest.param({"scsi0": "local-lvm:vm-100-disk-0"}, None, id="no-size"),
        pytest.param({"scsi0": "local-lvm:vm-100-disk-0,size=huge"}, None, id="bad-size"),
        pytest.param({"scsi0": 5}, None, id="not-text"),
        pytest.param({}, None, id="missing"),
    ],
)
def test_disk_size(config: Mapping[str, Any], size: int | None) -> None:
    """The ``size=`` of a disk entry, or ``None`` when it cannot be read."""
    assert disk_size(config, "scsi0") == size


# --- wire params ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "action", "vmid", "params", "wire"),
    [
        pytest.param(
            Q,
            Action.SHUTDOWN,
            100,
            {"force_stop": True, "timeout": 30},
            {"forceStop": "1", "timeout": "30"},
            id="force-stop",
        ),
        pytest.param(
            Q, Action.SHUTDOWN, 100, {"force_stop": False}, {"forceStop": "0"}, id="no-force"
        ),
        pytest.param(
            X, Action.SHUTDOWN, 101, {"force_stop": "0"}, {"forceStop": "0"}, id="force-text-0"
        ),
        pytest.param(
            X, Action.SHUTDOWN, 101, {"force_stop": "true"}, {"forceStop": "1"}, id="force-text"
        ),
        pytest.param(
            Q,
            Action.CLONE,
            200,
            {"source_vmid": 9000, "name": "web", "full": True},
            {"name": "web", "full": "1", "newid": "200"},
            id="clone-newid-source-dropped",
        ),
        pytest.param(
            Q,
            Action.CREATE,
            100,
            {"name": "web", "memory": 2048},
            {"name": "web", "memory": "2048", "vmid": "100"},
            id="create-vmid",
        ),
        pytest.param(
            Q,
            Action.CONFIGURE,
            100,
            {"cores": 4, "delete": ["balloon", "vcpus"], "description": None},
            {"cores": "4", "delete": "balloon,vcpus"},
            id="configure-list-joined-none-dropped",
        ),
        pytest.param(
            Q,
            Action.MIGRATE,
            100,
            {"target": "pve2", "online": True, "with_local_disks": True},
            {"target": "pve2", "online": "1", "with-local-disks": "1"},
            id="migrate-local-disks",
        ),
        pytest.param(
            Q, Action.START, 100, {"flags": [True, 0, "x"]}, {"flags": "1,0,x"}, id="list-of-mixed"
        ),
        pytest.param(Q, Action.START, 100, {}, {}, id="empty"),
    ],
)
def test_wire_params(
    kind: GuestKind,
    action: Action,
    vmid: int,
    params: Mapping[str, Any],
    wire: dict[str, str],
) -> None:
    """Form fields as Proxmox expects them: translated names, booleans 0/1, lists joined (§6)."""
    assert wire_params(spec_for(kind, action), vmid, params) == wire


# --- fingerprints ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "config", "fingerprint"),
    [
        pytest.param(
            Q,
            QEMU_IDENTITY,
            {"uuid": UUID, "ctime": "1700000000", "name": "web"},
            id="qemu-full",
        ),
        pytest.param(Q, {"name": "web", "cores": 2}, {"name": "web"}, id="qemu-name-only"),
        pytest.param(
            Q, {"smbios1": "manufacturer=acme", "meta": "creation-qemu=8.1.2"}, {}, id="no-ids"
        ),
        pytest.param(Q, {}, {}, id="qemu-empty"),
        pytest.param(X, {"hostname": "ct1", "cores": 1}, {"name": "ct1"}, id="lxc-hostname"),
        pytest.param(X, {"smbios1": f"uuid={UUID}"}, {}, id="lxc-ignores-smbios"),
    ],
)
def test_fingerprint_of(
    kind: GuestKind, config: Mapping[str, Any], fingerprint: dict[str, str]
) -> None:
    """QEMU: smbios1 uuid (lower-cased), meta ctime, name; LXC: hostname (SPEC §1 "Guest")."""
    assert fingerprint_of(kind, config) == fingerprint


@pytest.mark.parametrize(
    ("recorded", "current", "same"),
    [
        pytest.param(
            {"uuid": "a", "name": "web"},
            {"uuid": "a", "name": "renamed"},
            True,
            id="uuid-decides-over-name",
        ),
        pytest.param(
            {"uuid": "a", "name": "web"}, {"uuid": "b", "name": "web"}, False, id="uuid-differs"
        ),
        pytest.param(
            {"uuid": "a", "ctime": "1"}, {"uuid": "a", "ctime": "2"}, False, id="ctime-differs"
        ),
        pytest.param({"uuid": "a", "ctime": "1"}, {"uuid": "a"}, True, id="ctime-one-side"),
        pytest.param(
            {"ctime": "1", "name": "web"},
            {"ctime": "2", "name": "web"},
            False,
            id="ctime-without-uuid",
        ),
        pytest.param(
            {"uuid": "a", "name": "web"}, {"name": "web"}, True, id="name-when-uuid-one-side"
        ),
        pytest.param({"name": "web"}, {"name": "db"}, False, id="name-differs"),
        pytest.param({"uuid": "a"}, {"name": "web"}, False, id="no-shared-field"),
        pytest.param({}, {}, False, id="both-empty"),
        pytest.param({"name": "web"}, {}, False, id="current-empty"),
    ],
)
def test_fingerprint_matches(
    recorded: Mapping[str, str], current: Mapping[str, str], same: bool
) -> None:
    """A recorded fingerprint matches when shared fields agree; the uuid decides (SPEC §1)."""
    assert fingerprint_matches(recorded, current) is same


_fp_values = st.text(min_size=1, max_size=8)
fingerprints = st.fixed_dictionaries(
    {},
    optional={"uuid": _fp_values, "ctime": _fp_values, "name": _fp_values},
).filter(bool)


@settings(max_examples=100, database=None)
@given(fingerprints)
def test_a_fingerprint_matches_itself(fp: dict[str, str]) -> None:
    """Any non-empty fingerprint names the same guest as itself."""
    assert fingerprint_matches(fp, fp)


@settings(max_examples=100, database=None)
@given(fingerprints, fingerprints)
def test_fingerprint_match_is_symmetric(a: dict[str, str], b: dict[str, str]) -> None:
    """Whether two fingerprints name the same guest does not depend on the order asked."""
    assert fingerprint_matches(a, b) is fingerprint_matches(b, a)


# --- config locks per kind and action (reference §13.6) --------------------------------------

_LOCKS = ("backup", "mounted", "suspended", "migrate", "clone", "create", "disk", "snapshot")
#: Locks each (kind, action) goes ahead despite; "*" = no lock check at all. Not listed: none.
_PASSES: dict[tuple[GuestKind, Action], set[str] | str] = {
    (Q, Action.START): {"suspended"},
    (Q, Action.SUSPEND): {"backup"},
    (Q, Action.RESUME): {"backup", "suspended"},
    (X, Action.START): {"mounted"},
    (X, Action.STOP): {"mounted"},
    (X, Action.RESUME): "*",
    (X, Action.REBOOT): "*",
}


@pytest.mark.parametrize("spec", all_specs(), ids=lambda s: f"{s.kind}-{s.action}")
@pytest.mark.parametrize("lock", _LOCKS)
def test_lock_blocks(spec: Any, lock: str) -> None:
    """§13.6: LXC shutdown/suspend are strict (`mounted` blocks), LXC start/stop exempt it,
    LXC resume/reboot check nothing, QEMU suspend skips `backup`; every other lock blocks."""
    passes = _PASSES.get((spec.kind, spec.action), set())
    expected = not (passes == "*" or lock in passes)
    assert lock_blocks(spec.kind, spec.action, lock) is expected
    assert lock_blocks(spec.kind, spec.action, None) is False


# --- booleans (reference §13.7) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "meant"),
    [
        (True, True),
        (False, False),
        (1, True),
        (0, False),
        ("1", True),
        ("0", False),
        ("true", True),
        ("False", False),
        (" TRUE ", True),
    ],
)
def test_as_boolean_normalises(value: Any, meant: bool) -> None:
    """JSON booleans, 1/0 and the texts 1/0/true/false (any case) are booleans."""
    assert as_boolean("online", value) is meant


@pytest.mark.parametrize("value", ["yes", "no", "on", "off", "", "2", 2, -1, 1.5, None, ["1"]])
def test_as_boolean_refuses(value: Any) -> None:
    """Anything else is refused, naming the parameter and the value."""
    with pytest.raises(BadParam) as info:
        as_boolean("online", value)
    assert info.value.name == "online"
    assert info.value.text == f"expected a boolean (true, false, 1 or 0), got {value!r}"


def test_wire_params_sends_schema_booleans_as_one_or_zero() -> None:
    """The endpoint's booleans go out as 1/0; other params as text; a bad boolean raises."""
    spec = spec_for(Q, Action.MIGRATE)
    got = wire_params(
        spec, 100, {"target": "pve2", "online": "true", "bwlimit": 10}, booleans={"online"}
    )
    assert got == {"target": "pve2", "online": "1", "bwlimit": "10"}
    with pytest.raises(BadParam):
        wire_params(spec, 100, {"target": "pve2", "online": "yes"}, booleans={"online"})


@pytest.mark.parametrize("qmpstatus", ["paused", "prelaunch", "suspended"])
def test_suspend_target_counts_what_vm_is_paused_counts(qmpstatus: str) -> None:
    """§13.6: a running VM whose run state is paused, prelaunch or suspended is paused."""
    view = GuestView(exists=True, status="running", qmpstatus=qmpstatus)
    assert spec_for(Q, Action.SUSPEND).holds(view, {})
    assert not spec_for(Q, Action.RESUME).holds(view, {})
