"""Proxmox's own parameter schema of the endpoints lifecycled uses, and JSONSchema's checks.

The data is a compact copy (``pve-api-params.json`` beside this module) derived from
``shared/reference/pve-api-schema.json`` (pve-docs ``apidata.js``) by :func:`derive`; a test
keeps the two in step. Regenerate with ``python -m lifecycled.pve.schema REFERENCE.json``.

:func:`endpoint` answers the parameter schema of one endpoint (method + path template, e.g.
``POST /nodes/{node}/qemu/{vmid}/status/start``); :func:`match` finds the endpoint of a real
path; :func:`check` validates parameters as pve-common ``JSONSchema.pm`` does, with its
wording (reference §2.3, §13.7): booleans are ``1``/``0`` only, unknown parameters are
"not defined in schema". The simulator validates every request with it; the HTTP API and the
client use it to know each parameter's type.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import attrs

from lifecycled.domain.tags import tag_list_error

DATA_FILE = "pve-api-params.json"

MISSING = "property is missing and it is not optional"
UNDEFINED = "property is not defined in schema and the schema does not allow additional properties"

#: The per-parameter keys kept from the reference (documentation-only keys are dropped).
_KEPT = ("type", "enum", "minimum", "maximum", "maxLength", "minLength", "pattern", "format")

_INT_RE = re.compile(r"^[+-]?\d+$")
_NUM_RE = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")
_INDEXED_RE = re.compile(r"^(?P<base>[A-Za-z][A-Za-z_-]*?)(?P<n>\d+)$")
_NODE_RE = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?$")
_CONFIGID_RE = re.compile(r"^[a-z][a-z0-9_-]+$", re.IGNORECASE)


@attrs.frozen(kw_only=True)
class Param:
    """One parameter of one endpoint, as Proxmox's schema declares it."""

    name: str
    type: str
    optional: bool = False
    enum: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    max_length: int | None = None
    min_length: int | None = None
    pattern: str | None = None
    format: str | None = None
    #: For indexed names (``net[n]``): the allowed index range, None when any index is.
    n_range: tuple[int, int] | None = None

    @property
    def indexed(self) -> bool:
        return self.name.endswith("[n]")

    @classmethod
    def from_compact(cls, name: str, raw: Mapping[str, Any]) -> Param:
        n_range = raw.get("n_range")
        enum = raw.get("enum")
        return cls(
            name=name,
            type=str(raw["type"]),
            optional=bool(raw.get("optional")),
            enum=tuple(str(v) for v in enum) if enum is not None else None,
            minimum=raw.get("minimum"),
            maximum=raw.get("maximum"),
            max_length=raw.get("maxLength"),
            min_length=raw.get("minLength"),
            pattern=raw.get("pattern"),
            format=raw.get("format"),
            n_range=(int(n_range[0]), int(n_range[1])) if n_range else None,
        )


@attrs.frozen(kw_only=True)
class Endpoint:
    """The parameter schema of one endpoint."""

    method: str
    path: str
    params: Mapping[str, Param]
    additional: bool = False

    @property
    def key(self) -> str:
        return f"{self.method} {self.path}"

    def param(self, name: str) -> Param | None:
        """The schema of ``name``; ``net0`` finds ``net[n]`` (within its index range)."""
        found = self.params.get(name)
        if found is not None:
            return found
        m = _INDEXED_RE.fullmatch(name)
        if m is None:
            return None
        found = self.params.get(m["base"] + "[n]")
        if found is None:
            return None
        index = int(m["n"])
        if found.n_range is not None and not found.n_range[0] <= index <= found.n_range[1]:
            return None
        return found

    def booleans(self) -> frozenset[str]:
        """Names of the boolean parameters (indexed names are never boolean here)."""
        return frozenset(n for n, p in self.params.items() if p.type == "boolean")


class UnknownEndpoint(KeyError):
    """No schema for this method and path template."""


# --- the data ------------------------------------------------------------------------------


def _perl_regex(text: str) -> str:
    """A pve-common pattern in Python syntax (``(?^:…)`` is Perl's default-flags group)."""
    return text.replace("(?^:", "(?:")


def _number(value: Any) -> int | float:
    number = float(value)
    return int(number) if number.is_integer() else number


def derive(reference: Mapping[str, Any]) -> dict[str, Any]:
    """The compact copy of the reference schema file (what ships beside this module)."""
    endpoints: dict[str, Any] = {}
    for raw in reference["endpoints"]:
        params: dict[str, Any] = {}
        for name, spec in sorted(raw.get("parameters", {}).items()):
            entry: dict[str, Any] = {}
            for key in _KEPT:
                if key not in spec:
                    continue
                value = spec[key]
                if key == "format" and (not isinstance(value, str) or value.startswith("(")):
                    continue  # a property-string sub-schema: checked only as a string
                if key in ("minimum", "maximum", "maxLength", "minLength"):
                    value = _number(value)
                elif key == "pattern":
                    value = _perl_regex(str(value))
                entry[key] = value
            if spec.get("optional"):
                entry["optional"] = True
            if spec.get("n_range") is not None:
                entry["n_range"] = [int(v) for v in spec["n_range"]]
            params[name] = entry
        endpoints[f"{raw['method']} {raw['path']}"] = {
            "additional": bool(raw.get("additionalProperties")),
            "params": params,
        }
    return {"source": reference.get("source"), "endpoints": dict(sorted(endpoints.items()))}


@functools.cache
def _loaded() -> dict[str, Endpoint]:
    text = resources.files(__package__).joinpath(DATA_FILE).read_text(encoding="utf-8")
    data = json.loads(text)
    out: dict[str, Endpoint] = {}
    for key, raw in data["endpoints"].items():
        method, _, path = key.partition(" ")
        out[key] = Endpoint(
            method=method,
            path=path,
            params={n: Param.from_compact(n, p) for n, p in raw["params"].items()},
            additional=bool(raw["additional"]),
        )
    return out


def endpoints() -> list[Endpoint]:
    """Every endpoint the schema knows, in a stable order."""
    return list(_loaded().values())


def endpoint(method: str, template: str) -> Endpoint:
    """The schema of ``METHOD template`` (``{node}``, ``{vmid}``, ``{upid}``, ``{sid}``)."""
    try:
        return _loaded()[f"{method.upper()} {template}"]
    except KeyError:
        raise UnknownEndpoint(f"{method.upper()} {template}") from None


def config_locks() -> tuple[str, ...]:
    """Every config ``lock`` value either guest kind knows, from the ``lock`` enum of the
    config endpoints (reference §5.5), in a stable order."""
    names: dict[str, None] = {}
    for kind in ("qemu", "lxc"):
        found = match("PUT", f"/nodes/pve1/{kind}/100/config")
        lock = found[0].param("lock") if found is not None else None
        names.update(dict.fromkeys(lock.enum or () if lock is not None else ()))
    return tuple(names)


def match(method: str, path: str) -> tuple[Endpoint, dict[str, str]] | None:
    """The endpoint of a real path below ``/api2/json`` and its path arguments, if any."""
    parts = [p for p in path.split("/") if p]
    for ep in _loaded().values():
        if ep.method != method.upper():
            continue
        tmpl = [p for p in ep.path.split("/") if p]
        if len(tmpl) != len(parts):
            continue
        args: dict[str, str] = {}
        for want, got in zip(tmpl, parts, strict=True):
            if want.startswith("{") and want.endswith("}"):
                args[want[1:-1]] = got
            elif want != got:
                break
        else:
            return ep, args
    return None


# --- checks --------------------------------------------------------------------------------


def _format_error(fmt: str, text: str) -> str | None:
    if fmt == "pve-node" and not _NODE_RE.fullmatch(text):
        return "invalid format - value does not look like a valid node name"
    if fmt == "pve-configid" and not _CONFIGID_RE.fullmatch(text):
        return f"invalid format - invalid configuration ID '{text}'"
    if fmt == "pve-configid-list":
        for item in re.split(r"[,;\s]+", text):
            if item and not _CONFIGID_RE.fullmatch(item):
                return f"invalid format - invalid configuration ID '{item}'"
    if fmt == "pve-tag-list":
        return tag_list_error(text)
    return None


def _plain(value: Any) -> str:
    if isinstance(value, bool):  # JSON true/false decode to JSON::PP::Boolean: "1"/"0"
        return "1" if value else "0"
    return str(value)


def value_error(param: Param, value: Any) -> str | None:
    """``JSONSchema::check_prop`` for one value: its error text, or None."""
    text = _plain(value)
    kind = param.type
    if kind == "boolean":
        if text not in ("0", "1"):  # §13.7: not true/yes/on
            return f"type check ('boolean') failed - got '{text}'"
        return None
    if kind == "integer" and not _INT_RE.fullmatch(text):
        return f"type check ('integer') failed - got '{text}'"
    if kind == "number" and not _NUM_RE.fullmatch(text):
        return f"type check ('number') failed - got '{text}'"
    if kind in ("integer", "number"):
        number = float(text)
        if param.minimum is not None and number < param.minimum:
            return f"value must have a minimum value of {param.minimum}"
        if param.maximum is not None and number > param.maximum:
            return f"value must have a maximum value of {param.maximum}"
        return None
    if param.format is not None:
        problem = _format_error(param.format, text)
        if problem is not None:
            return problem
    if param.max_length is not None and len(text) > param.max_length:
        return f"value may only be {param.max_length} characters long"
    if param.min_length is not None and len(text) < param.min_length:
        return f"value must be at least {param.min_length} characters long"
    if param.pattern is not None and not _fullmatch(param.pattern, text):
        return "value does not match the regex pattern"
    if param.enum is not None and text not in param.enum:
        return f"value '{text}' does not have a value in the enumeration '{', '.join(param.enum)}'"
    return None


@functools.cache
def _compiled(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error:
        return None


def _fullmatch(pattern: str, text: str) -> bool:
    compiled = _compiled(pattern)
    return compiled is None or compiled.fullmatch(text) is not None


def check(ep: Endpoint, params: Mapping[str, Any]) -> dict[str, str]:
    """Every problem of ``params`` (path arguments included) against ``ep``: name → text."""
    errors: dict[str, str] = {}
    for name, param in ep.params.items():
        if not param.optional and not param.indexed and params.get(name) is None:
            errors[name] = MISSING
    for name, value in params.items():
        if value is None:
            continue
        declared = ep.param(name)
        if declared is None:
            if not ep.additional:
                errors[name] = UNDEFINED
            continue
        problem = value_error(declared, value)
        if problem is not None:
            errors[name] = problem
    return errors


def main(argv: list[str]) -> int:
    """``python -m lifecycled.pve.schema REFERENCE.json``: rewrite the shipped copy."""
    if len(argv) != 1:
        print("usage: python -m lifecycled.pve.schema REFERENCE.json", file=sys.stderr)
        return 2
    reference = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    target = Path(__file__).with_name(DATA_FILE)
    target.write_text(json.dumps(derive(reference), indent=1, sort_keys=True) + "\n")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
