"""Proxmox's rules for a guest's ``tags`` — pure.

* A tag matches pve-common's ``pve-tag`` format (``PVE::JSONSchema``: ``$PVE_TAG_RE``, matched
  case-insensitively by ``pve_verify_tag``); ``tags`` is a ``pve-tag-list``, split as
  ``PVE::Tools::split_list`` splits (``;``, ``,`` and white space). A value with any other tag
  is refused by the schema check before the handler runs: 400 ``Parameter verification
  failed.``, ``tags: invalid format - invalid characters in tag``.
* Every config write that sets ``tags`` stores ``get_unique_tags`` of the value
  (pve-guest-common ``PVE::GuestHelpers``): with the datacenter's default ``tag-style``
  (``ordering=alphabetical``, ``case-sensitive=0``, pve-cluster ``DataCenterConfig.pm``) the
  tags are lower-cased, sorted and each kept once, joined with ``;``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: pve-common ``$PVE_TAG_RE`` (one tag; Proxmox matches it case-insensitively).
TAG_RE = re.compile(r"[a-z0-9_][a-z0-9_\-+.]*", re.IGNORECASE)
#: ``PVE::Tools::split_list``: ``;``, ``,`` and white space separate list items.
_SEPARATORS = re.compile(r"[;,\s]+")

#: The datacenter ``tag-style`` ``ordering`` values (``alphabetical`` is the default).
ORDERINGS = ("alphabetical", "config")

INVALID = "invalid format - invalid characters in tag"

#: Every tag of lifecycled's ownership record starts with this (:mod:`~lifecycled.domain.ownership`).
RECORD_PREFIX = "lcd."


def is_record_tag(tag: str) -> bool:
    """Whether ``tag`` is one of the ownership record's (in any case: Proxmox does not tell
    ``LCD.`` from ``lcd.``, and stores it lower-cased)."""
    return tag.lower().startswith(RECORD_PREFIX)


def client_tags(tags: str | Iterable[str] | None) -> frozenset[str]:
    """The guest's own tags in a ``tags`` value, as Proxmox stores them (lower-cased, each
    once; the datacenter's ordering aside), without the record's: what a client's ``tags``
    write is compared by."""
    return frozenset(t for t in unique_tags(tags) if not is_record_tag(t))


def split_tags(text: str | None) -> list[str]:
    """The tags of a ``tags`` value."""
    return [t for t in _SEPARATORS.split(text or "") if t]


def is_tag(text: str) -> bool:
    """Whether ``text`` is one tag Proxmox accepts (``pve_verify_tag``)."""
    return TAG_RE.fullmatch(text) is not None


def tag_list_error(text: str) -> str | None:
    """The schema's error text for a ``pve-tag-list`` value, or None when every tag is valid
    (an empty list is valid)."""
    return None if all(is_tag(t) for t in split_tags(text)) else INVALID


def unique_tags(
    tags: str | Iterable[str] | None,
    *,
    ordering: str = "alphabetical",
    case_sensitive: bool = False,
) -> list[str]:
    """``get_unique_tags``: the tags Proxmox stores for a write of ``tags``.

    Not case-sensitive (the default): every tag lower-cased, duplicates (in any case) kept
    once. ``ordering=alphabetical`` (the default): sorted (by the lower-cased text unless
    case-sensitive; Perl ``cmp`` is code-point order, as Python's); ``config``: in the order
    given, the first of each kept.
    """
    items = split_tags(tags) if isinstance(tags, str) or tags is None else list(tags)
    if ordering != "config":
        items = sorted(items, key=None if case_sensitive else str.lower)
    seen: set[str] = set()
    out: list[str] = []
    for tag in items:
        kept = tag if case_sensitive else tag.lower()
        if kept not in seen:
            seen.add(kept)
            out.append(kept)
    return out


def stored_tags(
    tags: str | Iterable[str] | None,
    *,
    ordering: str = "alphabetical",
    case_sensitive: bool = False,
) -> str:
    """The ``tags`` value Proxmox stores (``get_unique_tags`` joined with ``;``)."""
    return ";".join(unique_tags(tags, ordering=ordering, case_sensitive=case_sensitive))
