"""Submissions: validate, resolve the guest, journal (SPEC §1 "Idempotency", §5 "HTTP")."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from lifecycled.domain.actions import (
    Action,
    BadParam,
    UnsupportedAction,
    expected_fingerprint,
    parse_size,
    spec_for,
)
from lifecycled.domain.guests import DesiredState, GuestHead, desired_for
from lifecycled.domain.op import GuestKind, GuestRef, Op, Origin
from lifecycled.domain.ownership import OwnershipRecord, key_digest, reserved_tags
from lifecycled.domain.text import shown
from lifecycled.engine import node
from lifecycled.errors import (
    Conflict,
    LifecycledError,
    NotFound,
    OwnershipUnavailable,
    PolicyRefused,
    PveError,
    ValidationError,
)
from lifecycled.journal import Journal, SubmitRequest, SubmitResult
from lifecycled.journal.guests import SubmissionContext
from lifecycled.pve import wire
from lifecycled.pve.params import param_problems
from lifecycled.pve.port import PveClient

if TYPE_CHECKING:
    from lifecycled.engine.guests import GuestService

log = logging.getLogger("lifecycled.submit")

VMID_MIN, VMID_MAX = 100, 999_999_999
# Always used with ``fullmatch`` (a ``$`` would let a trailing newline through); ASCII only,
# so no control character, NUL or surrogate can pass.
KEY_PATTERN = r"[A-Za-z0-9._:\-]{1,200}"
NODE_PATTERN = r"[a-zA-Z0-9](?:[a-zA-Z0-9\-]{0,61}[a-zA-Z0-9])?"
_KEY_RE = re.compile(KEY_PATTERN)
#: An absolute Proxmox size, exactly (``parse_size`` also strips blanks).
SIZE_PATTERN = r"[0-9]{1,15}(?:\.[0-9]{1,6})?[KMGT]?"
_SIZE_RE = re.compile(SIZE_PATTERN)
_NODE_RE = re.compile(NODE_PATTERN)
#: Actions whose params may set a guest's ``tags`` (Proxmox's create and config endpoints).
_TAKES_TAGS = frozenset({Action.CREATE, Action.CONFIGURE})
#: Namespace for deterministic smbios1 uuids of created VMs (identity fingerprint).
_FINGERPRINT_NS = uuid.UUID("6f1c3c9e-6a39-4f55-9d0e-6c1f3f2a7b11")


class ProxmoxUnreachable(ValidationError):
    """The guest's kind or node could not be read from Proxmox (it may answer later)."""


@attrs.frozen(kw_only=True)
class Submission:
    """A validated-to-be submission as a user sent it (kind and node may be missing)."""

    action: str
    vmid: int
    kind: str | None = None
    node: str | None = None
    params: Mapping[str, Any] = attrs.field(factory=dict)
    idempotency_key: str | None = None
    origin: Origin = Origin.API
    actor: str = "api"


def validate(sub: Submission) -> None:
    """Raise :class:`ValidationError` (with per-field details) for a malformed submission."""
    details: dict[str, str] = {}
    try:
        action = Action(sub.action)
    except ValueError:
        details["action"] = (
            f"unknown action '{shown(sub.action)}'; one of {', '.join(a.value for a in Action)}"
        )
        action = None
    if (
        isinstance(sub.vmid, bool)
        or not isinstance(sub.vmid, int)
        or not VMID_MIN <= sub.vmid <= VMID_MAX
    ):
        details["vmid"] = f"must be an integer from {VMID_MIN} to {VMID_MAX}"
    kind: GuestKind | None = None
    if sub.kind is not None:
        try:
            kind = GuestKind(sub.kind)
        except ValueError:
            details["kind"] = "must be qemu or lxc"
    if sub.node is not None and not _NODE_RE.fullmatch(sub.node):
        details["node"] = "not a valid Proxmox node name (letters, digits and -, at most 63)"
    if sub.idempotency_key is not None and not _KEY_RE.fullmatch(sub.idempotency_key):
        details["idempotency_key"] = "1-200 characters of letters, digits and . _ : -"
    if action is not None and "kind" not in details:
        details.update(param_problems(kind, action, sub.params))
    if action is not None:
        for field, problem in _action_params(action, sub.params).items():
            details.setdefault(field, problem)
    if sub.kind is not None and action is not None and "kind" not in details:
        try:
            spec_for(GuestKind(sub.kind), action)
        except UnsupportedAction as exc:
            details["action"] = str(exc)
    reserved = _reserved_tags(action, sub.params)
    if reserved is not None:
        details["params.tags"] = reserved
        raise ValidationError(f"params.tags: {reserved}", details, code="reserved_tags")
    if details:
        raise ValidationError("invalid submission", details)


def _reserved_tags(action: Action | None, params: Mapping[str, Any]) -> str | None:
    """Why a submission's ``tags`` may not be sent: they name the ownership record's ``lcd.``
    tags (SPEC §7), which only lifecycled writes; ``None`` when they name none."""
    value = params.get("tags")
    if action not in _TAKES_TAGS or not isinstance(value, str):
        return None
    reserved = reserved_tags(value)
    if not reserved:
        return None
    return (
        f"{', '.join(shown(t) for t in reserved)}: lcd.* tags are lifecycled's ownership "
        "record; a submission may not set or change them (the guest's own lcd.* tags are "
        "kept by every configure)"
    )[:300]


def _action_params(action: Action, params: Mapping[str, Any]) -> dict[str, str]:
    d: dict[str, str] = {}
    if action is Action.RESIZE:
        if not params.get("disk"):
            d["params.disk"] = "required: the disk to grow (e.g. scsi0, rootfs)"
        size = params.get("size", "")
        size = size if isinstance(size, str) else ""
        if size.startswith("+"):
            d["params.size"] = (
                "must be an absolute size (e.g. 40G); relative growth is not idempotent"
            )
        else:
            try:
                parse_size(size)
                if _SIZE_RE.fullmatch(size) is None:
                    raise ValueError(size)
            except ValueError:
                d["params.size"] = "required: an absolute size such as 40G"
    elif action is Action.MIGRATE:
        target = params.get("target")
        if not isinstance(target, str) or not _NODE_RE.fullmatch(target):
            d["params.target"] = "required: the target node"
    elif action is Action.CONFIGURE:
        if not any(k not in ("digest", "background_delay") for k in params):
            d["params"] = "configure needs at least one config key"
    elif action is Action.CLONE:
        src = params.get("source_vmid")
        if isinstance(src, bool) or not isinstance(src, int) or not VMID_MIN <= src <= VMID_MAX:
            d["params.source_vmid"] = "required: the vmid to clone from"
    return d


async def resolve_guest(sub: Submission, pve: PveClient | None, *, default_node: str) -> GuestRef:
    """Fill in kind and node from ``/cluster/resources`` when the submission omits them."""
    action = Action(sub.action)
    if sub.kind is not None and sub.node is not None:
        return GuestRef(node=sub.node, kind=GuestKind(sub.kind), vmid=sub.vmid)
    if action is Action.CREATE:
        if sub.kind is None:
            raise ValidationError("invalid submission", {"kind": "required for create"})
        return GuestRef(node=sub.node or default_node, kind=GuestKind(sub.kind), vmid=sub.vmid)
    if pve is None:
        raise ValidationError(
            "invalid submission", {"kind": "give kind and node (Proxmox is not reachable here)"}
        )
    lookup_vmid = sub.vmid
    if action is Action.CLONE:
        lookup_vmid = int(sub.params["source_vmid"])
    try:
        resources = await pve.cluster_resources()
    except PveError as err:
        raise ProxmoxUnreachable(
            "cannot resolve the guest",
            {"kind": f"Proxmox is unreachable ({err.reason}); give kind and node"},
        ) from None
    for res in resources:
        if res.vmid == lookup_vmid:
            return GuestRef(
                node=sub.node or res.node, kind=GuestKind(sub.kind or res.kind), vmid=sub.vmid
            )
    raise NotFound(f"guest {lookup_vmid} not found in the cluster; give kind and node")


def _managed_guest(row: GuestHead | None) -> GuestRef | None:
    """Where the journal's row says a managed guest is: ops for it take node and kind from
    there (no Proxmox lookup), and a client value that disagrees is refused, with both
    values, by the journal's submission guard (``check_placement``) — after its idempotency
    check, in the transaction that writes. ``None`` for create/clone (no row is read) and
    for guests the journal does not manage (resolved from the request or Proxmox)."""
    if row is None or not row.managed:
        return None
    return GuestRef(node=row.node, kind=row.kind, vmid=row.vmid)


def with_fingerprint(
    action: Action, kind: GuestKind, key: str, params: Mapping[str, Any]
) -> dict[str, Any]:
    """Params for create/clone of a VM carry a deterministic ``smbios1`` uuid (its identity)."""
    out = dict(params)
    if action in (Action.CREATE,) and kind is GuestKind.QEMU and "smbios1" not in out:
        out["smbios1"] = f"uuid={uuid.uuid5(_FINGERPRINT_NS, key)}"
    return out


class KeyUsedElsewhere(Conflict):
    """The key is the last one recorded in the guest's ownership record, but this daemon's
    journal does not hold it: another daemon accepted it (before a migration). Never run twice."""

    code = "idempotency_key_used_elsewhere"


_CREATING = frozenset({Action.CREATE, Action.CLONE})
#: Actions whose key is recorded in the guest's tags even when the desired state stays.
_RECORDED = frozenset({Action.REBOOT, Action.RESET, Action.MIGRATE, Action.TERMINATE})


async def _ownership_first(
    guests: GuestService,
    sub: Submission,
    guest: GuestRef,
    existing: Op | None,
    row: GuestHead | None,
) -> tuple[OwnershipRecord, OwnershipRecord | None] | None:
    """SPEC §7: the ownership record in the guest's tags is written before the journal —
    the new desired state and the op's key. Returns the record the tags now hold and the
    one it replaced, for :func:`_undo_ownership` (``None``: none replaced); ``None`` when
    the record was not read.

    ``row`` is the guest's journal row :func:`submit` read for its placement.
    ``existing`` is the op this journal holds for the key (read once by :func:`submit`):
    such a key goes straight to the journal (dedup, re-arm, conflict). A key that is the
    record's last key but unknown here ran on another daemon: :class:`KeyUsedElsewhere`,
    nothing is written.
    """
    key = sub.idempotency_key
    if existing is not None:
        return None
    action = Action(sub.action)
    desired = desired_for(action)
    try:
        record, config = await guests.read_record(guest.vmid, guest.node, guest.kind, cached=row)
    except NotFound:
        return None  # not there (or named with another node/kind): the journal decides
    if record is None or not record.managed:
        return None  # the journal refuses it (guest_not_managed)
    digest = key_digest(key) if key is not None else None
    if digest is not None and digest in record.last_keys:
        raise KeyUsedElsewhere(
            f"idempotency key {key!r} was already accepted for guest {guest.vmid} by the "
            "lifecycled of the node it ran on before it moved; it is not run again"
        )
    if (desired is None or desired is record.desired) and action not in _RECORDED:
        return None
    assert guests.cluster is not None
    wanted: DesiredState | None = desired
    replaced: list[OwnershipRecord] = []

    def change(old: OwnershipRecord | None, _config: object) -> OwnershipRecord | None:
        if old is None or not old.managed:
            return old
        if digest is not None and digest in old.last_keys:
            raise KeyUsedElsewhere(f"idempotency key {key!r} was accepted meanwhile")
        replaced[:] = [old]
        return old.with_key(digest).bumped(desired=wanted or old.desired)

    written = await guests.cluster.write(guest.node, guest.kind, guest.vmid, change, config=config)
    if written is None:
        return None
    return written, replaced[0] if replaced and written != replaced[0] else None


async def _undo_ownership(
    guests: GuestService, guest: GuestRef, written: OwnershipRecord, replaced: OwnershipRecord
) -> None:
    """Put back the record :func:`_ownership_first` replaced, one generation later, when the
    journal then refused the op (503, a conflict, a guard): the tags must not keep a desired
    state reconcile would enforce, nor a key that would refuse the client's resend as run
    elsewhere. A record written over meanwhile is left as it is; a failed undo is logged."""
    assert guests.cluster is not None

    def change(old: OwnershipRecord | None, _config: object) -> OwnershipRecord | None:
        if old != written:
            return old
        return attrs.evolve(replaced, generation=written.generation + 1)

    try:
        await guests.cluster.write(guest.node, guest.kind, guest.vmid, change)
    except (PveError, OwnershipUnavailable, NotFound) as err:
        log.warning(
            "ownership.undo_failed",
            extra={"vmid": guest.vmid, "node": guest.node, "error": str(err)},
        )


async def submit(
    journal: Journal,
    sub: Submission,
    *,
    pve: PveClient | None,
    default_node: str,
    now: float,
    guests: GuestService | None = None,
    authorize: Callable[[Submission], Awaitable[None]] | None = None,
) -> SubmitResult:
    """Validate, resolve and journal one submission. Nothing is written on any error, except
    the audit record of a refusal by the served node's state (draining: :class:`NodeRefused`).

    Ownership rule (SPEC §1): create/clone needs a free vmid (``vmid_in_use`` otherwise) and
    records a new one as ``native``, never changing an existing guest's row; any other
    action needs a managed guest (``native`` or ``adopted``) — an unknown, discovered or
    released guest is refused with ``guest_not_managed`` (:class:`PolicyRefused`) — on the
    node and of the kind its row says (``placement_mismatch`` otherwise). Accepting a power action sets the
    guest's desired state in the same transaction.

    ``authorize`` runs once the submission is known to be well formed, before anything
    else is read or written (the HTTP face checks the token's role and the signature there).
    """
    validate(sub)
    if authorize is not None:  # a face's check of the well-formed request (role, signature)
        await authorize(sub)
    cluster = guests.cluster if guests is not None else None
    if cluster is not None and sub.node is not None:
        cluster.require_served(sub.vmid, sub.node)
    key = sub.idempotency_key
    action = Action(sub.action)
    # The idempotency key is read at most once before the journal's transaction, and only
    # where the shared record needs it (is the key this journal's, or another daemon's?);
    # the admission below and the journal use that read (SPEC §1 "Idempotency").
    tags_first = guests is not None and cluster is not None and action not in _CREATING
    read_key = tags_first and key is not None
    if not read_key:
        return await _submit_turn(
            journal, sub, pve=pve, default_node=default_node, now=now, guests=guests
        )
    assert guests is not None and key is not None
    async with guests.key_turn(key):  # a resend waits for this one's op, then dedups
        return await _submit_turn(
            journal, sub, pve=pve, default_node=default_node, now=now, guests=guests
        )


async def _submit_turn(
    journal: Journal,
    sub: Submission,
    *,
    pve: PveClient | None,
    default_node: str,
    now: float,
    guests: GuestService | None,
) -> SubmitResult:
    """:func:`submit` once the request is known to be well formed and authorized (with the
    turn of its idempotency key when the guest's record holds keys)."""
    cluster = guests.cluster if guests is not None else None
    key = sub.idempotency_key
    action = Action(sub.action)
    tags_first = guests is not None and cluster is not None and action not in _CREATING
    read_key = tags_first and key is not None
    # The guest's row, read once: its placement here, and the ownership record's check of
    # the journal's cache below (which reads it again only when that has work to do). In
    # the same statement the served node's state and the key's op: a managed guest's
    # submission awaits nothing else until its admission, so they are what it would read
    # there (any other submission reads them where it needs them).
    context: SubmissionContext | None = None
    if action not in _CREATING:
        context = await journal.guests.submission_context(
            sub.vmid, served=default_node, key=key if read_key else None
        )
    row = context.guest if context is not None else None
    placed = _managed_guest(row)
    if placed is None:
        context = None  # not a managed guest's row: its facts are read where needed
        guest = await resolve_guest(sub, pve, default_node=default_node)
    else:
        # The journal's row decides the node's admission; the client's node/kind, when
        # given, travel on to the journal, which refuses them if they disagree with the row.
        guest = GuestRef(
            node=sub.node if sub.node is not None else placed.node,
            kind=GuestKind(sub.kind) if sub.kind is not None else placed.kind,
            vmid=sub.vmid,
        )
    if cluster is not None:
        cluster.require_served(guest.vmid, guest.node)  # placement is Proxmox's (SPEC §7)
    try:
        spec_for(guest.kind, sub.action)  # the kind resolved from Proxmox may not support it
    except UnsupportedAction as exc:
        # Only a kind read from the journal or Proxmox gets here (a given kind was checked by
        # validate): the guest's state, not the request's shape, refuses it.
        raise PolicyRefused("unsupported_action", str(exc)) from None
    if sub.kind is None:
        unsupported = param_problems(guest.kind, action, sub.params)
        if unsupported:
            field, problem = next(iter(unsupported.items()))
            raise PolicyRefused(
                "unsupported_params",
                f"guest {sub.vmid} is {guest.kind}: {field} {problem}"[:300],
            )
    existing: Op | None = None
    if context is not None:
        existing = context.existing
    elif read_key and key is not None:
        existing = await journal.by_key(key)
    await node.admit(
        journal,
        served=default_node,
        action=sub.action,
        guest=placed or guest,
        params=sub.params,
        idempotency_key=key,
        actor=sub.actor,
        now=now,
        cluster=cluster,
        existing=existing if read_key else node.UNREAD,
        served_state=context.served_state if context is not None else node.UNREAD,
    )
    try:  # booleans are journaled as JSON booleans, sent as 1/0 (§13.7)
        params = wire.normalized_params(action, guest.kind, sub.params)
    except BadParam as exc:
        raise ValidationError("invalid submission", {f"params.{exc.name}": exc.text}) from None
    if key is not None:
        params = with_fingerprint(action, guest.kind, key, params)
    req = SubmitRequest(
        idempotency_key=key,
        action=sub.action,
        guest=guest,
        params=params,
        origin=sub.origin,
        actor=sub.actor,
    )
    written: tuple[OwnershipRecord, OwnershipRecord | None] | None = None
    if tags_first:
        assert guests is not None
        try:
            written = await _ownership_first(guests, sub, guest, existing, row)
        except (PveError, OwnershipUnavailable) as err:
            # No quorum, node unreachable, config locked: an op on a managed guest still goes
            # to the journal (its desired state there is one generation ahead of the tags;
            # reconcile writes it to the tags once they can be written — SPEC §7).
            log.warning(
                "ownership.deferred",
                extra={"vmid": guest.vmid, "node": guest.node, "error": str(err)},
            )
    try:
        return await journal.submit_guest_op(
            req,
            now=now,
            generation=written[0].generation if written is not None else 0,
            desired=desired_for(action),
            create_fingerprint=expected_fingerprint(guest.kind, params)
            if action in _CREATING
            else None,
            read_key=read_key,
            existing=existing,
        )
    except LifecycledError:  # nothing journaled: the record goes back as it was
        if written is not None and written[1] is not None:
            assert guests is not None
            await _undo_ownership(guests, guest, written[0], written[1])
        raise
