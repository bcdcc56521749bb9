"""Pure door decisions: roles, same origin, the write-rate token bucket."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lifecycled.domain.access import (
    LOOPBACK_NAMES,
    Bucket,
    RateLimit,
    Role,
    allows,
    door_refusal,
    is_full,
    required_role,
    split_authority,
    take,
)

NAMES = LOOPBACK_NAMES | {"127.0.0.1"}


def test_roles_cover_the_ones_below() -> None:
    """admin covers operate covers read, never the other way round."""
    assert allows(Role.ADMIN, Role.READ) and allows(Role.ADMIN, Role.OPERATE)
    assert allows(Role.OPERATE, Role.READ) and not allows(Role.OPERATE, Role.ADMIN)
    assert not allows(Role.READ, Role.OPERATE)


def test_required_role() -> None:
    """GET needs read, an undeclared write needs admin, destructive always needs admin."""
    assert required_role("GET", None) is Role.READ
    assert required_role("POST", None) is Role.ADMIN
    assert required_role("DELETE", None) is Role.ADMIN
    assert required_role("POST", Role.OPERATE) is Role.OPERATE
    assert required_role("POST", Role.OPERATE, destructive=True) is Role.ADMIN


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("localhost:8090", ("localhost", 8090)),
        ("LOCALHOST", ("localhost", None)),
        ("[::1]:80", ("::1", 80)),
        ("[::1]", ("::1", None)),
        ("127.0.0.1:", ("127.0.0.1", None)),
        ("::1", None),
        ("[::1", None),
        ("[::1]x", None),
        ("host:99999", None),
        ("host:8o", None),
        (":80", None),
        ("", None),
    ],
)
def test_split_authority(value: str, expected: tuple[str, int | None] | None) -> None:
    """Host headers split into name and port; malformed ones are None."""
    assert split_authority(value) == expected


def _door(**kwargs: object) -> str | None:
    values: dict[str, object] = {
        "host": "127.0.0.1:8090",
        "origin": None,
        "fetch_site": None,
        "local_port": 8090,
        "allowed_hosts": NAMES,
    }
    values.update(kwargs)
    refusal = door_refusal(**values)  # type: ignore[arg-type]
    return None if refusal is None else f"{refusal.status} {refusal.code}"


def test_door_hosts() -> None:
    """Own loopback names on the listener's port pass; other names or ports are 421."""
    for host in ("127.0.0.1:8090", "localhost", "[::1]:8090", "LocalHost:8090", None):
        assert _door(host=host) is None, host
    for host in ("evil.example:8090", "127.0.0.1:8091", "localhost.:8090", "10.0.0.1"):
        assert _door(host=host) == "421 host_not_allowed", host
    assert _door(host="[::1") == "400 bad_host"
    assert _door(host="evil.example", allowed_hosts=None) is None  # beyond loopback


def test_door_origins() -> None:
    """Only the origin the request was sent to passes; null, other ports and schemes are 403."""
    assert _door(origin="http://127.0.0.1:8090") is None
    assert _door(host="localhost", local_port=80, origin="http://localhost") is None
    for origin in (
        "http://evil.example",
        "null",
        "http://localhost:8090",  # a different name than the Host it was sent to
        "https://127.0.0.1:8090",
        "http://127.0.0.1:8091",
        "http://127.0.0.1:8090/path",
        "file://",
        "junk",
    ):
        assert _door(origin=origin) == "403 cross_origin", origin
    assert _door(origin="http://127.0.0.1:8090", host=None) == "403 cross_origin"


def test_door_fetch_site() -> None:
    """Sec-Fetch-Site same-origin and none pass; same-site and cross-site are 403."""
    assert _door(fetch_site="same-origin") is None
    assert _door(fetch_site="none") is None
    assert _door(fetch_site="same-site") == "403 cross_origin"
    assert _door(fetch_site="cross-site") == "403 cross_origin"


def test_bucket_burst_then_rate() -> None:
    """A fresh bucket allows the burst, then one write per 1/rate seconds."""
    limit = RateLimit(rate=2.0, burst=3)
    bucket = None
    for _ in range(3):
        bucket, wait = take(limit, bucket, 100.0)
        assert wait is None
    assert bucket is not None
    bucket, wait = take(limit, bucket, 100.0)
    assert wait == 1
    bucket, wait = take(limit, bucket, 100.5)
    assert wait is None
    assert not is_full(limit, bucket, 100.5)
    assert is_full(limit, bucket, 102.0)


def test_retry_after_is_whole_seconds_until_a_token() -> None:
    """Retry-After rounds the wait up to whole seconds (at least 1)."""
    limit = RateLimit(rate=0.1, burst=1)
    bucket, _ = take(limit, None, 0.0)
    assert take(limit, bucket, 0.0)[1] == 10
    assert take(limit, bucket, 9.5)[1] == 1


@given(
    rate=st.floats(min_value=0.01, max_value=1000),
    burst=st.integers(min_value=1, max_value=1000),
    gaps=st.lists(st.floats(min_value=0, max_value=10), min_size=1, max_size=60),
)
def test_bucket_never_allows_more_than_burst_plus_rate(
    rate: float, burst: int, gaps: list[float]
) -> None:
    """Allowed writes over any span never exceed burst + rate x span."""
    limit = RateLimit(rate=rate, burst=burst)
    bucket: Bucket | None = None
    now = 0.0
    allowed = 0
    for gap in gaps:
        now += gap
        bucket, wait = take(limit, bucket, now)
        if wait is None:
            allowed += 1
        else:
            assert wait >= 1
    assert allowed <= burst + rate * now + 1e-6


def test_limit_settings_load_and_are_bounded() -> None:
    """http_timeout, max_connections, write_rate and write_burst load from env; out of range
    is a ConfigError naming the option."""
    from lifecycled.config import load_settings
    from lifecycled.errors import ConfigError

    env = {
        "LIFECYCLED_HTTP_TIMEOUT": "2s",
        "LIFECYCLED_MAX_CONNECTIONS": "8",
        "LIFECYCLED_WRITE_RATE": "0.5",
        "LIFECYCLED_WRITE_BURST": "3",
    }
    s = load_settings({}, env=env, system_config=None)
    assert (s.http_timeout, s.max_connections, s.write_rate, s.write_burst) == (2.0, 8, 0.5, 3)
    for name, value in (
        ("http_timeout", "0s"),
        ("max_connections", "0"),
        ("write_rate", "0"),
        ("write_rate", "nan"),
        ("write_burst", "0"),
    ):
        with pytest.raises(ConfigError, match=name.replace("_", "[_-]")):
            load_settings({name: value}, env={}, system_config=None)
