"""User ids with ``@`` in the user part parse everywhere (reference §6, §13.8)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifecycled.domain.upid import Upid
from lifecycled.domain.userid import (
    bare_user,
    is_userid,
    split_token_user,
    ticket_userid,
    user_part,
)
from lifecycled.errors import ConfigError
from lifecycled.pve.auth import TicketAuth, TokenAuth, load_token_file
from lifecycled.sim.config import ApiToken, SimConfig, SimConfigError

AD = "john@corp.com@ad"


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        pytest.param("root@pam", True, id="root"),
        pytest.param(AD, True, id="at-in-user-part"),
        pytest.param("a.b-c_d@pve", True, id="punctuation"),
        pytest.param("root", False, id="no-realm"),
        pytest.param("root@p", False, id="one-letter-realm"),
        pytest.param("root@1pam", False, id="realm-starts-with-digit"),
        pytest.param("ro ot@pam", False, id="space"),
        pytest.param("ro:ot@pam", False, id="colon"),
        pytest.param("ro/ot@pam", False, id="slash"),
        pytest.param("root@pam!ci", False, id="token-user-is-no-user-id"),
    ],
)
def test_is_userid(text: str, valid: bool) -> None:
    """The user part is ``[^\\s:/]+`` (``@`` allowed), the realm a name after the last ``@``."""
    assert is_userid(text) is valid


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("root@pam!ci", ("root@pam", "ci"), id="root"),
        pytest.param(f"{AD}!ci", (AD, "ci"), id="at-in-user-part"),
        pytest.param(f"{AD}!c.i-2_x", (AD, "c.i-2_x"), id="token-punctuation"),
        pytest.param("root@pam", None, id="no-token"),
        pytest.param("root@pam!1x", None, id="token-starts-with-digit"),
        pytest.param("root@pam!x", None, id="one-letter-token"),
    ],
)
def test_split_token_user(text: str, expected: tuple[str, str] | None) -> None:
    """A token user splits into its user id (which may hold ``@``) and its token id."""
    assert split_token_user(text) == expected


def test_helpers_cut_at_the_realm_and_the_token() -> None:
    """bare_user drops the token id, user_part the realm, both with ``@`` in the user part."""
    assert bare_user(f"{AD}!ci") == AD
    assert user_part(AD) == "john@corp.com"
    assert user_part("root@pam") == "root"


def test_upid_with_at_in_the_user_part() -> None:
    """A UPID started by ``john@corp.com@ad!ci`` parses, with its bare user and token id."""
    upid = Upid.parse(f"UPID:pve1:00001234:1ABCDEF01:65000000:qmstart:100:{AD}!ci:")
    assert (upid.user, upid.bare_user, upid.tokenid) == (f"{AD}!ci", AD, "ci")


def test_token_auth_and_token_file_with_at_in_the_user_part(tmp_path: Path) -> None:
    """A token of ``john@corp.com@ad`` is accepted from a token file and split correctly."""
    path = tmp_path / "token"
    path.write_text(f"{AD}!ci=5e0c0f7e-secret\n")
    path.chmod(0o600)
    token = load_token_file(path)
    assert (token.user, token.user_name, token.token_name) == (f"{AD}!ci", AD, "ci")
    assert token.secret == "5e0c0f7e-secret"
    assert TokenAuth(user=f"{AD}!ci", secret="s").header() == f"PVEAPIToken={AD}!ci=s"


def test_ticket_auth_accepts_at_in_the_user_part() -> None:
    """``--pve-user john@corp.com@ad`` is a valid ticket user; a user without realm is not."""
    assert TicketAuth(username=AD, password="pw").username == AD
    with pytest.raises(ConfigError, match="expected USER@REALM"):
        TicketAuth(username="john", password="pw")


def test_simulator_token_and_users_with_at_in_the_user_part() -> None:
    """The simulator accepts such a token and such a login user, and refuses a bad user id."""
    token = ApiToken.parse(f"{AD}!ci=secret")
    assert token.full_user == f"{AD}!ci"
    assert SimConfig(users={AD: "pw"}).users == {AD: "pw"}
    with pytest.raises(SimConfigError, match="invalid user id"):
        SimConfig(users={"john": "pw"})


@pytest.mark.parametrize(
    ("ticket", "userid"),
    [
        pytest.param(f"PVE:{AD}:65000000::c2lnbmF0dXJl/+==", AD, id="at-in-user-part"),
        pytest.param("PVE:root@pam:4EEC61E2::sig", "root@pam", id="root"),
        pytest.param("PMG:root@pam:4EEC61E2::sig", None, id="other-product"),
        pytest.param("garbage", None, id="garbage"),
    ],
)
def test_ticket_userid(ticket: str, userid: str | None) -> None:
    """A login ticket names the user id it was issued to (the canonical spelling)."""
    assert ticket_userid(ticket) == userid
