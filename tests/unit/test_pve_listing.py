"""A node's guest listing decoded item by item (``wire.listed_items``): the same items a full
decode gives for the batch's guests, or ``None`` (decode it all) when the body's shape is
not proven around each of them."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from lifecycled.pve import wire


def _item(vmid: int, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "vmid": vmid,
        "status": "running" if vmid % 2 else "stopped",
        "name": f"vm-{vmid}",
        "cpu": 0.0123,
        "cpus": 2,
        "maxmem": 2147483648,
        "mem": 715827882,
        "uptime": 1234,
        "tags": "lcd.o-native;lcd.g-3",
    }
    out.update(extra)
    return out


def _body(items: list[Any], *, compact: bool = True) -> bytes:
    """Compact JSON, as pveproxy writes it (else Python's default separators: the sim's)."""
    separators = (",", ":") if compact else (", ", ": ")
    return json.dumps({"data": items}, separators=separators).encode()


def _full(body: bytes, vmids: set[int]) -> list[Any]:
    """What the whole body's decode holds for ``vmids``, in listing order."""
    return [i for i in json.loads(body)["data"] if i.get("vmid") in vmids]


def test_the_members_items_are_those_of_the_full_decode() -> None:
    """A listing of 300 guests (either separators): the batch's items, in listing order,
    equal the full decode's."""
    items = [_item(v) for v in range(100, 400)]
    items[5]["lock"] = "backup"
    many = set(range(100, 400, 7))
    assert len(many) > wire.OWN_PATTERN_MAX  # a big batch takes the any-vmid pattern
    for body in (_body(items), _body(items, compact=False)):
        for members in ({100}, {399}, {105, 250, 130}, many):
            assert wire.listed_items(body, members) == _full(body, members)


def test_a_member_whose_vmid_begins_another_guests_finds_only_its_own_item() -> None:
    """Members 12 and 1000 among guests 1, 120, 123, 10001 and 100: exactly their items,
    not those of a guest whose vmid starts with theirs."""
    items = [_item(v) for v in (1, 120, 12, 123, 10001, 1000, 100)]
    for body in (_body(items), _body(items, compact=False)):
        assert wire.listed_items(body, {12, 1000}) == _full(body, {12, 1000})
        assert [i["vmid"] for i in wire.listed_items(body, {12, 1000}) or []] == [12, 1000]


@pytest.mark.parametrize(
    ("items", "members"),
    [
        ([_item(100, name="a\\b"), _item(101)], {101}),  # a backslash anywhere
        ([_item(100, name="x{"), _item(101)], {100}),  # a brace in the member's item
        ([_item(100, name="x}"), _item(101)], {100}),
        ([_item(100, tags="[a]"), _item(101)], {101}),  # a bracket anywhere
        ([_item(100, ha={"managed": 1})], {100}),  # a nested object
        ([_item(100), _item(100, status="stopped")], {100}),  # the same vmid twice
        ([_item(101)], {100, 101}),  # a member not listed
        ([{**_item(100), "vmid": "100"}], {100}),  # a vmid written as text
    ],
)
def test_what_cannot_be_proven_is_decoded_whole(items: list[Any], members: set[int]) -> None:
    """Backslashes, braces or brackets in strings, nesting, a repeated or missing member, a
    vmid as text: ``None``, so the caller decodes the whole body."""
    assert wire.listed_items(_body(items), members) is None


@pytest.mark.parametrize(
    "body",
    [
        b'{"data":\t[{"vmid":100,"status":"running"}]}',  # other whitespace
        b'{"data":[ {"vmid":100,"status":"running"}]}',
        b'{"data":[{"vmid":100,"status":"running"}',  # truncated
        b'{"data":[{"vmid":100,"status":"running"}]}' + b"\x00garbled",
        b'{"data":[{"vmid":100,"status":"running"},{"vmid":101,"name":"a"b"}]} ',
        b'{"data":[{"vmid":100,"name":"a,{","vmid":101}]}',
        b'{"data":[{"name":"{","vmid":100}]}',
        b'{"data":[1,{"vmid":100},{"vmid":100}]}',
    ],
)
def test_odd_bodies_are_decoded_whole(body: bytes) -> None:
    """Whitespace, truncation, trailing bytes, a key or brace inside a string: ``None``."""
    assert wire.listed_items(body, {100}) is None


_ODD = ["{", "}", "[", "]", '"', "\\", ",", ":", '"vmid":101,', "é", " "]


@pytest.mark.parametrize("own_pattern_max", [wire.OWN_PATTERN_MAX, 0])
def test_any_listing_decodes_as_the_full_decode_or_not_at_all(
    monkeypatch: pytest.MonkeyPatch, own_pattern_max: int
) -> None:
    """2,000 random listings with odd characters in names and tags, odd key orders and odd
    members: never an item the full decode would not give for the batch (found with the
    batch's own vmid pattern, and with the any-vmid pattern of big batches)."""
    monkeypatch.setattr(wire, "OWN_PATTERN_MAX", own_pattern_max)
    rng = random.Random(15)
    fast = 0
    for _ in range(2_000):
        items: list[Any] = []
        for vmid in rng.sample(range(100, 140), rng.randint(1, 12)):
            item = _item(vmid)
            if rng.random() < 0.15:
                item["name"] = "n" + "".join(rng.choice(_ODD) for _ in range(rng.randint(1, 3)))
            if rng.random() < 0.05:
                item["tags"] = rng.choice(_ODD)
            if rng.random() < 0.3:
                item = dict(reversed(list(item.items())))
            items.append(item)
        listed = [i["vmid"] for i in items]
        members = set(rng.sample(listed, min(len(listed), rng.randint(1, 4))))
        if rng.random() < 0.1:
            members.add(rng.randrange(100, 140))
        body = _body(items, compact=rng.random() < 0.5)
        got = wire.listed_items(body, members)
        if got is not None:
            fast += 1
            assert got == _full(body, members)
    assert fast > 100  # the fast path is taken for plain listings
