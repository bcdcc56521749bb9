"""Guest identity rules (issue 10 point 7), pure: which vmid a create may name, what a
re-take changes, and a request's node/kind against the managed guest's row."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from lifecycled.domain.guests import (
    CAPTURED,
    GuestOrigin,
    GuestRecord,
    ObservedState,
    check_placement,
    creation_conflict,
    retake,
)
from lifecycled.domain.op import GuestKind
from lifecycled.errors import ValidationError

FP = {"uuid": "aaaa", "ctime": "100", "name": "web"}


def row(**kw: Any) -> GuestRecord:
    values: dict[str, Any] = {
        "vmid": 101,
        "node": "pve1",
        "kind": GuestKind.QEMU,
        "origin": GuestOrigin.NATIVE,
        "observed_state": ObservedState.RUNNING,
        "fingerprint": FP,
        "name": "web",
        "created_at": 0.0,
        "updated_at": 0.0,
    }
    values.update(kw)
    return GuestRecord(**values)


@pytest.mark.parametrize("origin", list(GuestOrigin))
@pytest.mark.parametrize("observed", [None, *ObservedState])
def test_a_create_may_name_a_vmid_only_when_it_is_free(
    origin: GuestOrigin, observed: ObservedState | None
) -> None:
    """A create may name a vmid only when it is free (gone, or never shown, native)."""
    conflict = creation_conflict(row(origin=origin, observed_state=observed), {"uuid": "new"})
    gone = observed in (ObservedState.MISSING, ObservedState.LOST)
    never_seen_native = observed is None and origin is GuestOrigin.NATIVE
    assert (conflict is None) == (gone or never_seen_native)
    if conflict is not None:
        assert "101" in conflict and str(origin) in conflict


def test_the_same_create_again_and_a_new_vmid_are_free() -> None:
    """No row, or this create's own row (same fingerprint: a re-armed key), is free."""
    assert creation_conflict(None, {"uuid": "new"}) is None
    assert creation_conflict(row(fingerprint={"uuid": "new"}), {"uuid": "new"}) is None
    assert creation_conflict(row(fingerprint={}), {}) is not None  # nothing proves it is ours


def test_retake_of_the_same_guest_changes_nothing() -> None:
    """Same origin, node, kind and fingerprint: no change (the snapshot is kept)."""
    assert retake(row(), row(name="renamed-elsewhere")) == ((), "")


def test_retake_of_a_guest_without_identity_fields_changes_nothing() -> None:
    """Equal empty fingerprints (a CT without hostname) are the same guest: no change."""
    assert retake(row(fingerprint={}), row(fingerprint={})) == ((), "")


def test_retake_refreshes_a_fingerprint_that_names_another_guest() -> None:
    """A recorded fingerprint that does not match the guest: everything is captured anew."""
    columns, why = retake(row(fingerprint={"uuid": "other"}), row())
    assert columns == CAPTURED and "identity refreshed" in why


def test_retake_refreshes_only_the_identity_of_the_same_guest() -> None:
    """A re-take of the same guest refreshes its identity only, never the snapshot."""
    stale = row(node="pve2", fingerprint={"uuid": "aaaa", "name": "web"})
    columns, why = retake(stale, row())
    assert set(columns) == {"node", "fingerprint", "name"}
    assert "config_snapshot" not in columns and why.startswith("identity refreshed")


def test_retake_with_another_origin_captures_everything() -> None:
    """manage of an adopted guest (or the reverse) records the capture anew."""
    columns, why = retake(attrs.evolve(row(), origin=GuestOrigin.ADOPTED), row())
    assert columns == CAPTURED and "adopted → native" in why


def test_placement_agrees_or_is_refused_with_both_values() -> None:
    """Omitted or equal node/kind pass; another node or kind is refused naming both."""
    check_placement(row(), node=None, kind=None)
    check_placement(row(), node="pve1", kind="qemu")
    with pytest.raises(ValidationError) as refused:
        check_placement(row(), node="pve1\n", kind="lxc")
    details = refused.value.details
    assert details["node"] == "guest 101 is on node 'pve1', not 'pve1\\n'"
    assert details["kind"] == "guest 101 is 'qemu', not 'lxc'"
