"""An op record's params cannot change (records are shared: the journal's writer remembers
the ones it returns), yet read like the dict they were built from."""

from __future__ import annotations

import copy
import json
import pickle
from typing import Any

import attrs
import pytest

from lifecycled.domain.op import FrozenList, FrozenParams, GuestKind, GuestRef, Op

GUEST = GuestRef(node="pve1", kind=GuestKind.QEMU, vmid=101)
PARAMS: dict[str, Any] = {"target": "pve2", "a": [1, {"y": 1}], "b": {"c": [2]}}


def op_with(params: dict[str, Any]) -> Op:
    return Op(
        id=1,
        idempotency_key="k",
        action="migrate",
        guest=GUEST,
        params=params,
        created_at=0,
        updated_at=0,
    )


def test_params_read_as_the_dict_they_were_built_from() -> None:
    """Equal to the plain dict, the same JSON, dict() gives a plain mutable copy."""
    op = op_with(PARAMS)
    assert op.params == PARAMS
    assert json.dumps(op.params, sort_keys=True) == json.dumps(PARAMS, sort_keys=True)
    plain = dict(op.params)
    plain["target"] = "pve3"
    assert op.params["target"] == "pve2"


def test_the_callers_dict_is_copied_and_its_later_edits_do_not_reach_the_record() -> None:
    """The record keeps what it was given, whatever the caller does to its dict after."""
    given: dict[str, Any] = {"a": [1], "b": {"c": 1}}
    op = op_with(given)
    given["a"].append(2)
    given["b"]["c"] = 9
    given["new"] = 1
    assert op.params == {"a": [1], "b": {"c": 1}}


@pytest.mark.parametrize(
    "edit",
    [
        lambda p: p.__setitem__("target", "x"),
        lambda p: p.__delitem__("target"),
        lambda p: p.update(x=1),
        lambda p: p.setdefault("x", 1),
        lambda p: p.pop("target"),
        lambda p: p.popitem(),
        lambda p: p.clear(),
        lambda p: p.__ior__({"x": 1}),
        lambda p: p["a"].append(3),
        lambda p: p["a"].__setitem__(0, 9),
        lambda p: p["a"].extend([3]),
        lambda p: p["a"].sort(),
        lambda p: p["a"][1].__setitem__("y", 2),
        lambda p: p["b"]["c"].insert(0, 1),
    ],
)
def test_every_edit_of_the_params_or_a_nested_value_is_refused(edit: Any) -> None:
    """Each mutating call raises TypeError and leaves the params as they were."""
    op = op_with(PARAMS)
    with pytest.raises(TypeError):
        edit(op.params)
    assert op.params == PARAMS


def test_records_built_from_a_record_share_its_params_without_copying() -> None:
    """A transition's record (attrs.evolve) keeps the same frozen params object."""
    op = op_with(PARAMS)
    assert isinstance(op.params, FrozenParams) and isinstance(op.params["a"], FrozenList)
    assert attrs.evolve(op, attempts=2).params is op.params


def test_frozen_params_copy_deepcopy_and_pickle() -> None:
    """copy and deepcopy give the same (immutable) object; pickle round-trips equal."""
    params = op_with(PARAMS).params
    assert copy.copy(params) is params and copy.deepcopy(params) is params
    back = pickle.loads(pickle.dumps(params))  # noqa: S301 - our own bytes
    assert back == PARAMS and type(back) is FrozenParams
    assert type(back["a"]) is FrozenList
