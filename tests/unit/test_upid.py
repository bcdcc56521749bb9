"""UPID parsing and formatting, exactly as pve-common ``UPID.pm`` (reference §3.1, §3.3)."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lifecycled.domain.upid import Upid, UpidError, is_upid

# --- strategies built from the field grammar of reference §3.1 ----------------------------

_NODE_RE = r"[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?"

nodes = st.from_regex(_NODE_RE, fullmatch=True)
pids = st.integers(min_value=0, max_value=0xFFFFFFFF)  # %08X: 8 hex digits
pstarts = st.integers(min_value=0, max_value=0xFFFFFFFFF)  # 8, or 9 after ~497 days of uptime
starttimes = st.integers(min_value=0, max_value=0xFFFFFFFF)

# ``[^:\s/]``: anything but a colon, a slash or whitespace (surrogates cannot be encoded).
_field_chars = st.characters(exclude_categories=["Cs"]).filter(
    lambda c: c not in ":/" and not c.isspace()
)
types = st.text(_field_chars, min_size=1, max_size=12)
ids = st.text(_field_chars, min_size=0, max_size=8)
users = st.text(_field_chars, min_size=1, max_size=20)

upids = st.builds(
    Upid,
    node=nodes,
    pid=pids,
    pstart=pstarts,
    starttime=starttimes,
    type=types,
    id=ids,
    user=users,
)

_HEX = "0123456789ABCDEF"


def _hex(n: int) -> st.SearchStrategy[str]:
    return st.text(st.sampled_from(_HEX), min_size=n, max_size=n)


# A canonical pstart: 8 digits, or 9 without a leading zero (a leading zero formats as 8).
canonical_pstarts = _hex(8) | st.builds(lambda h, t: h + t, st.sampled_from(_HEX[1:]), _hex(8))

canonical_strings = st.builds(
    lambda node, pid, pstart, start, typ, id_, user: (
        f"UPID:{node}:{pid}:{pstart}:{start}:{typ}:{id_}:{user}:"
    ),
    nodes,
    _hex(8),
    canonical_pstarts,
    _hex(8),
    types,
    ids,
    users,
)

# Any accepted spelling: the decoder takes lower-case hex and a 9-digit pstart with a
# leading zero (pve-common's regex is ``[0-9A-Fa-f]{8}`` / ``{8,9}``).
_any_hex = "0123456789ABCDEFabcdef"
loose_strings = st.tuples(
    nodes,
    st.text(st.sampled_from(_any_hex), min_size=8, max_size=8),
    st.text(st.sampled_from(_any_hex), min_size=8, max_size=9),
    st.text(st.sampled_from(_any_hex), min_size=8, max_size=8),
    types,
    ids,
    users,
)

# --- real UPIDs from the reference -----------------------------------------------------------

VZCREATE = "UPID:pve0:0009E9B0:103F1191:660069E7:vzcreate:101:root@pam:"
QMCONFIG = "UPID:pve:000082C9:00083AFF:6515689D:qmconfig:101:terraform-prov@pve:"
QMCLONE_TOKEN = "UPID:pve-mp:00000ACD:00006AE8:679A423B:qmclone:112:capmox@pve!capi:"
QMSTART_SAMPLE = "UPID:dahu-2:00007323:001036A5:6419CAF8:qmstart:100:root@pam:"


def test_parses_real_vzcreate_upid() -> None:
    """The bpg #1160 UPID decodes into its seven fields, hex fields as integers (§3.1)."""
    upid = Upid.parse(VZCREATE)
    assert upid == Upid(
        node="pve0",
        pid=0x0009E9B0,
        pstart=0x103F1191,
        starttime=0x660069E7,
        type="vzcreate",
        id="101",
        user="root@pam",
    )
    assert str(upid) == VZCREATE


def test_parses_real_qmconfig_upid() -> None:
    """The Telmate #800 UPID (its ``<node>`` placeholder filled in) round-trips (§3.1)."""
    upid = Upid.parse(QMCONFIG)
    assert (upid.type, upid.id, upid.user) == ("qmconfig", "101", "terraform-prov@pve")
    assert upid.pstart == 0x00083AFF
    assert str(upid) == QMCONFIG


def test_reference_placeholder_node_is_not_a_node() -> None:
    """The literal ``<node>`` of the Telmate example is not a valid node name (§3.1)."""
    assert not is_upid(QMCONFIG.replace(":pve:", ":<node>:", 1))


def test_parses_real_token_user_upid() -> None:
    """A token caller's UPID keeps ``user@realm!tokenid`` whole (§3.1, ionos #389)."""
    upid = Upid.parse(QMCLONE_TOKEN)
    assert upid.node == "pve-mp"
    assert upid.user == "capmox@pve!capi"
    assert upid.bare_user == "capmox@pve"
    assert upid.tokenid == "capi"
    assert upid.type == "qmclone"
    assert upid.id == "112"
    assert str(upid) == QMCLONE_TOKEN


def test_fields_agree_with_task_status_sample() -> None:
    """The §4.1 status sample's integer fields are the UPID's hex fields decoded."""
    upid = Upid.parse(QMSTART_SAMPLE)
    assert upid.node == "dahu-2"
    assert upid.pid == 29475
    assert upid.pstart == 1062565
    assert upid.starttime == 1679411960
    assert upid.bare_user == "root@pam"
    assert upid.tokenid is None


def test_nine_digit_pstart_round_trips() -> None:
    """A 9-digit pstart (uptime beyond ~497 days) parses and formats back unchanged (§3.1)."""
    text = "UPID:pve:00001234:1103F1191:660069E7:qmstart:100:root@pam:"
    upid = Upid.parse(text)
    assert upid.pstart == 0x1103F1191
    assert str(upid) == text


def test_eight_digit_pstart_is_zero_padded() -> None:
    """Small fields format with ``%08X`` zero padding (§3.1)."""
    upid = Upid(node="pve", pid=1, pstart=2, starttime=3, type="qmstart", id="100", user="a@pam")
    assert str(upid) == "UPID:pve:00000001:00000002:00000003:qmstart:100:a@pam:"


def test_empty_id_is_allowed() -> None:
    """A node-level task has an empty ``id`` field (§3.1)."""
    text = "UPID:pve:00001234:103F1191:660069E7:aptupdate::root@pam:"
    upid = Upid.parse(text)
    assert upid.id == ""
    assert str(upid) == text


def test_lowercase_hex_is_accepted_and_canonicalised() -> None:
    """pve-common's decoder takes ``[0-9A-Fa-f]``; formatting upper-cases (§3.1 ``%08X``)."""
    upid = Upid.parse(VZCREATE.lower().replace("upid:", "UPID:", 1))
    assert upid.pid == 0x0009E9B0
    assert str(upid) == VZCREATE


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(VZCREATE[:-1], id="missing-trailing-colon"),
        pytest.param(VZCREATE + "done", id="proxmoxer-fake-done-suffix"),
        pytest.param(VZCREATE + "done:", id="ninth-field"),
        pytest.param(VZCREATE + "\n", id="trailing-newline"),
        pytest.param(" " + VZCREATE, id="leading-space"),
        pytest.param(VZCREATE.replace("0009E9B0", "009E9B0"), id="pid-7-digits"),
        pytest.param(VZCREATE.replace("0009E9B0", "00009E9B0"), id="pid-9-digits"),
        pytest.param(VZCREATE.replace("103F1191", "03F1191"), id="pstart-7-digits"),
        pytest.param(VZCREATE.replace("103F1191", "00103F1191"), id="pstart-10-digits"),
        pytest.param(VZCREATE.replace("660069E7", "60069E7"), id="starttime-7-digits"),
        pytest.param(VZCREATE.replace("660069E7", "0660069E7"), id="starttime-9-digits"),
        pytest.param(VZCREATE.replace("0009E9B0", "0009E9BG"), id="pid-not-hex"),
        pytest.param(VZCREATE.replace("pve0", "-pve0"), id="node-leading-hyphen"),
        pytest.param(VZCREATE.replace("pve0", "pve0-"), id="node-trailing-hyphen"),
        pytest.param(VZCREATE.replace("pve0", "pve_0"), id="node-underscore"),
        pytest.param(VZCREATE.replace("pve0", "pve0.example.com"), id="node-fqdn"),
        pytest.param(VZCREATE.replace("pve0", "pvé"), id="node-non-ascii"),
        pytest.param(VZCREATE.replace("pve0", ""), id="node-empty"),
        pytest.param(VZCREATE.replace("vzcreate", "vz/create"), id="slash-in-type"),
        pytest.param(VZCREATE.replace(":101:", ":1/01:"), id="slash-in-id"),
        pytest.param(VZCREATE.replace("root@pam", "root@pam/x"), id="slash-in-user"),
        pytest.param(VZCREATE.replace("vzcreate", "vz create"), id="space-in-type"),
        pytest.param(VZCREATE.replace(":101:", ":1\t01:"), id="tab-in-id"),
        pytest.param(VZCREATE.replace("root@pam", "root @pam"), id="space-in-user"),
        pytest.param(VZCREATE.replace("vzcreate", ""), id="empty-type"),
        pytest.param(VZCREATE.replace("root@pam", ""), id="empty-user"),
        pytest.param(VZCREATE.replace("UPID:", "upid:", 1), id="lowercase-prefix"),
        pytest.param(VZCREATE.replace("UPID:", "UPIDX:", 1), id="wrong-prefix"),
        pytest.param(VZCREATE.replace("UPID:", "", 1), id="no-prefix"),
        pytest.param("", id="empty"),
    ],
)
def test_rejects_malformed(text: str) -> None:
    """Anything the anchored pve-common regex refuses is refused, with its wording (§3.1)."""
    assert not is_upid(text)
    with pytest.raises(UpidError, match=r"^unable to parse worker upid '"):
        Upid.parse(text)


def test_a_text_parses_once_and_a_bad_one_is_refused_every_time() -> None:
    """The same text gives the same (immutable) Upid, equal to a fresh one and formatting
    canonically; a refused text is refused again (a failure is not kept as an answer)."""
    first = Upid.parse(VZCREATE.lower().replace("upid:", "UPID:", 1))
    assert Upid.parse(VZCREATE.lower().replace("upid:", "UPID:", 1)) is first
    assert first == attrs.evolve(first) and hash(first) == hash(attrs.evolve(first))
    assert str(first) == VZCREATE and str(attrs.evolve(first, pid=7)) != VZCREATE
    for _ in range(2):
        with pytest.raises(UpidError):
            Upid.parse(VZCREATE + "x")


def test_upid_error_is_a_value_error() -> None:
    """Callers validating input can catch a bad UPID as a ``ValueError``."""
    assert issubclass(UpidError, ValueError)


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"pid": -1}, id="negative-pid"),
        pytest.param({"pid": 0x1_0000_0000}, id="pid-beyond-8-digits"),
        pytest.param({"pstart": 0x10_0000_0000}, id="pstart-beyond-9-digits"),
        pytest.param({"starttime": 0x1_0000_0000}, id="starttime-beyond-8-digits"),
        pytest.param({"node": "pve_1"}, id="bad-node"),
        pytest.param({"type": "qm:start"}, id="colon-in-type"),
        pytest.param({"id": "10 0"}, id="space-in-id"),
        pytest.param({"user": ""}, id="empty-user"),
    ],
)
def test_construction_refuses_fields_that_cannot_format(changes: dict[str, object]) -> None:
    """A Upid whose ``str()`` would not parse back cannot be constructed."""
    fields: dict[str, object] = {
        "node": "pve",
        "pid": 1,
        "pstart": 2,
        "starttime": 3,
        "type": "qmstart",
        "id": "100",
        "user": "root@pam",
    }
    fields.update(changes)
    with pytest.raises(UpidError):
        Upid(**fields)  # type: ignore[arg-type]


def test_largest_field_values_are_valid() -> None:
    """The widest values (pid/starttime 8 digits, pstart 9 digits) still round-trip."""
    upid = Upid(
        node="a",
        pid=0xFFFFFFFF,
        pstart=0xFFFFFFFFF,
        starttime=0xFFFFFFFF,
        type="t",
        id="",
        user="u",
    )
    assert str(upid) == "UPID:a:FFFFFFFF:FFFFFFFFF:FFFFFFFF:t::u:"
    assert Upid.parse(str(upid)) == upid


@pytest.mark.parametrize(
    ("starttime", "bucket"),
    [
        pytest.param(0x660069E7, "7", id="digit"),
        pytest.param(0x679A423B, "B", id="letter-upper-case"),
        pytest.param(0, "0", id="zero"),
        pytest.param(0xFFFFFFFF, "F", id="max"),
    ],
)
def test_log_bucket_is_last_hex_digit_of_starttime(starttime: int, bucket: str) -> None:
    """The task log lives under ``/var/log/pve/tasks/<last hex digit of starttime>/`` (§3.1)."""
    upid = Upid(node="pve", pid=1, pstart=1, starttime=starttime, type="t", id="", user="u@pam")
    assert upid.log_bucket == bucket


@pytest.mark.parametrize(
    ("user", "bare", "token"),
    [
        pytest.param("root@pam", "root@pam", None, id="plain-user"),
        pytest.param("root@pam!ci", "root@pam", "ci", id="root-token"),
        pytest.param("capmox@pve!capi", "capmox@pve", "capi", id="realm-token"),
        pytest.param("svc@pve!a!b", "svc@pve", "a!b", id="split-at-first-bang"),
    ],
)
def test_bare_user_and_tokenid(user: str, bare: str, token: str | None) -> None:
    """``bare_user`` cuts at ``!`` and ``tokenid`` keeps what proxmoxer loses (§3.3, §4.1)."""
    upid = Upid(node="pve", pid=1, pstart=1, starttime=1, type="qmstart", id="1", user=user)
    assert upid.bare_user == bare
    assert upid.tokenid == token


@settings(max_examples=200, database=None)
@given(upids)
def test_format_then_parse_round_trips(upid: Upid) -> None:
    """Every valid field combination formats to a UPID that parses back to the same fields."""
    text = str(upid)
    assert is_upid(text)
    assert Upid.parse(text) == upid


@settings(max_examples=200, database=None)
@given(canonical_strings)
def test_canonical_string_round_trips(text: str) -> None:
    """A canonical UPID string (upper-case hex, no padding beyond %08X) survives parse→str."""
    assert str(Upid.parse(text)) == text


@settings(max_examples=200, database=None)
@given(loose_strings)
def test_any_accepted_spelling_formats_canonically(
    parts: tuple[str, str, str, str, str, str, str],
) -> None:
    """Lower-case hex and a zero-led 9-digit pstart parse; ``str`` gives the %08X form."""
    node, pid, pstart, start, typ, id_, user = parts
    upid = Upid.parse(f"UPID:{node}:{pid}:{pstart}:{start}:{typ}:{id_}:{user}:")
    assert str(upid) == (
        f"UPID:{node}:{int(pid, 16):08X}:{int(pstart, 16):08X}:{int(start, 16):08X}:"
        f"{typ}:{id_}:{user}:"
    )


@settings(max_examples=100, database=None)
@given(upids)
def test_log_bucket_property(upid: Upid) -> None:
    """``log_bucket`` is always ``starttime mod 16`` as one upper-case hex digit."""
    assert upid.log_bucket == _HEX[upid.starttime % 16]


@settings(max_examples=100, database=None)
@given(users)
def test_bare_user_and_token_recompose_the_user(user: str) -> None:
    """``bare_user`` plus ``!tokenid`` (when present) is the full user again."""
    upid = Upid(node="pve", pid=1, pstart=1, starttime=1, type="t", id="", user=user)
    token = upid.tokenid
    assert (upid.bare_user if token is None else f"{upid.bare_user}!{token}") == user
    assert "!" not in upid.bare_user
