"""The ownership record in Proxmox tags (SPEC §7) and the cluster's placement rules — pure."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lifecycled.domain.cluster import WrongNode, lost_reporter, missing_nodes, parse_nodes
from lifecycled.domain.guests import (
    DesiredState,
    GuestOrigin,
    GuestRecord,
    ObservedState,
)
from lifecycled.domain.op import GuestKind
from lifecycled.domain.ownership import (
    OwnershipRecord,
    after_own_write,
    decode,
    digest_read,
    encode,
    fingerprint_digest,
    key_digest,
    record_dict,
    same_config,
    view_origin,
)
from lifecycled.domain.reconcile import OrphanKind, ReconcileInput, plan
from lifecycled.domain.tags import is_tag, split_tags, stored_tags, unique_tags

_ORIGINS = st.sampled_from([GuestOrigin.NATIVE, GuestOrigin.ADOPTED, GuestOrigin.RELEASED])
_HEX = st.text(alphabet="0123456789abcdef", min_size=1, max_size=16)
records = st.builds(
    OwnershipRecord,
    origin=_ORIGINS,
    desired=st.none() | st.sampled_from(list(DesiredState)),
    generation=st.integers(min_value=0, max_value=10**9),
    protected=st.booleans(),
    fingerprint=st.none() | _HEX,
    last_keys=st.lists(_HEX, max_size=4, unique=True).map(tuple),
)
other_tags = st.lists(
    st.from_regex(r"[a-z0-9_][a-z0-9_+-]{0,10}", fullmatch=True).filter(
        lambda t: not t.startswith("lcd")
    ),
    max_size=4,
)


@given(records, other_tags)
def test_record_round_trips_through_tags_and_keeps_other_tags(
    record: OwnershipRecord, others: list[str]
) -> None:
    """encode → decode gives the record back; the guest's own tags are kept; every tag is a
    valid Proxmox tag that Proxmox stores as written (none lower-cased or merged)."""
    text = encode(record, ";".join(others))
    assert decode(text) == record
    assert [t for t in split_tags(text) if not t.startswith("lcd.")] == others
    assert all(is_tag(t) for t in split_tags(text))
    mine = [t for t in split_tags(text) if t.startswith("lcd.")]
    assert sorted(unique_tags(mine)) == sorted(mine)


@given(records, records)
def test_rewriting_replaces_the_old_record(old: OwnershipRecord, new: OwnershipRecord) -> None:
    """A record written over another leaves only the new one (no stale lcd. tags)."""
    assert decode(encode(new, encode(old, "prod;web"))) == new


def test_no_record_without_an_origin_tag_and_removal_keeps_the_rest() -> None:
    """Tags without ``lcd.o.`` are no record; encoding ``None`` strips only lcd. tags."""
    assert decode(None) is None
    assert decode("prod;lcd.d.running;lcd.g.3") is None
    assert decode("prod, lcd.o.native lcd.g.2") == OwnershipRecord(
        origin=GuestOrigin.NATIVE, generation=2
    )
    assert encode(None, "prod;lcd.o.native;lcd.g.4") == "prod"


def test_bumped_grows_the_generation_by_one() -> None:
    """Every write of the record is one generation more."""
    rec = OwnershipRecord(origin=GuestOrigin.NATIVE, generation=4)
    assert rec.bumped(desired=DesiredState.STOPPED) == OwnershipRecord(
        origin=GuestOrigin.NATIVE, generation=5, desired=DesiredState.STOPPED
    )


def test_the_record_keeps_the_newest_keys() -> None:
    """with_key puts a key first, once, and keeps at most KEEP_KEYS of them."""
    rec = OwnershipRecord(origin=GuestOrigin.NATIVE)
    for key in ("a1", "b2", "c3", "a1", "d4", "e5"):
        rec = rec.with_key(key)
    assert rec.last_keys == ("e5", "d4", "a1", "c3")
    assert decode(encode(rec)) == rec


_STYLES = st.sampled_from(["alphabetical", "config"])


@given(records, records, _STYLES, st.booleans())
def test_the_record_survives_every_tag_style_proxmox_stores_it_with(
    old: OwnershipRecord, rec: OwnershipRecord, ordering: str, case_sensitive: bool
) -> None:
    """Proxmox stores a write's tags sorted, lower-cased and each once (or as the datacenter's
    tag-style says): the record, its keys newest first, decodes the same from what is stored,
    also when written over an older record as stored."""
    style: dict[str, Any] = {"ordering": ordering, "case_sensitive": case_sensitive}
    existing = stored_tags(encode(old, "Prod;web"), **style)
    assert decode(stored_tags(encode(rec, existing), **style)) == rec


def test_an_upper_case_record_tag_is_the_same_tag_and_is_replaced() -> None:
    """A hand-written ``LCD.`` tag is read as Proxmox's next write stores it (lower case) and
    a write replaces it: no stale origin is left to win after the sort."""
    hand = "Prod;LCD.O.RELEASED;LCD.G.3"
    assert decode(hand) == OwnershipRecord(origin=GuestOrigin.RELEASED, generation=3)
    new = OwnershipRecord(origin=GuestOrigin.NATIVE, generation=4)
    written = encode(new, hand)
    assert written == "Prod;lcd.o.native;lcd.g.4"
    assert decode(stored_tags(written)) == new


def test_unranked_keys_decode_after_ranked_ones() -> None:
    """Keys written before ranks (``lcd.k.<hex>``) still count, after the ranked ones."""
    rec = decode("lcd.o.native;lcd.k.aa;lcd.k.1.cc;lcd.k.0.dd")
    assert rec is not None and rec.last_keys == ("dd", "cc", "aa")


def test_digests_are_tag_safe_and_stable() -> None:
    """Fingerprint and key digests fit the tag charset and depend only on their input."""
    fp = {"name": "web1", "uuid": "ABC-1"}
    assert fingerprint_digest(fp) == fingerprint_digest(dict(reversed(fp.items())))
    assert fingerprint_digest({}) is None
    for value in (fingerprint_digest(fp), key_digest("Order:42/Reboot")):
        assert value is not None and unique_tags([f"lcd.f.{value}"]) == [f"lcd.f.{value}"]
        assert is_tag(f"lcd.f.{value}")
    assert key_digest("a") != key_digest("b")


def test_parse_nodes_accepts_repeats_and_commas_once_each() -> None:
    """``--node pve1,pve2 --node pve3,pve1`` serves pve1, pve2, pve3; junk is refused."""
    assert parse_nodes(["pve1,pve2", " pve3 ,pve1"]) == ("pve1", "pve2", "pve3")
    assert parse_nodes("pve1") == ("pve1",)
    with pytest.raises(ValueError, match="not a Proxmox node name"):
        parse_nodes("pve1,bad_name!")
    with pytest.raises(ValueError, match="no node"):
        parse_nodes(" , ")
    assert missing_nodes(("pve1", "pve9"), ["pve1", "pve2"]) == ["pve9"]


def test_wrong_node_names_the_guests_node() -> None:
    """The 421 refusal says where the guest is and what this daemon serves."""
    err = WrongNode(101, "pve2", ("pve1",))
    assert err.code == "wrong_node" and err.node == "pve2"
    assert "pve2" in str(err) and "pve1" in str(err)


ONLINE = {"pve1": True, "pve2": True, "pve3": True}


@given(
    st.sampled_from(["pve1", "pve2", "pve3", "gone"]),
    st.fixed_dictionaries({n: st.booleans() for n in ("pve1", "pve2", "pve3")}),
)
def test_exactly_one_daemon_reports_a_lost_guest(last: str, online: dict[str, bool]) -> None:
    """Whatever node the guest was last on and whichever nodes are up, of one daemon per node
    exactly one reports (none only when no node is online); so does any split of nodes."""
    reporters = [n for n in ONLINE if lost_reporter(last, online, (n,))]
    assert len(reporters) == (1 if any(online.values()) else 0)
    split = [("pve1", "pve3"), ("pve2",)]
    assert sum(lost_reporter(last, online, s) for s in split) == len(reporters)


def test_lost_reporter_prefers_the_last_node_then_the_first_online() -> None:
    """The last node's daemon reports; with that node offline, the first online node's."""
    assert lost_reporter("pve2", ONLINE, ("pve2",))
    assert not lost_reporter("pve2", ONLINE, ("pve1",))
    down = {**ONLINE, "pve2": False}
    assert lost_reporter("pve2", down, ("pve1",))
    assert not lost_reporter("pve2", down, ("pve3",))


def _managed(vmid: int, node: str) -> GuestRecord:
    return GuestRecord(
        vmid=vmid,
        node=node,
        kind=GuestKind.QEMU,
        origin=GuestOrigin.NATIVE,
        desired_state=DesiredState.RUNNING,
        observed_state=ObservedState.RUNNING,
        created_at=1.0,
        updated_at=1.0,
    )


def test_plan_reports_lost_only_on_the_reporting_daemon() -> None:
    """A managed guest gone from the cluster, last seen on pve2: pve2's daemon plans LOST,
    pve1's only marks it missing — even though pve1 cached it as managed."""
    guests = {101: _managed(101, "pve2")}
    on2 = plan(ReconcileInput(node="pve2", now=5.0, observations=[], guests=guests, online=ONLINE))
    on1 = plan(ReconcileInput(node="pve1", now=5.0, observations=[], guests=guests, online=ONLINE))
    assert [(o.vmid, o.kind) for o in on2.orphans] == [(101, OrphanKind.ANOMALOUS)]
    assert on1.orphans == [] and on1.vanished == [101]


def test_node_mark_keeps_the_operators_text_and_publishes_only_drain_states() -> None:
    """The lifecycled line in a node description is set, replaced and removed; ``active`` or
    ``unhealthy`` publish nothing; the operator's notes stay."""
    from lifecycled.domain.cluster import node_mark, with_node_mark
    from lifecycled.domain.node import NodeState

    text = with_node_mark("rack 4, row B", NodeState.DRAINING)
    assert text.startswith("rack 4, row B\n") and node_mark(text) is NodeState.DRAINING
    text = with_node_mark(text, NodeState.DECOMMISSIONED)
    assert node_mark(text) is NodeState.DECOMMISSIONED and text.count("lifecycled") == 1
    assert with_node_mark(text, NodeState.ACTIVE) == "rack 4, row B"
    assert with_node_mark("", NodeState.UNHEALTHY) == ""
    assert node_mark("lifecycled-node-state: bogus") is None


def test_settings_take_node_lists_from_flags_env_and_toml(tmp_path: Any) -> None:
    """--node repeated, a comma list in the environment and a TOML array all serve the same
    nodes; the first is the primary one; a bad name is one ConfigError."""
    from lifecycled.config import load_settings
    from lifecycled.errors import ConfigError

    flags = load_settings({"node": ["pve1", "pve2,pve3"]}, env={}, system_config=None)
    assert flags.nodes == ("pve1", "pve2", "pve3") and flags.primary_node == "pve1"
    env = load_settings({}, env={"LIFECYCLED_NODE": "pve2, pve1"}, system_config=None)
    assert env.nodes == ("pve2", "pve1")
    toml = tmp_path / "l.toml"
    toml.write_text('node = ["pve3", "pve1"]\n')
    assert load_settings({}, env={}, config_file=toml).nodes == ("pve3", "pve1")
    with pytest.raises(ConfigError, match="not a Proxmox node name"):
        load_settings({"node": ["pve1,no_way!"]}, env={}, system_config=None)


# --- the drift baseline around our own tag writes ----------------------------------------

_OVER = {"name": "web", "cores": 2, "tags": "prod;lcd.o.native;lcd.g.1"}
_WROTE = "prod;lcd.o.native;lcd.d.stopped;lcd.g.2"


def _baselined(**kw: Any) -> GuestRecord:
    values: dict[str, Any] = {
        "vmid": 100,
        "node": "pve1",
        "kind": GuestKind.QEMU,
        "origin": GuestOrigin.NATIVE,
        "config_snapshot": _OVER,
        "config_digest": "X",
        "observed_digest": "X",
        "created_at": 0.0,
        "updated_at": 0.0,
    }
    values.update(kw)
    return GuestRecord(**values)


def test_same_config_takes_tags_as_proxmox_writes_them() -> None:
    """Tags compare as a set (Proxmox sorts and lower-cases them); anything else must match."""
    sorted_by_proxmox = {"cores": "2", "name": "web", "tags": "lcd.g.1;LCD.O.NATIVE;prod"}
    assert same_config(_OVER, sorted_by_proxmox)
    assert same_config({"name": "a"}, {"name": "a", "tags": "", "digest": "Y"})
    assert not same_config(_OVER, {**_OVER, "tags": f"{_OVER['tags']};mine"})
    assert not same_config(_OVER, {**_OVER, "cores": 3})
    assert not same_config(_OVER, {**_OVER, "description": "x"})


def test_an_own_write_over_the_baseline_awaits_its_digest() -> None:
    """Over the baseline's digest: the snapshot becomes what the write left, digest unread."""
    changes = after_own_write(_baselined(), "X", _OVER, _WROTE)
    assert changes == {
        "config_digest": "X",
        "config_snapshot": {**_OVER, "tags": _WROTE},
        "observed_digest": None,
    }


def test_an_own_write_over_a_changed_config_leaves_the_baseline() -> None:
    """Over a config that is not the baseline (drift, our configure not re-baselined yet)
    nothing moves: the next drift check decides as before."""
    assert after_own_write(_baselined(), "Z", {**_OVER, "cores": 7}, _WROTE) == {}
    assert after_own_write(_baselined(origin=GuestOrigin.DISCOVERED), "X", _OVER, _WROTE) == {}
    assert after_own_write(_baselined(config_digest=None), "X", _OVER, _WROTE) == {}


def test_a_second_own_write_learns_the_first_ones_digest() -> None:
    """Over exactly what the first write left, the second write's read is that digest."""
    first = _baselined(
        config_snapshot={**_OVER, "tags": _WROTE}, config_digest="X", observed_digest=None
    )
    changes = after_own_write(first, "Y", {**_OVER, "tags": _WROTE}, "prod;lcd.g.3")
    assert (changes["config_digest"], changes["observed_digest"]) == ("Y", None)
    assert after_own_write(first, "Y", {**_OVER, "tags": _WROTE, "cores": 7}, "t") == {}


def test_a_drift_check_takes_only_our_writes_exact_result_as_baseline() -> None:
    """Awaiting a digest: the read of exactly our write's values is the baseline; a read with
    the digest we wrote over predates the write (still awaiting); anything else is drift."""
    awaiting = _baselined(
        config_snapshot={**_OVER, "tags": _WROTE}, config_digest="X", observed_digest=None
    )
    assert digest_read(awaiting, "Y", {**_OVER, "tags": _WROTE}) == {
        "config_digest": "Y",
        "observed_digest": "Y",
    }
    assert digest_read(awaiting, "X", _OVER) == {}
    assert digest_read(awaiting, "Z", {**_OVER, "tags": _WROTE, "cores": 7}) == {
        "observed_digest": "Z"
    }
    assert digest_read(awaiting, "Z", {**_OVER, "tags": f"{_WROTE};mine"}) == {
        "observed_digest": "Z"
    }
    assert digest_read(_baselined(), "Y", _OVER) == {"observed_digest": "Y"}


@given(st.none() | records)
def test_cluster_view_origin_is_the_record_s_or_discovered(record: OwnershipRecord | None) -> None:
    """The origin both faces filter the cluster view on: the record's, else discovered."""
    expected = record.origin if record is not None else GuestOrigin.DISCOVERED
    assert view_origin(record_dict(record)) is expected
