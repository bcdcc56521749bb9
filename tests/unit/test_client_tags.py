"""A client's ``tags`` beside the ownership record (SPEC §7): refused when they name a record
tag, kept apart from the record at dispatch, compared as Proxmox stores them."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lifecycled.domain.actions import Action, GuestView, spec_for
from lifecycled.domain.guests import DesiredState, GuestOrigin
from lifecycled.domain.op import GuestKind
from lifecycled.domain.ownership import (
    CLIENT_TAGS_PATTERN,
    OwnershipRecord,
    decode,
    encode,
    keep_record,
    reserved_tags,
)
from lifecycled.domain.tags import stored_tags, tag_list_error
from lifecycled.pve.params import param_problems

RECORD = OwnershipRecord(
    origin=GuestOrigin.NATIVE,
    desired=DesiredState.RUNNING,
    generation=3,
    fingerprint="0123456789ab",
    last_keys=("aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"),
)
#: The guest's tags as Proxmox stores them: the operator's and the record's, sorted.
STORED = stored_tags(encode(RECORD, "old"))


def test_a_tags_write_keeps_the_record_and_carries_the_digest_read() -> None:
    """configure tags=Prod;web on a managed guest sends the client's tags plus every lcd. tag
    read, with the config digest read; the record decodes unchanged from what Proxmox stores."""
    sent = keep_record({"tags": "Prod;web", "cores": 2}, STORED, "d1")
    assert sent["digest"] == "d1" and sent["cores"] == 2
    assert decode(stored_tags(sent["tags"])) == RECORD
    assert [t for t in stored_tags(sent["tags"]).split(";") if not t.startswith("lcd.")] == [
        "prod",
        "web",
    ]


def test_deleting_tags_of_a_managed_guest_leaves_the_record_alone() -> None:
    """delete=tags becomes tags=<the lcd. tags>; other deleted keys are still deleted."""
    sent = keep_record({"delete": "tags,balloon"}, STORED, "d1")
    assert sent["delete"] == "balloon" and sent["digest"] == "d1"
    assert decode(sent["tags"]) == RECORD
    assert all(t.startswith("lcd.") for t in sent["tags"].split(";"))
    only = keep_record({"delete": "tags"}, STORED, "d1")
    assert "delete" not in only and decode(only["tags"]) == RECORD


@pytest.mark.parametrize(
    ("params", "tags"),
    [
        ({"tags": "prod"}, "prod;web"),  # an unmanaged guest: as sent
        ({"cores": 2}, STORED),  # tags untouched: as sent, no digest added
        ({"delete": "balloon"}, STORED),
    ],
)
def test_params_that_leave_the_record_alone_are_sent_as_they_are(
    params: dict[str, Any], tags: str
) -> None:
    """Without lcd. tags on the guest, or without a tags change, nothing is added."""
    assert keep_record(params, tags, "d1") == params


def test_a_client_digest_is_kept() -> None:
    """A digest the client sent is its own compare-and-swap: not replaced by the one read."""
    assert keep_record({"tags": "x", "digest": "mine"}, STORED, "d1")["digest"] == "mine"


@pytest.mark.parametrize("kind", list(GuestKind))
def test_a_tags_configure_holds_as_proxmox_stores_it_beside_the_record(kind: GuestKind) -> None:
    """The Check sees tags=Prod;web,Prod as done when Proxmox holds prod;web (sorted,
    lower-cased, once) with the record's lcd. tags; other tags are not done."""
    spec = spec_for(kind, Action.CONFIGURE)
    config = {"tags": stored_tags(keep_record({"tags": "Prod;web,Prod"}, STORED, "d")["tags"])}
    view = GuestView(exists=True, config=config)
    assert spec.holds(view, {"tags": "Prod;web,Prod"})
    assert spec.holds(view, {"tags": "web prod"})
    assert not spec.holds(view, {"tags": "prod"})
    assert not spec.holds(view, {"tags": "prod;web;db"})
    assert not spec.holds(GuestView(exists=True, config={}), {"tags": "prod"})


def test_a_deleted_tags_holds_when_only_the_record_is_left() -> None:
    """delete=tags is done when the guest's only tags are the record's (or none)."""
    spec = spec_for(GuestKind.LXC, Action.CONFIGURE)
    record_only = stored_tags(keep_record({"delete": "tags"}, STORED, "d")["tags"])
    assert spec.holds(GuestView(exists=True, config={"tags": record_only}), {"delete": "tags"})
    assert spec.holds(GuestView(exists=True, config={}), {"delete": "tags"})
    assert not spec.holds(GuestView(exists=True, config={"tags": STORED}), {"delete": "tags"})


@pytest.mark.parametrize("value", ["lcd.o.native", "prod;LCD.K.0.ab", "Lcd.g.9 web", "lcd."])
def test_reserved_tags_name_every_record_tag_in_any_case(value: str) -> None:
    """Every lcd. tag a client sends is named, whatever its case."""
    assert reserved_tags(value) == [
        t for t in re.split(r"[;, ]+", value) if t.lower()[:4] == "lcd."
    ]
    assert reserved_tags(value)


@pytest.mark.parametrize("value", ["bad tag!", "prod;-x", "a,b;c$", "ü"])
def test_a_tags_value_outside_proxmox_format_is_a_param_problem(value: str) -> None:
    """A tag Proxmox would refuse (400 at dispatch) is refused at submission, named."""
    for action in (Action.CONFIGURE, Action.CREATE):
        problem = param_problems(None, action, {"tags": value})["params.tags"]
        assert problem.startswith("invalid format - invalid characters in tag")
    assert param_problems(None, Action.CONFIGURE, {"tags": "prod;web lcd"}) == {}


_TAG_TEXT = st.text(alphabet="lcdLCD.ab_+-; ,!", max_size=20)


@given(_TAG_TEXT)
def test_the_openapi_pattern_admits_only_what_submission_accepts(value: str) -> None:
    """CLIENT_TAGS_PATTERN (the OpenAPI document's) matches a value only when it is of
    Proxmox's format and names no lcd. tag — and every such value of ``;``/``,``/space
    separated tags matches it."""
    accepted = tag_list_error(value) is None and not reserved_tags(value)
    assert (re.fullmatch(CLIENT_TAGS_PATTERN, value) is not None) == accepted
