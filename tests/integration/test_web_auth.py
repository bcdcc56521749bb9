"""Bearer-token auth of /v1/*, loopback-only mode, and the token file (SPEC §5)."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import aiohttp
import pytest
from conftest_web import (
    ALICE,
    BOB,
    TOKEN_FILE_TEXT,
    UNNAMED,
    pick,
    pve_client,
    serving,
    web_settings,
)

from lifecycled.engine.runtime import Runtime
from lifecycled.errors import ConfigError
from lifecycled.sim import SimServer
from lifecycled.web import start_web
from lifecycled.web.auth import client_is_loopback, match_token, parse_token_file

SECRETS = ("alice-secret-0001", "bob-secret-00002", "plain-secret-000003", "wrong-secret-9")


async def _first_reason(http: aiohttp.ClientSession, op_id: int) -> str:
    async with http.get(f"/v1/ops/{op_id}") as resp:
        body = await resp.json()
    return str(body["history"][0]["reason"])


async def test_each_token_acts_under_its_name(sim: SimServer, tmp_path: Path) -> None:
    """alice, bob and the unnamed third token (token-3) become api:<name> in the history."""
    avoid: set[int] = set()
    async with serving(sim, tmp_path, run=False, headers={}) as env:
        for headers, actor in ((ALICE, "api:alice"), (BOB, "api:bob"), (UNNAMED, "api:token-3")):
            guest = pick(sim, "qemu", running=False, avoid=avoid)
            status, op = await env.submit(
                {"action": "start", "vmid": guest.vmid, "kind": "qemu", "node": guest.node},
                headers=headers,
            )
            assert status == 202
            async with env.http.get(f"/v1/ops/{op['id']}", headers=headers) as resp:
                shown = await resp.json()
            assert shown["history"][0]["reason"] == f"submitted by {actor}"


async def test_missing_or_wrong_tokens_are_401(sim: SimServer, tmp_path: Path) -> None:
    """No token, a wrong token or another scheme answers 401 with WWW-Authenticate."""
    async with serving(sim, tmp_path, run=False, headers={}) as env:
        for headers in (
            {},
            {"Authorization": "Bearer wrong-secret-9"},
            {"Authorization": "Bearer "},
            {"Authorization": "Basic YWxpY2U6c2VjcmV0"},
            {"Authorization": "alice-secret-0001"},
            {"Authorization": "Bearer alice-secret-1x"},
        ):
            for method, path in (
                ("GET", "/v1/ops"),
                ("POST", "/v1/ops"),
                ("GET", "/v1/status"),
                ("GET", "/v1/unknown"),
            ):
                async with env.http.request(
                    method, path, headers=headers, json={"action": "start", "vmid": 101}
                ) as resp:
                    assert resp.status == 401, (headers, path)
                    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                    body = await resp.json()
                assert body["error"]["code"] == "unauthorized"
        async with env.http.get(
            "/v1/ops", headers={"Authorization": "bearer bob-secret-00002"}
        ) as r:
            assert r.status == 200  # the scheme is case-insensitive
        assert await env.op_count() == 0


async def test_public_endpoints_need_no_token(sim: SimServer, tmp_path: Path) -> None:
    """/healthz, /readyz, /metrics and /openapi.json answer without a token."""
    async with serving(sim, tmp_path, headers={}) as env:
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            async with env.http.get(path) as resp:
                assert resp.status == 200, path


async def test_without_a_token_file_only_loopback_clients_are_served(
    sim: SimServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No token file: a loud warning at start, loopback clients need no token (api:loopback)."""
    guest = pick(sim, "qemu", running=False)
    caplog.set_level(logging.INFO, logger="lifecycled")
    async with serving(sim, tmp_path, run=False, tokens=None) as env:
        warnings = [r for r in caplog.records if r.getMessage() == "web.no_auth_loopback_only"]
        assert len(warnings) == 1
        assert warnings[0].levelno == logging.WARNING
        status, op = await env.submit(
            {"action": "start", "vmid": guest.vmid, "kind": "qemu", "node": guest.node}
        )
        assert status == 202
        assert await _first_reason(env.http, op["id"]) == "submitted by api:loopback"


def _non_loopback_ipv4() -> str | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
        address = str(sock.getsockname()[0])
    except OSError:
        return None
    finally:
        sock.close()
    return None if address.startswith("127.") or address == "0.0.0.0" else address


async def test_without_a_token_file_remote_clients_are_refused(
    sim: SimServer, tmp_path: Path
) -> None:
    """Listening on all addresses without a token file, a non-loopback client gets 403."""
    address = _non_loopback_ipv4()
    if address is None:
        pytest.skip("this host has no non-loopback IPv4 address")
    async with serving(sim, tmp_path, run=False, tokens=None, listen="0.0.0.0:0") as env:
        port = env.url.rsplit(":", 1)[1]
        async with aiohttp.ClientSession() as remote:
            async with remote.get(f"http://{address}:{port}/v1/ops") as resp:
                assert resp.status == 403
                body = await resp.json()
            assert body["error"]["code"] == "loopback_only"
            async with remote.get(f"http://{address}:{port}/healthz") as resp:
                assert resp.status == 200
        async with env.http.get("/v1/ops") as resp:
            assert resp.status == 200  # the same server still serves loopback


def test_client_loopback_detection() -> None:
    """IPv4, IPv6 and IPv4-mapped loopback peers count as loopback; others and unknown do not."""
    for remote in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"):
        assert client_is_loopback(remote), remote
    for other in (None, "", "192.0.2.2", "::ffff:192.0.2.2", "fd00::2", "localhost", "junk"):
        assert not client_is_loopback(other), other


def test_token_file_format() -> None:
    """name:role:token, the older role-less forms as admin, token-N for unnamed lines, comments
    and blank lines ignored; a token may hold ':' after the role."""
    text = TOKEN_FILE_TEXT + "  # trailing comment\n\n  x:read:y:z-0123456789abcdef  \n"
    tokens = parse_token_file(text, "f")
    assert [t.name for t in tokens] == ["alice", "bob", "token-3", "reader", "operator", "x"]
    assert [str(t.role) for t in tokens] == ["admin", "admin", "admin", "read", "operate", "read"]
    assert [t.legacy for t in tokens] == [False, True, True, False, False, False]
    assert tokens[5].secret == b"y:z-0123456789abcdef"
    assert "secret" not in repr(tokens[0]) and "alice-secret-0001" not in repr(tokens)
    assert match_token(tokens, b"bob-secret-00002") is tokens[1]
    assert match_token(tokens, b"bob-secret") is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "holds no token"),
        ("# only a comment\n\n", "holds no token"),
        ("alice:s3cr3t-0123456789-1\nalice:s3cr3t-0123456789-2\n", "line 2: duplicate name"),
        ("alice:\n", "line 1"),
        ("bad name:s3cr3t-0123456789\n", "the name before"),
        ("s3cr3t-0123456789 words\n", "without spaces"),
        ("alice:root:s3cr3t-0123456789\n", "the role must be one of read, operate, admin"),
        ("alice:admin:s3cr3t-short\n", "shorter than 16 characters"),
        ("s3cr3t-short\n", "shorter than 16 characters"),
    ],
)
def test_bad_token_files_are_config_errors(text: str, problem: str) -> None:
    """A malformed token file is refused naming the line, never echoing a token."""
    with pytest.raises(ConfigError, match=problem) as caught:
        parse_token_file(text, "tokens.txt")
    assert "s3cr3t" not in str(caught.value)


async def test_an_unreadable_token_file_stops_the_start(sim: SimServer, tmp_path: Path) -> None:
    """start_web fails with a ConfigError when the token file is missing; nothing listens."""
    settings = web_settings(tmp_path, sim, api_token_file=tmp_path / "missing")
    runtime = await Runtime.build(settings, pve=pve_client(sim))
    try:
        with pytest.raises(ConfigError, match="does not exist"):
            await start_web(runtime)
        assert runtime.web_url is None
    finally:
        await runtime.close()


async def test_a_token_file_open_to_others_stops_the_start(sim: SimServer, tmp_path: Path) -> None:
    """A token file readable by group or others (0644) is refused like every secret file
    (it was silently accepted before); nothing listens and the token is not echoed."""
    settings = web_settings(tmp_path, sim)
    assert settings.api_token_file is not None
    settings.api_token_file.chmod(0o644)
    runtime = await Runtime.build(settings, pve=pve_client(sim))
    try:
        with pytest.raises(ConfigError, match="mode 0644") as caught:
            await start_web(runtime)
        assert runtime.web_url is None
        assert "alice-secret" not in str(caught.value)
    finally:
        await runtime.close()


async def test_tokens_never_reach_the_log(
    sim: SimServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Neither accepted nor rejected tokens appear in any log record."""
    caplog.set_level(logging.DEBUG)
    guest = pick(sim, "qemu", running=False)
    async with serving(sim, tmp_path, headers={}) as env:
        for headers in (ALICE, BOB, UNNAMED, {"Authorization": "Bearer wrong-secret-9"}):
            await env.submit({"action": "start", "vmid": guest.vmid}, headers=headers)
            async with env.http.get("/v1/ops", headers=headers):
                pass
    assert any(r.getMessage() == "http.request" for r in caplog.records)
    for record in caplog.records:
        text = repr(vars(record)) + record.getMessage()
        for secret in SECRETS:
            assert secret not in text, record.getMessage()


async def test_a_second_server_cannot_bind_the_same_port(sim: SimServer, tmp_path: Path) -> None:
    """Binding a port in use fails at start (OSError) and leaves no runner behind."""
    async with serving(sim, tmp_path, run=False) as env:
        port = env.url.rsplit(":", 1)[1]
        settings = web_settings(tmp_path / "second", sim, listen=f"127.0.0.1:{port}")
        runtime = await Runtime.build(settings, pve=pve_client(sim))
        try:
            with pytest.raises(OSError):
                await start_web(runtime)
        finally:
            await runtime.close()


async def test_role_less_token_lines_are_warned_about_once(
    sim: SimServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Older name:token and bare-token lines load as admin with one warning naming them."""
    caplog.set_level(logging.INFO)
    async with (
        serving(sim, tmp_path, run=False, headers=BOB) as env,
        env.http.post("/v1/node/drain") as resp,
    ):
        assert resp.status == 200  # bob's line has no role: admin
    warned = [r for r in caplog.records if r.getMessage() == "web.auth_tokens_without_role"]
    assert len(warned) == 1
    assert warned[0].names == ["bob", "token-3"]  # type: ignore[attr-defined]
