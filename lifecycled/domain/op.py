"""The op record and the small value types around it."""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from typing import Any

import attrs

from lifecycled.domain.actions import Action
from lifecycled.domain.classify import ErrorClass
from lifecycled.domain.kinds import GuestKind
from lifecycled.domain.states import OpState
from lifecycled.domain.upid import Upid, UpidError

__all__ = ["GuestKind", "GuestRef", "HistoryEntry", "Op", "OpError", "Origin", "canonical_json"]


class Origin(enum.StrEnum):
    """Who submitted an op."""

    API = "api"
    CLI = "cli"
    RECONCILE = "reconcile"


@attrs.frozen(kw_only=True, order=True)
class GuestRef:
    """A guest as Proxmox addresses it: node, kind and vmid."""

    node: str
    kind: GuestKind
    vmid: int

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "kind": str(self.kind), "vmid": self.vmid}


@attrs.frozen(kw_only=True)
class OpError:
    """The last error of an op: its class and the Proxmox (or policy) text."""

    error_class: ErrorClass
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"class": str(self.error_class), "message": self.message}


def _parsed_upid(op: Op) -> Upid | None:
    """The op's journaled text as a :class:`Upid`; ``None`` when there is none or it does
    not parse (a row written by hand or by an older version: its text stays in
    :attr:`Op.upid_text`). An op's record is rebuilt on each load and transition; its task
    id is parsed once (:meth:`Upid.parse` keeps what it parsed)."""
    if not op.upid_text:
        return None
    try:
        return Upid.parse(op.upid_text)
    except UpidError:
        return None


def _action(value: str) -> Action:
    # The converter runs on every record built; most callers already pass an Action.
    return value if type(value) is Action else Action(value)


def _refuse(self: object, *args: Any, **kwargs: Any) -> Any:
    raise TypeError("an op's params do not change; copy them first: dict(…) or list(…)")


class _Unchanging:
    """What :class:`FrozenParams` and :class:`FrozenList` share: a copy is the object itself
    (it cannot change), and a pickle rebuilds it from the plain value (``_plain``)."""

    __slots__ = ()
    _plain: type

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self._plain(self),))

    def __copy__(self) -> Any:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return self


class FrozenParams(_Unchanging, dict[str, Any]):
    """An op's params: a ``dict`` for every reader (``json.dumps``, ``dict(…)``, ``.get``,
    ``==``) that refuses to change, nested values included (dicts frozen the same way,
    lists as :class:`FrozenList`). A record is shared — the journal's writer remembers the
    records it returns — so an edit of one caller's params would change what another reads
    and what the journal writes next. Copy to change: ``dict(op.params)``."""

    __slots__ = ()
    _plain = dict
    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _refuse
    __ior__ = _refuse


class FrozenList(_Unchanging, list[Any]):
    """A list inside :class:`FrozenParams`: a ``list`` for every reader, refusing change."""

    __slots__ = ()
    _plain = list
    __setitem__ = __delitem__ = append = extend = insert = pop = remove = clear = _refuse
    sort = reverse = __iadd__ = __imul__ = _refuse


def _frozen(value: Any) -> Any:
    if type(value) is FrozenParams:
        return value
    if isinstance(value, Mapping):
        return FrozenParams({k: _frozen(v) for k, v in value.items()})
    if type(value) is FrozenList:
        return value
    if isinstance(value, list | tuple):
        return FrozenList(_frozen(v) for v in value)
    return value


def _freeze_params(value: Mapping[str, Any]) -> dict[str, Any]:
    # Frozen all the way down, once: a record's params are never copied again.
    frozen: FrozenParams = _frozen(value)
    return frozen


@attrs.frozen(kw_only=True)
class Op:
    """One lifecycle command as the journal holds it."""

    id: int
    idempotency_key: str
    action: Action = attrs.field(converter=_action)
    guest: GuestRef
    params: dict[str, Any] = attrs.field(converter=_freeze_params, factory=dict)
    origin: Origin = Origin.API
    state: OpState = OpState.PENDING
    attempts: int = 0
    next_attempt_at: float | None = None
    #: The task id exactly as journaled (what every face shows); ``None`` before a task.
    upid_text: str | None = None
    exitstatus: str | None = None
    error: OpError | None = None
    created_at: float
    updated_at: float
    finished_at: float | None = None
    #: When the current attempt was claimed: task-list searches look only after it.
    claimed_at: float | None = None
    #: Set when an attempt ended ambiguously: the next attempt searches tasks since then.
    ambiguous_since: float | None = None
    #: Whether a task was ever started for this op (a one-shot op is never dispatched twice).
    dispatched: bool = False
    #: Who submitted it (``api:<token-name>``, ``cli``, ``reconcile``).
    actor: str = "api"
    #: When an operator discarded this dead letter (it then leaves the DLQ listing).
    discarded_at: float | None = None
    #: :attr:`upid_text` parsed, once, when the record is built; ``None`` when the op has no
    #: task or its journaled text is not a valid UPID (then :attr:`upid_text` is set and
    #: :attr:`has_invalid_upid` is true).
    upid: Upid | None = attrs.field(
        init=False, default=attrs.Factory(_parsed_upid, takes_self=True)
    )

    @property
    def has_invalid_upid(self) -> bool:
        """Whether a task id is journaled that does not parse."""
        return bool(self.upid_text) and self.upid is None

    @property
    def params_json(self) -> str:
        """The params as canonical JSON (sorted keys): what idempotency compares."""
        return canonical_json(self.params)


@attrs.frozen(kw_only=True)
class HistoryEntry:
    """One transition of an op, as appended to its history.

    ``upid`` is the text exactly as journaled with that transition, not a parsed
    :class:`Upid`: history is the audit record, shown verbatim, an unparsable UPID included
    (the op's own ``Op.upid`` is the parsed one the engine works with).
    """

    op_id: int
    at: float
    from_state: OpState | None
    to_state: OpState
    reason: str
    attempt: int = 0
    upid: str | None = None


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: stable for hashing and comparison."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
