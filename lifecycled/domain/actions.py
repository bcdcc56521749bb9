"""The action catalogue: how each lifecycle action maps onto the Proxmox API.

For every (kind, action) pair the catalogue says which endpoint and method to call, whether
the call is synchronous or forks a worker (and which UPID worker type it gets), whether the
action is convergent (has an observable target, checked before dispatch) or one-shot (never
dispatched twice for one op), whether it is destructive, and what its target predicate is.
Source: reference/proxmox-api.md §1 and §3.2.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

import attrs

from lifecycled.domain.kinds import GuestKind
from lifecycled.domain.tags import client_tags


class Action(enum.StrEnum):
    """Lifecycle actions of v1 (SPEC §1)."""

    START = "start"
    STOP = "stop"
    SHUTDOWN = "shutdown"
    REBOOT = "reboot"
    RESET = "reset"
    SUSPEND = "suspend"
    RESUME = "resume"
    RESIZE = "resize"
    CONFIGURE = "configure"
    MIGRATE = "migrate"
    TERMINATE = "terminate"
    CREATE = "create"
    CLONE = "clone"


@attrs.frozen(kw_only=True)
class GuestView:
    """What a read of Proxmox says about one guest: the input of every target predicate.

    ``exists`` is False when the guest's config is absent on the node read. ``config`` is
    the ``GET …/config`` answer (pending values merged in, as Proxmox returns it).
    """

    exists: bool
    node: str | None = None
    status: str | None = None
    qmpstatus: str | None = None
    lock: str | None = None
    ha_managed: bool = False
    template: bool = False
    config: Mapping[str, Any] = attrs.field(factory=dict)
    digest: str | None = None

    @classmethod
    def absent(cls) -> GuestView:
        return cls(exists=False)


TargetFn = Callable[[GuestView, Mapping[str, Any]], bool]


@attrs.frozen(kw_only=True)
class ActionSpec:
    """How one action is carried out for one guest kind."""

    action: Action
    kind: GuestKind
    method: str
    #: Path below ``/nodes/{node}``; ``{vmid}`` is substituted (the *source* vmid for clone).
    path: str
    #: UPID worker type(s) this call produces (the HA variant is listed separately).
    worker_types: tuple[str, ...]
    ha_worker_type: str | None = None
    #: The endpoint answers ``null`` after doing the work (no task to track).
    sync: bool = False
    destructive: bool = False
    #: None for one-shot actions; otherwise the target predicate.
    target: TargetFn | None = None

    @property
    def convergent(self) -> bool:
        return self.target is not None

    @property
    def one_shot(self) -> bool:
        return self.target is None

    def endpoint(self, vmid: int, params: Mapping[str, Any]) -> str:
        """The path below ``/nodes/{node}`` for a guest."""
        path_vmid = params.get("source_vmid", vmid) if self.action is Action.CLONE else vmid
        return self.path.format(vmid=path_vmid)

    def task_vmid(self, vmid: int, params: Mapping[str, Any]) -> int:
        """The vmid Proxmox writes into the UPID ``id`` (the *source* vmid for clone)."""
        if self.action is Action.CLONE:
            return int(params.get("source_vmid", vmid))
        return vmid

    def holds(self, view: GuestView, params: Mapping[str, Any]) -> bool:
        """Whether the action's target already holds (always False for one-shot actions)."""
        return self.target is not None and self.target(view, params)


# --- target predicates -------------------------------------------------------------------

_SIZE_RE = re.compile(r"^(?P<num>\d+(?:\.\d+)?)(?P<unit>[KMGT]?)$")
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int:
    """Bytes for a Proxmox size (``32G``, ``512M``, ``1.5T``, a bare number is bytes)."""
    m = _SIZE_RE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"invalid size {text!r}: expected a number with an optional K/M/G/T")
    return int(float(m["num"]) * _UNITS[m["unit"]])


def disk_size(config: Mapping[str, Any], disk: str) -> int | None:
    """The ``size=`` of a disk entry in a guest config, in bytes, if present."""
    entry = config.get(disk)
    if not isinstance(entry, str):
        return None
    for part in entry.split(","):
        key, _, value = part.partition("=")
        if key == "size":
            try:
                return parse_size(value)
            except ValueError:
                return None
    return None


def _running(view: GuestView, _params: Mapping[str, Any]) -> bool:
    if not view.exists or view.status != "running":
        return False
    return view.qmpstatus in (None, "running")


def _stopped(view: GuestView, _params: Mapping[str, Any]) -> bool:
    return view.exists and view.status == "stopped"


def _paused(view: GuestView, _params: Mapping[str, Any]) -> bool:
    if not view.exists:
        return False
    if view.status == "running" and view.qmpstatus in ("paused", "prelaunch", "suspended"):
        return True
    return view.status == "stopped" and view.lock == "suspended"  # hibernated to disk


def _resized(view: GuestView, params: Mapping[str, Any]) -> bool:
    if not view.exists:
        return False
    current = disk_size(view.config, str(params.get("disk", "")))
    try:
        wanted = parse_size(str(params.get("size", "")))
    except ValueError:
        return False
    return current is not None and current >= wanted


#: Parameters of the config endpoints that are not config keys (reference §1.1).
CONFIG_CONTROL_KEYS = frozenset(
    {"digest", "delete", "revert", "background_delay", "force", "skiplock"}
)


def _configured(view: GuestView, params: Mapping[str, Any]) -> bool:
    """Whether the config holds what ``params`` set and lacks what they delete. ``tags`` are
    compared as Proxmox stores them (lower-cased, each once, any order) and without the
    ownership record's ``lcd.`` tags, which a configure keeps (a deleted ``tags`` leaves
    them alone): :func:`~lifecycled.domain.tags.client_tags`."""
    if not view.exists:
        return False
    for key, value in params.items():
        if key in CONFIG_CONTROL_KEYS or value is None:  # None is not sent (wire_params)
            continue
        current = view.config.get(key)
        if key == "tags":
            if client_tags(_wire_value(value)) != client_tags(_wire_value(current or "")):
                return False
            continue
        # Both sides in wire form: Proxmox returns some numbers as strings (§12.10).
        if current is None or _wire_value(current) != _wire_value(value):
            return False
    deleted = params.get("delete")
    if deleted:
        for key in _configid_list(deleted):
            if key == "tags" and client_tags(_wire_value(view.config.get("tags") or "")):
                return False
            if key != "tags" and key in view.config:
                return False
    return True


def _wire_value(value: Any) -> str:
    """A param value as a form field: booleans ``0``/``1``, lists comma-joined."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, list | tuple):
        return ",".join(_wire_value(v) for v in value)
    return str(value)


_FALSE_TEXTS = frozenset({"", "0", "false", "no", "off"})
_BOOL_TEXTS = {"1": True, "0": False, "true": True, "false": False}

#: lifecycled's own names for Proxmox boolean parameters (translated by :func:`wire_params`).
BOOLEAN_ALIASES = {"force_stop": "forceStop", "with_local_disks": "with-local-disks"}


class BadParam(ValueError):
    """A parameter value Proxmox would refuse; ``name`` and ``text`` say which and why."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(f"{name}: {text}")
        self.name = name
        self.text = text


def as_boolean(name: str, value: Any) -> bool:
    """A boolean parameter as a client meant it (reference §13.7).

    Proxmox itself accepts only ``1`` and ``0`` (``true``, ``yes``, ``on`` get a 400), so
    JSON ``true``/``false``, the numbers 1/0 and the texts ``1``/``0``/``true``/``false`` (any
    case) are normalised here; anything else raises :class:`BadParam`.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _BOOL_TEXTS:
        return _BOOL_TEXTS[value.strip().lower()]
    raise BadParam(name, f"expected a boolean (true, false, 1 or 0), got {value!r}")


def normalize_booleans(params: Mapping[str, Any], booleans: Collection[str]) -> dict[str, Any]:
    """``params`` with every boolean parameter (``booleans``, plus lifecycled's aliases) as a
    JSON boolean; raises :class:`BadParam` for a value that is no boolean."""
    out = dict(params)
    for key, value in params.items():
        if value is not None and (key in booleans or key in BOOLEAN_ALIASES):
            out[key] = as_boolean(key, value)
    return out


def _as_bool(value: Any) -> bool:
    """A boolean param as the user meant it: the text ``"0"`` (or ``false``/``no``/``off``) is
    false, not a non-empty (hence true) string."""
    if isinstance(value, str):
        return value.strip().lower() not in _FALSE_TEXTS
    return bool(value)


def _migrated(view: GuestView, params: Mapping[str, Any]) -> bool:
    return view.exists and view.node == params.get("target") and view.lock != "migrate"


def _absent(view: GuestView, _params: Mapping[str, Any]) -> bool:
    return not view.exists


def fingerprint_of(kind: GuestKind, config: Mapping[str, Any]) -> dict[str, str]:
    """The identity fingerprint of a guest config (SPEC §1 "Guest").

    QEMU: the ``smbios1`` uuid and the ``meta`` ctime when present, and the name.
    LXC: the hostname.
    """
    fp: dict[str, str] = {}
    if kind is GuestKind.QEMU:
        smbios = str(config.get("smbios1", ""))
        for part in smbios.split(","):
            key, _, value = part.partition("=")
            if key == "uuid" and value:
                fp["uuid"] = value.lower()
        meta = str(config.get("meta", ""))
        for part in meta.split(","):
            key, _, value = part.partition("=")
            if key == "ctime" and value:
                fp["ctime"] = value
        if "name" in config:
            fp["name"] = str(config["name"])
    elif "hostname" in config:
        fp["name"] = str(config["hostname"])
    return fp


def fingerprint_matches(recorded: Mapping[str, str], current: Mapping[str, str]) -> bool:
    """Whether ``current`` names the same guest as ``recorded``.

    Every field both sides have must agree, and at least one must be shared; a uuid, when
    both have one, decides (with the ctime when both have that too): the name is then not
    compared, so a renamed guest is still the same guest.
    """
    if "uuid" in recorded and "uuid" in current:
        return recorded["uuid"] == current["uuid"] and (
            "ctime" not in recorded
            or "ctime" not in current
            or recorded["ctime"] == current["ctime"]
        )
    shared = set(recorded) & set(current)
    return bool(shared) and all(recorded[k] == current[k] for k in shared)


def expected_fingerprint(kind: GuestKind, params: Mapping[str, Any]) -> dict[str, str]:
    """The fingerprint a create/clone op's guest will have, from the op's params."""
    return fingerprint_of(kind, params)


def _created(kind: GuestKind) -> TargetFn:
    def target(view: GuestView, params: Mapping[str, Any]) -> bool:
        if not view.exists or view.lock in ("create", "clone"):
            return False
        # "Exists with our fingerprint" (SPEC §1): without an expected fingerprint nothing
        # proves that a guest found at this VMID is ours, so the target does not hold.
        wanted = expected_fingerprint(kind, params)
        return fingerprint_matches(wanted, fingerprint_of(kind, view.config))

    return target


# --- the catalogue -------------------------------------------------------------------------

_Q = GuestKind.QEMU
_L = GuestKind.LXC


def _spec(
    action: Action, kind: GuestKind, method: str, path: str, *types: str, **kw: Any
) -> ActionSpec:
    return ActionSpec(action=action, kind=kind, method=method, path=path, worker_types=types, **kw)


_CATALOGUE: dict[tuple[GuestKind, Action], ActionSpec] = {
    (s.kind, s.action): s
    for s in (
        # QEMU (reference §1.1)
        _spec(
            Action.START,
            _Q,
            "POST",
            "/qemu/{vmid}/status/start",
            "qmstart",
            ha_worker_type="hastart",
            target=_running,
        ),
        _spec(
            Action.STOP,
            _Q,
            "POST",
            "/qemu/{vmid}/status/stop",
            "qmstop",
            ha_worker_type="hastop",
            destructive=True,
            target=_stopped,
        ),
        _spec(
            Action.SHUTDOWN,
            _Q,
            "POST",
            "/qemu/{vmid}/status/shutdown",
            "qmshutdown",
            ha_worker_type="hastop",
            target=_stopped,
        ),
        _spec(Action.REBOOT, _Q, "POST", "/qemu/{vmid}/status/reboot", "qmreboot"),
        _spec(Action.RESET, _Q, "POST", "/qemu/{vmid}/status/reset", "qmreset", destructive=True),
        _spec(
            Action.SUSPEND,
            _Q,
            "POST",
            "/qemu/{vmid}/status/suspend",
            "qmpause",
            "qmsuspend",
            target=_paused,
        ),
        _spec(Action.RESUME, _Q, "POST", "/qemu/{vmid}/status/resume", "qmresume", target=_running),
        _spec(Action.RESIZE, _Q, "PUT", "/qemu/{vmid}/resize", "resize", target=_resized),
        _spec(Action.CONFIGURE, _Q, "POST", "/qemu/{vmid}/config", "qmconfig", target=_configured),
        _spec(
            Action.MIGRATE,
            _Q,
            "POST",
            "/qemu/{vmid}/migrate",
            "qmigrate",
            ha_worker_type="hamigrate",
            target=_migrated,
        ),
        _spec(
            Action.TERMINATE,
            _Q,
            "DELETE",
            "/qemu/{vmid}",
            "qmdestroy",
            destructive=True,
            target=_absent,
        ),
        _spec(Action.CREATE, _Q, "POST", "/qemu", "qmcreate", "qmrestore", target=_created(_Q)),
        _spec(Action.CLONE, _Q, "POST", "/qemu/{vmid}/clone", "qmclone", target=_created(_Q)),
        # LXC (reference §1.2): no reset, config is synchronous only, suspend is one-shot.
        _spec(
            Action.START,
            _L,
            "POST",
            "/lxc/{vmid}/status/start",
            "vzstart",
            ha_worker_type="hastart",
            target=_running,
        ),
        _spec(
            Action.STOP,
            _L,
            "POST",
            "/lxc/{vmid}/status/stop",
            "vzstop",
            ha_worker_type="hastop",
            destructive=True,
            target=_stopped,
        ),
        _spec(
            Action.SHUTDOWN,
            _L,
            "POST",
            "/lxc/{vmid}/status/shutdown",
            "vzshutdown",
            ha_worker_type="hastop",
            target=_stopped,
        ),
        _spec(Action.REBOOT, _L, "POST", "/lxc/{vmid}/status/reboot", "vzreboot"),
        _spec(Action.SUSPEND, _L, "POST", "/lxc/{vmid}/status/suspend", "vzsuspend"),
        _spec(Action.RESUME, _L, "POST", "/lxc/{vmid}/status/resume", "vzresume", target=_running),
        _spec(Action.RESIZE, _L, "PUT", "/lxc/{vmid}/resize", "resize", target=_resized),
        _spec(Action.CONFIGURE, _L, "PUT", "/lxc/{vmid}/config", sync=True, target=_configured),
        _spec(
            Action.MIGRATE,
            _L,
            "POST",
            "/lxc/{vmid}/migrate",
            "vzmigrate",
            ha_worker_type="hamigrate",
            target=_migrated,
        ),
        _spec(
            Action.TERMINATE,
            _L,
            "DELETE",
            "/lxc/{vmid}",
            "vzdestroy",
            destructive=True,
            target=_absent,
        ),
        _spec(Action.CREATE, _L, "POST", "/lxc", "vzcreate", "vzrestore", target=_created(_L)),
        _spec(Action.CLONE, _L, "POST", "/lxc/{vmid}/clone", "vzclone", target=_created(_L)),
    )
}

#: Actions whose HA-managed variant is routed through the HA manager (reference §1.3).
HA_ROUTED = frozenset({Action.START, Action.STOP, Action.SHUTDOWN, Action.MIGRATE})


#: Config locks an action goes ahead despite, per guest kind (reference §5.5, §13.6); ``None``:
#: the action runs no lock check at all. Every other lock blocks the action (Proxmox answers
#: ``VM is locked (…)``/``CT is locked (…)``), so lifecycled waits instead of sending it.
#: QEMU: start resumes a hibernated VM (``suspended``); suspend skips the check for a
#: ``backup`` lock; resume allows ``backup`` and ``suspended``. LXC: start and stop exempt
#: ``mounted``; shutdown and suspend check strictly (``mounted`` blocks them); resume and
#: reboot check nothing; migrate checks inside its task (so every lock blocks it).
_LOCK_EXEMPT: dict[tuple[GuestKind, Action], frozenset[str] | None] = {
    (_Q, Action.START): frozenset({"suspended"}),
    (_Q, Action.SUSPEND): frozenset({"backup"}),
    (_Q, Action.RESUME): frozenset({"backup", "suspended"}),
    (_L, Action.START): frozenset({"mounted"}),
    (_L, Action.STOP): frozenset({"mounted"}),
    (_L, Action.RESUME): None,
    (_L, Action.REBOOT): None,
}


def lock_blocks(kind: GuestKind, action: Action, lock: str | None) -> bool:
    """Whether a guest's config ``lock`` makes Proxmox refuse this action (reference §13.6)."""
    if not lock:
        return False
    exempt = _LOCK_EXEMPT.get((kind, action), frozenset())
    return exempt is not None and lock not in exempt


class UnsupportedAction(ValueError):
    """The action does not exist for this guest kind (e.g. ``reset`` for LXC)."""


def spec_for(kind: GuestKind, action: Action | str) -> ActionSpec:
    """The catalogue entry, or :class:`UnsupportedAction`."""
    try:
        act = Action(action)
    except ValueError:
        raise UnsupportedAction(f"unknown action {action!r}") from None
    spec = _CATALOGUE.get((kind, act))
    if spec is None:
        raise UnsupportedAction(f"action {act} is not available for {kind} guests")
    return spec


def all_specs() -> list[ActionSpec]:
    """Every catalogue entry, in a stable order."""
    return list(_CATALOGUE.values())


class Effect(enum.StrEnum):
    """What a destructive op may lose (the reasons :func:`is_destructive` says yes)."""

    #: ``terminate``: the guest and its disks are gone.
    DESTROY = "destroy"
    #: ``stop``, ``reset``, ``shutdown`` with ``force_stop``: the running state is lost.
    POWER_KILL = "power_kill"
    #: ``configure`` deleting, detaching, reverting or emptying a disk or an ``unusedN`` volume.
    DISK_REMOVAL = "disk_removal"
    #: ``configure`` turning the Proxmox ``protection`` flag off.
    PROTECTION_OFF = "protection_off"
    #: ``migrate`` moving local disks (QEMU ``with-local-disks``; a target storage mapping).
    LOCAL_DISK_MIGRATION = "local_disk_migration"
    #: ``create`` with ``force``: a restore that overwrites an existing guest.
    OVERWRITE = "overwrite"


#: Config keys that hold a disk or a volume (reference §1.1/§1.2, pve-api-schema.json).
DISK_KEY_RE = re.compile(
    r"(?:ide|sata|scsi|virtio|mp|unused)\d+|efidisk0|tpmstate0|rootfs", re.ASCII
)
#: Separators of a ``pve-configid-list`` (``delete``, ``revert``).
_CONFIGID_SPLIT = re.compile(r"[,;\s]+")
_POWER_KILL_FLAGS = ("force_stop", "forceStop")
_LOCAL_DISK_FLAGS = ("with-local-disks", "with_local_disks")
_TARGET_STORAGE = ("targetstorage", "target-storage", "target_storage")


def _sent(params: Mapping[str, Any], key: str) -> bool:
    """Whether ``key`` is sent to Proxmox (a ``None`` value is not: see :func:`wire_params`)."""
    return params.get(key) is not None


def _truthy(params: Mapping[str, Any], *keys: str) -> bool:
    return any(_sent(params, k) and _as_bool(params[k]) for k in keys)


def _configid_list(value: Any) -> list[str]:
    return [k for k in _CONFIGID_SPLIT.split(_wire_value(value).strip()) if k]


def _empties_a_disk(key: str, value: Any) -> bool:
    """``scsi0: none`` / ``""`` / ``file=none,…``: the disk's volume is taken away."""
    first = _wire_value(value).split(",", 1)[0].strip()
    volume = first.partition("=")[2] if first.startswith(("file=", "volume=")) else first
    return DISK_KEY_RE.fullmatch(key) is not None and volume.strip().lower() in ("", "none")


def _configure_effects(params: Mapping[str, Any]) -> set[Effect]:
    effects: set[Effect] = set()
    for control in ("delete", "revert"):
        if not _sent(params, control):
            continue
        for key in _configid_list(params[control]):
            if DISK_KEY_RE.fullmatch(key):
                effects.add(Effect.DISK_REMOVAL)
            elif key == "protection":
                effects.add(Effect.PROTECTION_OFF)
    for key, value in params.items():
        if value is None or key in CONFIG_CONTROL_KEYS:
            continue
        if _empties_a_disk(key, value):
            effects.add(Effect.DISK_REMOVAL)
        elif key == "protection" and not _as_bool(value):
            effects.add(Effect.PROTECTION_OFF)
    return effects


def _effects_of(spec: ActionSpec, params: Mapping[str, Any]) -> set[Effect]:
    action = spec.action
    if action is Action.TERMINATE:
        return {Effect.DESTROY}
    if spec.destructive or (action is Action.SHUTDOWN and _truthy(params, *_POWER_KILL_FLAGS)):
        return {Effect.POWER_KILL}
    if action is Action.CONFIGURE:
        return _configure_effects(params)
    if action is Action.MIGRATE and (
        _truthy(params, *_LOCAL_DISK_FLAGS)
        or any(_sent(params, k) and _wire_value(params[k]).strip() for k in _TARGET_STORAGE)
    ):
        return {Effect.LOCAL_DISK_MIGRATION}
    if action is Action.CREATE and _truthy(params, "force"):
        return {Effect.OVERWRITE}
    return set()


def destructive_effects(
    action: Action | str, kind: GuestKind | str | None, params: Mapping[str, Any]
) -> frozenset[Effect]:
    """What ``action`` with ``params`` may lose on a guest of ``kind`` (SPEC §1, issue 11).

    Destructive whatever the action's name: ``terminate``; ``stop`` and ``reset``;
    ``shutdown`` with ``force_stop``; ``configure`` that deletes, detaches (``delete``),
    reverts or empties (``none``) a disk or an ``unusedN`` volume, or turns ``protection``
    off; ``migrate`` that moves local disks (``with-local-disks``, or a target storage
    mapping, online or offline — an LXC ``restart`` migration is downtime, not data loss);
    ``create`` with ``force`` (a restore over an existing guest). ``kind`` ``None`` (not
    resolved yet) counts what the action does for any kind. An unknown action or kind is not
    destructive here (it is refused as invalid elsewhere).
    """
    kinds: list[GuestKind]
    if kind is None:
        kinds = list(GuestKind)
    else:
        try:
            kinds = [GuestKind(kind)]
        except ValueError:
            return frozenset()
    effects: set[Effect] = set()
    for each in kinds:
        try:
            spec = spec_for(each, action)
        except UnsupportedAction:
            continue
        effects |= _effects_of(spec, params)
    return frozenset(effects)


def is_destructive(
    action: Action | str, kind: GuestKind | str | None, params: Mapping[str, Any]
) -> bool:
    """The one predicate of "destructive" (signature gate, protection check, audit, token
    roles): whether :func:`destructive_effects` names any effect."""
    return bool(destructive_effects(action, kind, params))


def wire_params(
    spec: ActionSpec, vmid: int, params: Mapping[str, Any], *, booleans: Collection[str] = ()
) -> dict[str, str]:
    """The form fields Proxmox expects for this action, from an op's params.

    lifecycled-level params (``force_stop``, ``with_local_disks``, ``source_vmid``) are
    translated; the endpoint's boolean parameters (``booleans``, Proxmox's names) are sent as
    ``1``/``0`` only (:func:`as_boolean`, raising :class:`BadParam`); lists are comma-joined;
    everything else is passed through as text.
    """
    out: dict[str, str] = {}
    for key, value in params.items():
        if value is None or key == "source_vmid":
            continue
        name = BOOLEAN_ALIASES.get(key, key)
        if key in BOOLEAN_ALIASES or name in booleans:
            out[name] = _wire_value(as_boolean(key, value))
        else:
            out[name] = _wire_value(value)
    if spec.action is Action.CREATE:
        out["vmid"] = str(vmid)
    elif spec.action is Action.CLONE:
        out["newid"] = str(vmid)
    return out
