"""OpenAPI component schemas of ``/v1/guests`` and ``/v1/audit`` (merged into the document by
:func:`lifecycled.web.openapi.schemas`); they describe exactly what
:func:`lifecycled.domain.guests.guest_to_dict` and :meth:`AuditRecord.to_dict` send."""

from __future__ import annotations

from typing import Any

from lifecycled.audit import Decision
from lifecycled.domain.guests import DesiredState, GuestOrigin, ObservedState
from lifecycled.domain.op import GuestKind
from lifecycled.engine.services import SETTABLE_DESIRED

_TIMESTAMP = {"type": "string", "format": "date-time", "description": "RFC 3339 UTC."}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _enum(values: list[str], *, nullable: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "enum": values}
    return _nullable(schema) if nullable else schema


_GUEST_FIELDS: dict[str, Any] = {
    "vmid": {"type": "integer"},
    "node": {"type": "string"},
    "kind": _enum([str(k) for k in GuestKind]),
    "origin": _enum([str(o) for o in GuestOrigin]),
    "name": {"type": ["string", "null"]},
    "desired_state": _enum([str(d) for d in DesiredState], nullable=True),
    "desired_generation": {"type": "integer", "minimum": 0},
    "observed_state": _enum([str(o) for o in ObservedState], nullable=True),
    "observed_at": _nullable(_TIMESTAMP),
    "lock": {"type": ["string", "null"]},
    "ha_managed": {"type": "boolean"},
    "template": {"type": "boolean"},
    "protected": {"type": "boolean"},
    "fingerprint": {"type": "object", "additionalProperties": {"type": "string"}},
    "config_digest": {"type": ["string", "null"]},
    "observed_digest": {"type": ["string", "null"]},
    "drifted": {"type": "boolean", "description": "Config differs from the snapshot."},
    "resources": _nullable({"type": "object"}),
    "snapshot_at": _nullable(_TIMESTAMP),
    "created_at": _TIMESTAMP,
    "updated_at": _TIMESTAMP,
    "adopted_at": _nullable(_TIMESTAMP),
    "released_at": _nullable(_TIMESTAMP),
    "lost_at": _nullable(_TIMESTAMP),
}

_AUDIT_FIELDS: dict[str, Any] = {
    "id": {"type": "integer", "minimum": 1},
    "at": _TIMESTAMP,
    "actor": {"type": "string", "description": "api:<token-name>, cli, reconcile or janitor."},
    "action": {"type": "string"},
    "decision": _enum([str(d) for d in Decision]),
    "vmid": {"type": ["integer", "null"]},
    "node": {"type": ["string", "null"]},
    "reason": {"type": "string"},
    "snapshot": _nullable({"type": "object"}),
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _page(item: str, cursor: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {
            "items": {"type": "array", "items": _ref(item)},
            "next_cursor": {"type": ["integer", "null"], "description": cursor},
        },
    }


SCHEMAS: dict[str, Any] = {
    "ManagedGuest": {
        "type": "object",
        "required": list(_GUEST_FIELDS),
        "properties": _GUEST_FIELDS,
    },
    "GuestDetail": {
        "allOf": [
            _ref("ManagedGuest"),
            {
                "type": "object",
                "required": ["config_snapshot", "open_ops"],
                "properties": {
                    "config_snapshot": _nullable({"type": "object"}),
                    "open_ops": {"type": "array", "items": {"type": "integer"}},
                },
            },
        ]
    },
    "GuestPage": {
        "allOf": [
            _page("ManagedGuest", "Pass as `cursor` (a vmid) for the next page; null at the end."),
            {
                "type": "object",
                "required": ["state_hash"],
                "properties": {
                    "state_hash": {
                        "type": "string",
                        "description": "Hash of the observed guest set (vmid:observed:lock).",
                    }
                },
            },
        ]
    },
    "ClusterGuest": {
        "type": "object",
        "description": "A guest of the cluster as its Proxmox tags and /cluster/resources show it.",
        "required": ["vmid", "node", "kind", "status", "managed", "served_here"],
        "properties": {
            "vmid": {"type": "integer"},
            "node": {"type": "string"},
            "kind": _enum([str(k) for k in GuestKind]),
            "name": {"type": ["string", "null"]},
            "status": {"type": "string"},
            "lock": {"type": ["string", "null"]},
            "ha_managed": {"type": "boolean"},
            "managed": {"type": "boolean"},
            "origin": _enum([str(o) for o in GuestOrigin], nullable=True),
            "desired_state": _enum([str(d) for d in DesiredState], nullable=True),
            "generation": {"type": ["integer", "null"]},
            "protected": {"type": "boolean"},
            "served_here": {"type": "boolean"},
            "observed_state": _enum([str(o) for o in ObservedState]),
            "drifted": {"type": "boolean"},
        },
    },
    "GuestListing": {
        "anyOf": [
            _ref("GuestPage"),
            {
                "allOf": [
                    _page("ClusterGuest", "Pass as `cursor` for the next page; null at the end."),
                    {
                        "type": "object",
                        "required": ["scope"],
                        "properties": {"scope": {"type": "string", "enum": ["cluster"]}},
                    },
                ]
            },
        ]
    },
    "Ownership": {
        "type": "object",
        "required": ["guest", "changed"],
        "properties": {"guest": _ref("ManagedGuest"), "changed": {"type": "boolean"}},
    },
    "DesiredBody": {
        "type": "object",
        "additionalProperties": False,
        "required": ["state"],
        "properties": {"state": _enum(list(SETTABLE_DESIRED))},
        "example": {"state": "running"},
    },
    "AuditRecord": {"type": "object", "required": list(_AUDIT_FIELDS), "properties": _AUDIT_FIELDS},
    "AuditPage": _page("AuditRecord", "Pass as `cursor` for the next page; null at the end."),
}
