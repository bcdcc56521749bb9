"""The ownership record kept in the guest's own Proxmox tags (SPEC §7) — pure.

A managed guest carries its record in its config's ``tags`` so it follows the guest through
every migration and every sidecar of the cluster reads the same one (``/cluster/resources``
returns the tags of every guest; the Proxmox GUI shows them). The record is a handful of
tags, all starting with ``lcd.``; any other tag of the guest is kept as it is:

=====================  ==============================================================
``lcd.o.<origin>``     ``native``, ``adopted`` or ``released`` (managed: the first two)
``lcd.d.<desired>``    ``running``, ``stopped`` or ``absent`` (no tag: no desired state)
``lcd.g.<n>``          the generation: grows by one with every write of the record
``lcd.p``              protected: never destroyed
``lcd.f.<hex>``        a short digest of the identity fingerprint
``lcd.k.<n>.<hex>``    short digests of the idempotency keys of the last ops accepted
                       (at most :data:`KEEP_KEYS`; ``n`` ranks them, 0 the newest, as
                       Proxmox sorts tags when it writes them)
=====================  ==============================================================

Proxmox stores what a write of ``tags`` sets the way :mod:`lifecycled.domain.tags` says:
each tag must match its ``pve-tag`` format (else the write is refused), and by default they
are lower-cased, sorted and each kept once. Every tag above is valid and already lower case,
so it is stored as written, and the record never depends on the order of its tags; an ``lcd.``
tag in upper case (a hand edit of the config file) is read as the same tag, as Proxmox's next
write would make it. Writes go through ``PUT …/config`` with the config ``digest`` (Proxmox's
compare-and-swap).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from lifecycled.domain.guests import DesiredState, GuestOrigin, GuestRecord
from lifecycled.domain.tags import RECORD_PREFIX, is_record_tag, is_tag, split_tags, unique_tags
from lifecycled.domain.text import INT64_MAX

PREFIX = RECORD_PREFIX
_ORIGINS = (GuestOrigin.NATIVE, GuestOrigin.ADOPTED, GuestOrigin.RELEASED)
#: The values of ``lcd.o.`` and ``lcd.d.`` tags, by text.
_ORIGIN_OF = {str(o): o for o in _ORIGINS}
_DESIRED_OF = {str(d): d for d in DesiredState}
#: How many recent idempotency keys the record keeps (a resend after a migration dedups).
KEEP_KEYS = 4
#: The largest generation a record may carry: the journal stores it as a 64-bit integer.
MAX_GENERATION = INT64_MAX - 1


def _keys(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen(kw_only=True)
class OwnershipRecord:
    """One guest's ownership as the cluster keeps it."""

    origin: GuestOrigin
    desired: DesiredState | None = None
    generation: int = 0
    protected: bool = False
    #: :func:`fingerprint_digest` of the identity fingerprint (``None``: not recorded).
    fingerprint: str | None = None
    #: :func:`key_digest` of the keys of the last ops accepted for the guest, newest first.
    last_keys: tuple[str, ...] = attrs.field(default=(), converter=_keys)

    @property
    def managed(self) -> bool:
        return self.origin.managed

    def with_key(self, digest: str | None) -> OwnershipRecord:
        """The record with ``digest`` as the newest key (the oldest beyond KEEP_KEYS go)."""
        if digest is None:
            return self
        keys = (digest, *(k for k in self.last_keys if k != digest))
        return attrs.evolve(self, last_keys=keys[:KEEP_KEYS])

    def bumped(self, **changes: Any) -> OwnershipRecord:
        """The record after one write: ``changes`` applied, the generation one higher."""
        return attrs.evolve(self, generation=self.generation + 1, **changes)

    def released(self) -> OwnershipRecord:
        """The record after a release (or a soft delete): ``released``, no desired state;
        itself when it already says so."""
        if self.origin is GuestOrigin.RELEASED:
            return self
        return self.bumped(origin=GuestOrigin.RELEASED, desired=None)


def record_dict(record: OwnershipRecord | None) -> dict[str, Any]:
    """The record as ``GET /v1/guests?scope=cluster`` shows it (unmanaged: no record)."""
    if record is None:
        return {
            "managed": False,
            "origin": None,
            "desired_state": None,
            "generation": None,
            "protected": False,
        }
    return {
        "managed": record.managed,
        "origin": str(record.origin),
        "desired_state": str(record.desired) if record.desired else None,
        "generation": record.generation,
        "protected": record.protected,
    }


def view_origin(item: Mapping[str, Any]) -> GuestOrigin:
    """The origin of a cluster-view item (:func:`record_dict`): a guest without a record is
    ``discovered`` — what ``--origin`` / ``?origin=`` filter on in both faces."""
    origin = item.get("origin")
    return GuestOrigin(origin) if origin else GuestOrigin.DISCOVERED


def _digest(text: str, size: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:size]


def fingerprint_digest(fingerprint: Mapping[str, str]) -> str | None:
    """A short, tag-safe digest of an identity fingerprint; ``None`` for an empty one."""
    if not fingerprint:
        return None
    return _digest("\n".join(f"{k}={fingerprint[k]}" for k in sorted(fingerprint)), 12)


def key_digest(key: str) -> str:
    """A short, tag-safe digest of an idempotency key (keys may hold upper case and ``:``)."""
    return _digest(key, 16)


def _generation(value: str) -> int | None:
    """A ``lcd.g.`` value as a generation; ``None`` (an invalid tag, ignored) unless it is
    ASCII digits within :data:`MAX_GENERATION` (no lifecycled writes another)."""
    if not (value.isascii() and value.isdigit()) or len(value) > 19:
        return None
    number = int(value)
    return number if number <= MAX_GENERATION else None


def decode(tags: str | Iterable[str] | None) -> OwnershipRecord | None:
    """The record in ``tags``; ``None`` when the guest carries no (valid) ``lcd.o.`` tag.

    Unknown ``lcd.`` tags are ignored; of repeated tags (someone else's edit) the last in the
    order Proxmox stores them counts (sorted, by default), except that the highest generation
    wins. Tags are read lower-cased (Proxmox does not tell ``LCD.`` from ``lcd.``).
    """
    items = split_tags(tags) if isinstance(tags, str) or tags is None else list(tags)
    items = [t.lower() for t in items]
    origin: GuestOrigin | None = None
    desired: DesiredState | None = None
    generation = 0
    protected = False
    fingerprint: str | None = None
    ranked: list[tuple[int, int, str]] = []  # (rank, position, key digest)
    for position, tag in enumerate(items):
        if not tag.startswith(PREFIX):
            continue
        field, _, value = tag[len(PREFIX) :].partition(".")
        if field == "o" and value in _ORIGIN_OF:
            origin = _ORIGIN_OF[value]
        elif field == "d" and value in _DESIRED_OF:
            desired = _DESIRED_OF[value]
        elif field == "g" and (number := _generation(value)) is not None:
            generation = max(generation, number)
        elif field == "p" and not value:
            protected = True
        elif field == "f" and value:
            fingerprint = value
        elif field == "k" and value:
            rank, dot, key = value.partition(".")
            if dot and rank.isdigit() and key:
                ranked.append((int(rank), position, key))
            elif not dot:  # unranked (written before ranks): after the ranked, in tag order
                ranked.append((KEEP_KEYS, position, value))
    if origin is None:
        return None
    last_keys: list[str] = []
    for _, _, key in sorted(ranked):
        if key not in last_keys:
            last_keys.append(key)
    return OwnershipRecord(
        origin=origin,
        desired=desired,
        generation=generation,
        protected=protected,
        fingerprint=fingerprint,
        last_keys=tuple(last_keys[:KEEP_KEYS]),
    )


# --- a client's tags (SPEC §7): the record is lifecycled's, every other tag the client's ----


def reserved_tags(value: str | None) -> list[str]:
    """The ``lcd.`` tags (in any case: Proxmox does not tell them apart) in a ``tags`` value a
    client sent: no submission may set, delete or spoof a record tag."""
    return [t for t in split_tags(value) if is_record_tag(t)]


#: ``tags`` a client may send, as one JSON Schema pattern (the OpenAPI document's face of
#: :func:`~lifecycled.domain.tags.tag_list_error` and :func:`reserved_tags`): tags of the
#: ``pve-tag`` format separated by ``;``, ``,`` or spaces, none starting with ``lcd.`` in any
#: case (no look-ahead: each tag either differs from ``lcd.`` early or is a prefix of it).
_TAG_CHARS = "a-zA-Z0-9_+.\\-"
_REST = f"[{_TAG_CHARS}]*"
_CLIENT_TAG = (
    "(?:[0-9_a-km-zA-KM-Z]"
    + _REST
    + "|[lL](?:[0-9_+.\\-a-bd-zA-BD-Z]"
    + _REST
    + "|[cC](?:[0-9_+.\\-a-ce-zA-CE-Z]"
    + _REST
    + "|[dD](?:[a-zA-Z0-9_+\\-]"
    + _REST
    + ")?)?)?)"
)
CLIENT_TAGS_PATTERN = f"^[;, ]*(?:{_CLIENT_TAG}(?:[;, ]+{_CLIENT_TAG})*[;, ]*)?$"


def keep_record(params: Mapping[str, Any], tags: str | None, digest: str | None) -> dict[str, Any]:
    """A configure's params as sent to Proxmox, given the guest's config just read (its
    ``tags`` and ``digest``): Proxmox replaces the whole ``tags`` value, so one that sets
    ``tags`` sends the client's tags *plus* the guest's ``lcd.`` tags, and a ``delete`` of
    ``tags`` becomes setting them to the ``lcd.`` tags alone — the record and its keys survive.
    Such a write carries the ``digest`` read (unless the client sent one): a record written
    meanwhile makes it fail and be retried on a fresh read, never overwritten. A guest with no
    ``lcd.`` tag, or params that leave ``tags`` alone, are sent as they are."""
    out = dict(params)
    ours = [t for t in split_tags(tags) if is_record_tag(t)]
    if not ours:
        return out
    if out.get("tags") is not None:
        out["tags"] = ";".join([*split_tags(str(out["tags"])), *ours])
    else:
        # ``delete`` is a pve-configid-list: split as tags are (PVE::Tools::split_list).
        deleted = split_tags(str(out["delete"])) if out.get("delete") is not None else []
        if "tags" not in deleted:
            return out
        rest = [k for k in deleted if k != "tags"]
        if rest:
            out["delete"] = ",".join(rest)
        else:
            del out["delete"]
        out["tags"] = ";".join(ours)
    if out.get("digest") is None and digest is not None:
        out["digest"] = digest
    return out


def record_tags(record: OwnershipRecord) -> list[str]:
    """The ``lcd.`` tags of ``record``, in a fixed order."""
    out = [f"{PREFIX}o.{record.origin}"]
    if record.desired is not None:
        out.append(f"{PREFIX}d.{record.desired}")
    out.append(f"{PREFIX}g.{record.generation}")
    if record.protected:
        out.append(f"{PREFIX}p")
    if record.fingerprint:
        out.append(f"{PREFIX}f.{record.fingerprint}")
    # Ranked (0: newest): Proxmox sorts tags as it writes them (pve-guest-common
    # ``get_unique_tags``, unless the datacenter's tag-style ordering is ``config``).
    out.extend(f"{PREFIX}k.{rank}.{k}" for rank, k in enumerate(record.last_keys))
    return out


def encode(record: OwnershipRecord | None, existing: str | None = None) -> str:
    """The new ``tags`` value: the guest's own tags kept, its ``lcd.`` tags (in any case)
    replaced by ``record``'s (``None``: removed). Tags are joined with ``;`` as Proxmox
    writes them. Each of ``record``'s tags is one Proxmox stores unchanged (valid, lower
    case), else ValueError: a record must read back as written."""
    own = [t for t in split_tags(existing) if not is_record_tag(t)]
    mine = record_tags(record) if record is not None else []
    bad = [t for t in mine if unique_tags([t]) != [t] or not is_tag(t)]
    if bad:
        raise ValueError(f"not valid Proxmox tags: {bad}")
    return ";".join(own + mine)


# --- the drift baseline around lifecycled's own tag writes (SPEC §3, §7) ------------------
#
# A tag write changes the guest's config digest, and the digest is what tells config drift.
# The write itself returns no digest (``PUT …/config`` answers null), so the baseline takes
# the VALUES the write leaves (the config it wrote over, with the new ``tags``) and leaves
# ``observed_digest`` unset until a later read learns the digest: the next config read that
# is exactly those values. Any other read — a value or a tag changed by someone else — is
# drift, as before. No read is spent on it: the next op's record read or reconcile's drift
# check reads the config anyway.


def same_config(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two configs hold the same values: every key equal (as text), the ``tags``
    equal as a set (Proxmox sorts and lower-cases them as it writes; no tags = empty)."""
    rest_a = {k: str(v) for k, v in a.items() if k not in ("tags", "digest")}
    rest_b = {k: str(v) for k, v in b.items() if k not in ("tags", "digest")}
    return rest_a == rest_b and _tag_set(a.get("tags")) == _tag_set(b.get("tags"))


def _tag_set(value: Any) -> frozenset[str]:
    return frozenset(unique_tags(str(value) if value is not None else None))


def awaits_digest(guest: GuestRecord) -> bool:
    """Whether the guest's baseline is the values an own tag write left, its digest not yet
    read (``observed_digest`` unset)."""
    return (
        guest.config_digest is not None
        and guest.config_snapshot is not None
        and guest.observed_digest is None
    )


def after_own_write(
    guest: GuestRecord, over_digest: str, over: Mapping[str, Any], tags: str
) -> dict[str, Any]:
    """The guest's columns after lifecycled wrote ``tags`` over the config it read
    (``over_digest``, ``over``). When that read was the baseline — its digest, or exactly what
    an earlier own write left (whose digest it then is) — the baseline becomes the values this
    write leaves, its digest to be learnt (:func:`digest_read`). Otherwise nothing changes: the
    config had changed behind our back, and the next drift check reports it as before."""
    if not guest.managed or guest.config_digest is None or guest.config_snapshot is None:
        return {}
    if over_digest != guest.config_digest and not (
        awaits_digest(guest) and same_config(guest.config_snapshot, over)
    ):
        return {}
    return {
        "config_digest": over_digest,
        "config_snapshot": {**{k: v for k, v in over.items() if k != "digest"}, "tags": tags},
        "observed_digest": None,
    }


def digest_read(guest: GuestRecord, digest: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The digest columns a drift check's config read sets (``observed_digest`` differing
    from ``config_digest`` is drift). A guest awaiting its own write's digest takes the read
    as its baseline only when the values are exactly what that write left; a read with the
    digest the write went over predates it and leaves the baseline waiting."""
    if awaits_digest(guest):
        if digest == guest.config_digest:
            return {}
        assert guest.config_snapshot is not None
        if same_config(guest.config_snapshot, values):
            return {"config_digest": digest, "observed_digest": digest}
    return {"observed_digest": digest}
