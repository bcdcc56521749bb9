"""The journal's request and result records (frozen, keyword-only)."""

from __future__ import annotations

from typing import Any

import attrs

from lifecycled.domain.op import GuestRef, Op, Origin


@attrs.frozen(kw_only=True)
class SubmitRequest:
    """A new op as a client asks for it."""

    #: ``None``: the journal generates a key (uuid4 hex) and no deduplication happens.
    idempotency_key: str | None
    action: str
    guest: GuestRef
    params: dict[str, Any]
    origin: Origin
    #: Who submitted it (``api:<token-name>``, ``cli``, ``reconcile``); kept with the op.
    actor: str = "api"


@attrs.frozen(kw_only=True)
class SubmitResult:
    """What a submission did: a new op, a deduplicated one, or a re-armed one."""

    op: Op
    deduplicated: bool
    rearmed: bool


@attrs.frozen(kw_only=True)
class OpPage:
    """One page of a listing, newest first; pass ``next_cursor`` to get the next page."""

    items: list[Op]
    next_cursor: int | None
