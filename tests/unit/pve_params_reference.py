"""Derives :data:`lifecycled.domain.pve_params.ENDPOINT_PARAMS` from Proxmox's API schema
(pve-docs ``apidata.js`` as JSON, the project's shared reference ``pve-api-schema.json``)."""

from __future__ import annotations

from typing import Any

from lifecycled.domain.actions import all_specs

#: Indexed keys (``net[n]``) without an ``n_range`` in the schema: Proxmox's largest (mp, unused).
DEFAULT_INDEX_MAX = 255


def _number(value: Any) -> int | float | None:
    if value is None:
        return None
    if isinstance(value, str):
        return float(value) if "." in value else int(value)
    return value  # type: ignore[no-any-return]


def derive_table(schema: dict[str, Any]) -> dict[str, dict[str, tuple[Any, ...]]]:
    """``"METHOD path"`` → param name → ``(type, max_length, minimum, maximum, enum, index_max)``
    for every endpoint the action catalogue calls, path parameters left out."""
    wanted = {f"{s.method} /nodes/{{node}}{s.path}" for s in all_specs()}
    table: dict[str, dict[str, tuple[Any, ...]]] = {}
    for endpoint in schema["endpoints"]:
        key = f"{endpoint['method']} {endpoint['path']}"
        if key not in wanted:
            continue
        params: dict[str, tuple[Any, ...]] = {}
        for name, spec in sorted(endpoint.get("parameters", {}).items()):
            if f"{{{name}}}" in endpoint["path"]:
                continue  # a path parameter (node, vmid), filled in by lifecycled
            index_max = None
            if name.endswith("[n]"):
                name = name[:-3]
                index_max = spec.get("n_range", [0, DEFAULT_INDEX_MAX])[1]
            enum = tuple(spec["enum"]) if "enum" in spec else None
            params[name] = (
                spec["type"],
                spec.get("maxLength"),
                _number(spec.get("minimum")),
                _number(spec.get("maximum")),
                enum,
                index_max,
            )
        table[key] = params
    return dict(sorted(table.items()))
