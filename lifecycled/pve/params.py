"""Which params each action takes: Proxmox's own API schema, per endpoint (reference §13).

The schema is :mod:`lifecycled.pve.schema` (a compact copy of pve-docs ``apidata.js``,
kept in step with the shared reference by its test); each parameter is viewed here as a
:data:`ParamSpec` ``(type, max_length, minimum, maximum, enum, index_max)``; ``index_max`` is
set for indexed keys (``net[n]`` is looked up as ``net`` and accepts ``net0`` …
``net<index_max>``).

:func:`param_problems` is the one rule for a submission's params: flat scalars, keys the
action's endpoint takes for the guest's kind (either kind's when the kind is not given), values
of the schema's type, range, enum and length, and text that :mod:`lifecycled.domain.text`
accepts, and a ``tags`` value of Proxmox's ``pve-tag`` format (:mod:`lifecycled.domain.tags`).
Booleans follow :func:`~lifecycled.domain.actions.as_boolean`. A few
lifecycled-level names are translated by :func:`~lifecycled.domain.actions.wire_params`
(``force_stop``, ``with_local_disks``, ``source_vmid``).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from typing import Any

from lifecycled.domain.actions import (
    Action,
    BadParam,
    UnsupportedAction,
    as_boolean,
    spec_for,
)
from lifecycled.domain.op import GuestKind
from lifecycled.domain.tags import split_tags, tag_list_error
from lifecycled.domain.text import INT64_MAX, INT64_MIN, float_problem, shown, text_problem
from lifecycled.pve import schema
from lifecycled.pve.wire import action_endpoint

#: ``(type, max_length, minimum, maximum, enum, index_max)``
ParamSpec = tuple[
    str, int | None, int | float | None, int | float | None, tuple[str, ...] | None, int | None
]

#: Longest value of a string param whose schema sets no maxLength.
MAX_VALUE_LENGTH = 4096
#: Most params one submission may carry.
MAX_PARAMS = 128
#: Params whose value is free text (may hold newlines and tabs).
FREE_TEXT_PARAMS = frozenset({"description"})

_BOOL: ParamSpec = ("boolean", None, None, None, None, None)

#: lifecycled-level params (translated by ``wire_params``), per action and kind.
LIFECYCLED_PARAMS: dict[tuple[GuestKind, Action], dict[str, ParamSpec]] = {
    (GuestKind.QEMU, Action.SHUTDOWN): {"force_stop": _BOOL},
    (GuestKind.LXC, Action.SHUTDOWN): {"force_stop": _BOOL},
    (GuestKind.QEMU, Action.MIGRATE): {"with_local_disks": _BOOL},
    (GuestKind.QEMU, Action.CLONE): {"source_vmid": ("integer", None, 100, 999999999, None, None)},
    (GuestKind.LXC, Action.CLONE): {"source_vmid": ("integer", None, 100, 999999999, None, None)},
}

#: Params lifecycled sets itself (from the submission's vmid), never taken from a client.
_SET_BY_LIFECYCLED = {Action.CREATE: frozenset({"vmid"}), Action.CLONE: frozenset({"newid"})}

_INDEXED = re.compile(r"(?P<base>[a-z]+)(?P<index>0|[1-9][0-9]{0,2})")
MAX_KEY_LENGTH = 64


#: Indexed keys (``net[n]``) without an index range in the schema: Proxmox's largest (mp, unused).
DEFAULT_INDEX_MAX = 255


def _spec(param: schema.Param) -> ParamSpec:
    index_max = None
    if param.indexed:
        index_max = param.n_range[1] if param.n_range is not None else DEFAULT_INDEX_MAX
    return (
        param.type,
        param.max_length,
        param.minimum,
        param.maximum,
        param.enum,
        index_max,
    )


@functools.cache
def _endpoint_params(kind: GuestKind, action: Action) -> dict[str, ParamSpec]:
    spec = spec_for(kind, action)
    endpoint = action_endpoint(spec)
    table: dict[str, ParamSpec] = {}
    for name, param in endpoint.params.items():
        if f"{{{name}}}" in endpoint.path:
            continue  # a path parameter (node, vmid), filled in by lifecycled
        if name in _SET_BY_LIFECYCLED.get(action, frozenset()):
            continue
        table[name.removesuffix("[n]")] = _spec(param)
    table.update(LIFECYCLED_PARAMS.get((kind, action), {}))
    return table


def params_for(kind: GuestKind, action: Action) -> dict[str, ParamSpec]:
    """Every param a submission of ``action`` may carry for a guest of ``kind``."""
    return dict(_endpoint_params(kind, action))


def lookup(table: Mapping[str, ParamSpec], key: str) -> ParamSpec | None:
    """The spec of ``key`` in ``table`` (``net3`` finds ``net``), or ``None``."""
    spec = table.get(key)
    if spec is not None and spec[5] is None:
        return spec
    m = _INDEXED.fullmatch(key)
    if m is None:
        return None
    spec = table.get(m["base"])
    if spec is None or spec[5] is None or int(m["index"]) > spec[5]:
        return None
    return spec


def _tables(kind: GuestKind | None, action: Action) -> list[dict[str, ParamSpec]]:
    kinds = list(GuestKind) if kind is None else [kind]
    tables = []
    for k in kinds:
        try:
            tables.append(params_for(k, action))
        except UnsupportedAction:
            continue  # e.g. reset for lxc: the other kind decides (or submit refuses the action)
    return tables


def allowed_params(kind: GuestKind | None, action: Action) -> dict[str, tuple[ParamSpec, ...]]:
    """Every param name ``action`` takes for ``kind`` (for either kind when ``None``), with the
    spec of each kind that takes it; indexed names by their base (``net``)."""
    tables = _tables(kind, action)
    names = set().union(*tables)
    return {name: tuple(table[name] for table in tables if name in table) for name in sorted(names)}


def param_problems(
    kind: GuestKind | None, action: Action, params: Mapping[str, Any]
) -> dict[str, str]:
    """Per-param problems of a submission's params (empty when they are acceptable).

    Without a kind, a key and value either kind takes pass here; submit checks the params
    again against the kind it reads from Proxmox (``unsupported_params``).
    """
    if len(params) > MAX_PARAMS:
        return {"params": f"at most {MAX_PARAMS} parameters"}
    tables = _tables(kind, action)
    problems: dict[str, str] = {}
    for key, value in params.items():
        field = f"params.{shown(key)}"
        problem = text_problem(key, max_length=MAX_KEY_LENGTH)
        if problem is not None:
            problems[field] = f"not a valid parameter name: {problem}"
            continue
        specs = [lookup(table, key) for table in tables]
        found = [s for s in specs if s is not None]
        if not found:
            problems[field] = f"not a parameter of {action}" + (
                f" for {kind} guests" if kind is not None else ""
            )
            continue
        # Without a kind, a value one kind takes is enough here; submit checks the params
        # again against the kind it reads from Proxmox.
        found_problems = [
            value_problem(value, spec, free_text=key in FREE_TEXT_PARAMS) for spec in found
        ]
        if all(p is not None for p in found_problems):
            problems[field] = str(found_problems[0])
        elif key == "tags" and isinstance(value, str) and tag_list_error(value) is not None:
            problems[field] = _tags_problem(value)
    return problems


def _tags_problem(value: str) -> str:
    """Proxmox's refusal of a ``tags`` value (``pve-tag-list``), naming the tags it refuses
    (Proxmox would answer 400 at dispatch)."""
    bad = [shown(t) for t in split_tags(value) if tag_list_error(t) is not None]
    return (
        f"{tag_list_error(value)}: {', '.join(bad)} (a tag is letters, digits and _ + . -, "
        "not starting with + . -; tags are separated by ; , or spaces)"
    )[:300]


def value_problem(value: Any, spec: ParamSpec, *, free_text: bool = False) -> str | None:
    """Why ``value`` does not fit ``spec``, or ``None``.

    JSON types, as the OpenAPI document says: a boolean is ``true``/``false``/``0``/``1``; an
    integer or number is a JSON number in range; a string may also be given as a number
    (``"memory": 512``) unless the schema lists its values.
    """
    typ, max_length, minimum, maximum, enum, _ = spec
    if isinstance(value, dict | list) or value is None:
        return "must be a string, number or boolean (params are flat)"
    if typ == "boolean":
        if isinstance(value, str) and text_problem(value, max_length=MAX_KEY_LENGTH):
            return "must be a boolean (true/false, 1/0)"
        try:
            as_boolean("", value)
        except BadParam:
            return "must be a boolean (true/false, 1/0)"
        return None
    if isinstance(value, bool):
        return f"must be a {typ}, not a boolean"
    if typ in ("integer", "number"):
        return _number_problem(value, typ, minimum, maximum)
    if not isinstance(value, str):
        if enum is not None:
            return f"one of {', '.join(enum)}"
        return _number_problem(value, "number", None, None)
    problem = text_problem(value, max_length=max_length or MAX_VALUE_LENGTH, free_text=free_text)
    if problem is not None:
        return problem
    if enum is not None and value not in enum:
        return f"one of {', '.join(enum)}"
    return None


def _number_problem(
    value: Any, typ: str, minimum: float | None, maximum: float | None
) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return float_problem(value)
    if typ == "integer" and not (
        isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    ):
        return "must be an integer"
    if not isinstance(value, int | float):
        return f"must be a {typ}"
    low = max(INT64_MIN, minimum) if minimum is not None else INT64_MIN
    high = min(INT64_MAX, maximum) if maximum is not None else INT64_MAX
    if not low <= value <= high:
        return f"must be from {low} to {high}"
    return None
