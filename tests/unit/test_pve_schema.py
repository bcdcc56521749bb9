"""Proxmox's parameter schema (lifecycled.pve.schema): the shipped copy and JSONSchema's checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lifecycled.pve import schema

_REFERENCE = Path("shared") / "reference" / "pve-api-schema.json"


def _reference_file() -> Path | None:
    """``../shared/reference/pve-api-schema.json`` beside the checkout (or a parent's)."""
    for parent in Path(__file__).resolve().parents:
        candidate = parent / _REFERENCE
        if candidate.is_file():
            return candidate
    return None


def test_shipped_copy_matches_reference() -> None:
    """The compact copy inside the package is exactly what derive() makes of the reference."""
    ref = _reference_file()
    if ref is None:
        pytest.skip("shared/reference/pve-api-schema.json is not beside the checkout")
    derived = schema.derive(json.loads(ref.read_text(encoding="utf-8")))
    shipped = json.loads(
        (Path(schema.__file__).with_name(schema.DATA_FILE)).read_text(encoding="utf-8")
    )
    assert shipped == derived
    assert len(schema.endpoints()) == len(derived["endpoints"])


def test_endpoint_lookup_by_template() -> None:
    """endpoint() finds an endpoint by method and path template; unknown ones raise."""
    ep = schema.endpoint("post", "/nodes/{node}/lxc/{vmid}/status/shutdown")
    assert set(ep.params) == {"node", "vmid", "timeout", "forceStop"}
    assert ep.params["forceStop"].type == "boolean"
    assert schema.endpoint("GET", "/nodes/{node}/tasks").params["limit"].minimum == 0
    with pytest.raises(schema.UnknownEndpoint):
        schema.endpoint("POST", "/nodes/{node}/lxc/{vmid}/status/reset")


def test_match_real_path() -> None:
    """match() maps a real path onto its template and returns the path arguments."""
    found = schema.match("PUT", "/nodes/pve1/lxc/103/resize")
    assert found is not None
    ep, args = found
    assert ep.path == "/nodes/{node}/lxc/{vmid}/resize"
    assert args == {"node": "pve1", "vmid": "103"}
    assert schema.match("PATCH", "/nodes/pve1/lxc/103/resize") is None


@pytest.mark.parametrize("value", ["true", "false", "yes", "on", "no", "off", "2", ""])
def test_booleans_only_one_and_zero(value: str) -> None:
    """§13.7: a boolean is 1 or 0; true/yes/on and anything else fail the type check."""
    ep = schema.endpoint("POST", "/nodes/{node}/qemu/{vmid}/migrate")
    errors = schema.check(ep, {"node": "pve1", "vmid": "100", "target": "pve2", "online": value})
    assert errors == {"online": f"type check ('boolean') failed - got '{value}'"}


def test_check_texts() -> None:
    """Unknown, missing, integer, range, pattern, enum and format errors use JSONSchema's texts."""
    ep = schema.endpoint("PUT", "/nodes/{node}/qemu/{vmid}/resize")
    errors = schema.check(
        ep, {"node": "-x", "vmid": "99", "disk": "scsi99", "size": "1Q", "bogus": "1"}
    )
    assert errors == {
        "node": "invalid format - value does not look like a valid node name",
        "vmid": "value must have a minimum value of 100",
        "disk": errors["disk"],
        "size": "value does not match the regex pattern",
        "bogus": schema.UNDEFINED,
    }
    assert errors["disk"].startswith("value 'scsi99' does not have a value in the enumeration '")
    assert schema.check(ep, {"node": "pve1", "vmid": "100"}) == {
        "disk": schema.MISSING,
        "size": schema.MISSING,
    }
    tasks = schema.endpoint("GET", "/nodes/{node}/tasks")
    assert schema.check(tasks, {"node": "pve1", "limit": "abc"}) == {
        "limit": "type check ('integer') failed - got 'abc'"
    }


def test_indexed_names() -> None:
    """net0 finds net[n]; efidisk has only index 0 (n_range), so efidisk1 is undefined."""
    ep = schema.endpoint("PUT", "/nodes/{node}/qemu/{vmid}/config")
    ok = {"node": "pve1", "vmid": "100", "net3": "virtio,bridge=vmbr0", "efidisk0": "x"}
    assert schema.check(ep, ok) == {}
    assert schema.check(ep, {**ok, "efidisk1": "x"}) == {"efidisk1": schema.UNDEFINED}
