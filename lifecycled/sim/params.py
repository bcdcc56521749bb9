"""Request parameter helpers with pve-common ``JSONSchema.pm``'s wording (reference §2.3).

Every endpoint Proxmox's schema knows is validated against it (``lifecycled.pve.schema``) by
:func:`lifecycled.sim.api.check_params` before its handler runs; :func:`check` covers the few
simulator endpoints outside that schema. Handlers add what the schema cannot say: root-only
options (:func:`root_only`) and cross-parameter rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from lifecycled.sim.errors import ROOT_ONLY, param_error

_INT_RE = re.compile(r"^[+-]?\d+$")
_NUM_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
_SIZE_RE = re.compile(r"^\+?\d+(\.\d+)?[KMGT]?$")
_NODE_RE = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?$")

MISSING = "property is missing and it is not optional"
UNDEFINED = "property is not defined in schema and the schema does not allow additional properties"

#: Parameter types: bool, int, number, string, size, node, vmid, upid-ish strings.
Schema = Mapping[str, str]


def _type_error(kind: str, value: Any) -> str | None:
    text = str(value)
    if kind == "bool":
        if text not in ("0", "1"):  # JSONSchema::check_type: 1 and 0 only (§13.7)
            return f"type check ('boolean') failed - got '{text}'"
    elif kind in ("int", "vmid"):
        if not _INT_RE.fullmatch(text):
            return f"type check ('integer') failed - got '{text}'"
        if kind == "vmid":
            number = int(text)
            if number < 100:
                return "value must have a minimum value of 100"
            if number > 999_999_999:
                return "value must have a maximum value of 999999999"
    elif kind == "number" and not _NUM_RE.fullmatch(text):
        return f"type check ('number') failed - got '{text}'"
    elif kind == "size" and not _SIZE_RE.fullmatch(text):
        return "value does not match the regex pattern"
    elif kind == "node" and not _NODE_RE.fullmatch(text):
        return "invalid format - value does not look like a valid node name"
    return None


def check(
    params: Mapping[str, Any],
    schema: Schema,
    *,
    required: Iterable[str] = (),
    root_only: Iterable[str] = (),
    is_root: bool = False,
    extra_ok: bool = False,
) -> None:
    """Validate ``params`` against ``schema``; raise 400 with every problem found."""
    errors: dict[str, str] = {}
    for key in required:
        if key not in params or params[key] in ("", None):
            errors[key] = MISSING
    for key, value in params.items():
        kind = schema.get(key)
        if kind is None:
            if not extra_ok:
                errors[key] = UNDEFINED
            continue
        problem = _type_error(kind, value)
        if problem is not None:
            errors[key] = problem
    if not is_root:
        errors.update({key: ROOT_ONLY for key in root_only if truthy(params.get(key))})
    if errors:
        raise param_error(errors)


def truthy(value: Any) -> bool:
    """Perl truthiness of a parameter: absent, ``""`` and ``"0"`` are false."""
    return value is not None and str(value) not in ("", "0")


def root_only(params: Mapping[str, Any], names: Iterable[str], *, is_root: bool) -> None:
    """``Only root may use this option.`` for each of ``names`` given a *truthy* value by
    anyone but ``root@pam`` (``skiplock=0`` passes, §13.7)."""
    if is_root:
        return
    errors = {key: ROOT_ONLY for key in names if truthy(params.get(key))}
    if errors:
        raise param_error(errors)


def flag(params: Mapping[str, Any], key: str) -> bool:
    """A boolean parameter (absent = false); the schema has already refused all but 1/0."""
    return truthy(params.get(key))


def integer(params: Mapping[str, Any], key: str, default: int | None = None) -> int | None:
    value = params.get(key)
    if value is None or value == "":
        return default
    return int(str(value))


def as_list(value: Any) -> list[str]:
    """A list parameter: a real list, or a comma/space/semicolon separated string."""
    if value is None:
        return []
    items = value if isinstance(value, list) else re.split(r"[,;\s]+", str(value))
    return [str(v).strip() for v in items if str(v).strip()]
