"""The door of the HTTP API over real HTTP: same origin, roles, limits (docs/SECURITY.md)."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import aiohttp
import trustme
from conftest_web import ALICE, OPERATOR, READER, WebEnv, pick, serving

from lifecycled.audit import AuditRecord, Decision
from lifecycled.sim import SimServer

EVIL = "http://evil.example"


def _port(env: WebEnv) -> int:
    return int(env.url.rsplit(":", 1)[1])


async def _audit_refusals(env: WebEnv) -> list[Any]:
    page = await env.runtime.journal.list_audit(decision="refused", limit=100)
    return list(page.items)


async def _raw_post(
    env: WebEnv, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, str], Any]:
    """A POST as a page would send it: no default headers of the test client."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(env.url + path, data=body, headers=headers) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.json()


# --- a local browser ---------------------------------------------------------------------------


async def test_a_cross_origin_text_plain_terminate_is_refused(
    sim: SimServer, tmp_path: Path
) -> None:
    """Loopback-only mode: a page's text/plain POST of a terminate is 403 and writes no op; a
    preflight is never allowed; the same request from the daemon's own origin is accepted."""
    guest = pick(sim, "qemu", running=False)
    body = json.dumps({"action": "terminate", "vmid": guest.vmid, "kind": "qemu"}).encode()
    async with serving(sim, tmp_path, run=False, tokens=None) as env:
        async with env.http.options(
            "/v1/ops", headers={"Origin": EVIL, "Access-Control-Request-Method": "POST"}
        ) as resp:
            assert resp.status == 403
            assert not any(h.lower().startswith("access-control-") for h in resp.headers)
        for headers in (
            {"Content-Type": "text/plain", "Origin": EVIL},
            {"Content-Type": "text/plain", "Origin": "null"},
            {"Content-Type": "text/plain", "Sec-Fetch-Site": "cross-site"},
            {"Content-Type": "text/plain", "Origin": f"http://localhost:{_port(env) + 1}"},
        ):
            status, resp_headers, answer = await _raw_post(env, "/v1/ops", body, headers)
            assert status == 403, (headers, answer)
            assert answer["error"]["code"] == "cross_origin"
            assert not any(h.lower().startswith("access-control-") for h in resp_headers)
        assert await env.op_count() == 0
        assert guest.vmid in sim.sim.guests
        own = f"http://127.0.0.1:{_port(env)}"
        status, _h, answer = await _raw_post(
            env,
            "/v1/ops",
            body,
            {"Content-Type": "application/json", "Origin": own, "Sec-Fetch-Site": "same-origin"},
        )
        assert status == 202, answer


async def test_with_tokens_a_foreign_origin_is_refused_too(sim: SimServer, tmp_path: Path) -> None:
    """Token mode: even with a valid admin token, a write from another origin is 403."""
    guest = pick(sim, "qemu", running=False)
    async with serving(sim, tmp_path, run=False, headers=ALICE) as env:
        status, answer = await env.submit(
            {"action": "start", "vmid": guest.vmid, "kind": "qemu"}, headers={"Origin": EVIL}
        )
        assert status == 403
        assert answer["error"]["code"] == "cross_origin"
        assert await env.op_count() == 0


async def test_a_rebinding_host_is_refused(sim: SimServer, tmp_path: Path) -> None:
    """A Host naming another site (DNS rebinding) is 421 on every path; own names pass."""
    async with serving(sim, tmp_path, run=False, tokens=None) as env:
        port = _port(env)
        for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1:{port + 1}"):
            for path in ("/v1/status", "/metrics"):
                async with env.http.get(path, headers={"Host": host}) as resp:
                    assert resp.status == 421, (host, path)
                    assert (await resp.json())["error"]["code"] == "host_not_allowed"
        for host in (f"localhost:{port}", "127.0.0.1", f"[::1]:{port}", f"127.0.0.1:{port}"):
            async with env.http.get("/v1/status", headers={"Host": host}) as resp:
                assert resp.status == 200, host


async def test_a_refused_write_is_audited_with_a_bounded_digest(
    sim: SimServer, tmp_path: Path
) -> None:
    """A cross-site 60 KB body leaves one small audit row: its hash, length and first bytes."""
    body = b'{"action": "terminate", "pad": "' + b"x" * 60_000 + b'"}'
    async with serving(sim, tmp_path, run=False, tokens=None) as env:
        status, _h, _a = await _raw_post(
            env, "/v1/ops", body, {"Content-Type": "text/plain", "Origin": EVIL}
        )
        assert status == 403
        [row] = await _audit_refusals(env)
    assert row.reason.startswith("cross_origin")
    assert row.snapshot["body_bytes"] == len(body)
    assert row.snapshot["body_head"] == body[:32].decode()
    assert len(row.snapshot["body_sha256"]) == 64
    assert len(json.dumps(row.snapshot)) < 1024


async def test_a_flood_of_refusals_cannot_flood_the_audit_log(
    sim: SimServer, tmp_path: Path
) -> None:
    """60 refused cross-site writes: all answered 403, audited only up to the burst (30) plus
    one a second."""
    async with serving(sim, tmp_path, run=False, tokens=None) as env:
        started = env.runtime.clock.now()
        for _ in range(60):
            status, _h, _a = await _raw_post(
                env, "/v1/ops", b"{}", {"Content-Type": "text/plain", "Origin": EVIL}
            )
            assert status == 403
        elapsed = env.runtime.clock.now() - started
        audited = len(await _audit_refusals(env))
    assert 30 <= audited <= 30 + math.ceil(elapsed)


# --- roles -------------------------------------------------------------------------------------


async def test_a_read_token_reads_and_cannot_write(sim: SimServer, tmp_path: Path) -> None:
    """read: GETs answer; a submission, a cancel and a desired-state change are 403."""
    guest = pick(sim, "qemu", running=False)
    async with serving(sim, tmp_path, run=False, headers=READER) as env:
        assert (await env.get_json("/v1/ops"))[0] == 200
        assert (await env.get_json("/v1/status"))[0] == 200
        status, answer = await env.submit({"action": "start", "vmid": guest.vmid, "kind": "qemu"})
        assert status == 403
        assert answer["error"]["code"] == "insufficient_scope"
        assert answer["error"]["details"] == {"required_role": "operate", "role": "read"}
        async with env.http.post("/v1/ops/1/cancel") as resp:
            assert resp.status == 403
        async with env.http.put(
            f"/v1/guests/{guest.vmid}/desired", json={"desired_state": "running"}
        ) as resp:
            assert resp.status == 403
        assert await env.op_count() == 0


async def test_an_operate_token_cannot_destroy_or_change_ownership(
    sim: SimServer, tmp_path: Path
) -> None:
    """operate: start and cancel work; terminate, stop, manage, node drain, dead letters are 403."""
    avoid: set[int] = set()
    stopped = pick(sim, "qemu", running=False, avoid=avoid)
    running = pick(sim, "qemu", running=True, avoid=avoid)
    async with serving(sim, tmp_path, run=False, headers=OPERATOR) as env:
        status, op = await env.submit({"action": "start", "vmid": stopped.vmid, "kind": "qemu"})
        assert status == 202, op
        async with env.http.post(f"/v1/ops/{op['id']}/cancel") as resp:
            assert resp.status == 200
        for action, guest in (("terminate", stopped), ("stop", running), ("reset", running)):
            status, answer = await env.submit(
                {"action": action, "vmid": guest.vmid, "kind": "qemu"}
            )
            assert status == 403, action
            assert answer["error"]["details"]["required_role"] == "admin"
        for method, path in (
            ("POST", f"/v1/guests/{stopped.vmid}/manage"),
            ("POST", f"/v1/guests/{stopped.vmid}/release"),
            ("POST", "/v1/node/drain"),
            ("POST", f"/v1/dead-letters/{op['id']}/retry"),
            ("DELETE", f"/v1/dead-letters/{op['id']}"),
        ):
            async with env.http.request(method, path) as resp:
                assert resp.status == 403, path
                assert (await resp.json())["error"]["code"] == "insufficient_scope"
        assert await env.op_count() == 1
        refused = await _audit_refusals(env)
        assert {r.action for r in refused} >= {"terminate", "stop", "reset", "drainNode"}
        assert all(r.actor == "api:operator" for r in refused)
        assert (await env.runtime.journal.get(op["id"])).state == "cancelled"


async def test_an_admin_token_may_destroy(sim: SimServer, tmp_path: Path) -> None:
    """admin: a terminate is accepted (202) and the node can be drained."""
    guest = pick(sim, "qemu", running=False)
    async with serving(sim, tmp_path, run=False, headers=ALICE) as env:
        status, op = await env.submit({"action": "terminate", "vmid": guest.vmid, "kind": "qemu"})
        assert status == 202, op
        async with env.http.post("/v1/node/drain") as resp:
            assert resp.status == 200


# --- limits ------------------------------------------------------------------------------------


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Everything the server sends until it closes the connection (within ``seconds``)."""
    async with asyncio.timeout(seconds):
        return await reader.read()


async def test_slowloris_connections_are_closed_within_the_timeout(
    sim: SimServer, tmp_path: Path
) -> None:
    """Half-sent request heads trickling a byte at a time are closed after http_timeout."""
    async with serving(sim, tmp_path, run=False, http_timeout=1.0) as env:
        port = _port(env)
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(10)]
        for _reader, writer in conns:
            writer.write(b"POST /v1/ops HTTP/1.1\r\nHost: 127.0.0.1\r\n")

        async def trickle() -> None:
            for _ in range(20):
                await asyncio.sleep(0.25)
                for _reader, writer in conns:
                    if not writer.is_closing():
                        writer.write(b"X")

        trickler = asyncio.create_task(trickle())
        try:
            started = asyncio.get_running_loop().time()
            for reader, _writer in conns:
                assert await _closed_within(reader, 4.0) == b""
            assert asyncio.get_running_loop().time() - started < 4.0
        finally:
            trickler.cancel()
            for _reader, writer in conns:
                writer.close()
        async with env.http.get("/healthz") as resp:
            assert resp.status == 200


async def test_a_slow_body_is_408_and_closed(sim: SimServer, tmp_path: Path) -> None:
    """A complete head whose body never finishes is answered 408 and closed."""
    async with serving(sim, tmp_path, run=False, http_timeout=1.0) as env:
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(env))
        writer.write(
            b"POST /v1/ops HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
            b"alice-secret-0001\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"action"'
        )
        try:
            answer = await _closed_within(reader, 6.0)
        finally:
            writer.close()
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]
        assert b'"request_timeout"' in answer
        assert await env.op_count() == 0


async def test_connections_beyond_the_cap_are_refused(sim: SimServer, tmp_path: Path) -> None:
    """With max_connections=3, a fourth connection gets 503 and is closed; freed slots serve."""
    async with serving(sim, tmp_path, run=False, max_connections=3) as env:
        port = _port(env)
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answer = await _closed_within(reader, 3.0)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 503 "), answer[:80]
        assert b'"too_many_connections"' in answer
        for _reader, held_writer in held:
            held_writer.close()
            await held_writer.wait_closed()
        async with asyncio.timeout(5):
            while True:
                try:
                    async with aiohttp.ClientSession() as http, http.get(env.url + "/healthz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)


async def test_writes_beyond_the_rate_are_429_with_retry_after(
    sim: SimServer, tmp_path: Path
) -> None:
    """A token's writes beyond its burst are 429 with Retry-After; another token is unaffected."""
    async with serving(
        sim, tmp_path, run=False, write_rate=0.1, write_burst=2, headers=OPERATOR
    ) as env:
        statuses = []
        for _ in range(3):
            async with env.http.post("/v1/ops/999/cancel") as resp:
                statuses.append(resp.status)
                last = resp.headers.get("Retry-After"), await resp.json()
        assert statuses == [404, 404, 429]
        retry_after, body = last
        assert retry_after is not None and int(retry_after) >= 1
        assert body["error"]["code"] == "rate_limited"
        async with env.http.get("/v1/ops") as resp:
            assert resp.status == 200  # reads are not limited
        async with env.http.post("/v1/ops/999/cancel", headers=ALICE) as resp:
            assert resp.status == 404


async def test_loopback_writes_are_limited_per_peer(sim: SimServer, tmp_path: Path) -> None:
    """Loopback-only mode: the peer's writes beyond the burst are 429."""
    async with serving(sim, tmp_path, run=False, tokens=None, write_rate=0.1, write_burst=1) as env:
        async with env.http.post("/v1/ops/999/cancel") as resp:
            assert resp.status == 404
        async with env.http.post("/v1/ops/999/cancel") as resp:
            assert resp.status == 429
            assert resp.headers["Retry-After"] == "10"


# --- audit retention ---------------------------------------------------------------------------


async def test_audit_prune_over_http_is_admin_only(sim: SimServer, tmp_path: Path) -> None:
    """POST /v1/audit/prune: operate is 403; admin deletes older records and is audited."""
    async with serving(sim, tmp_path, run=False, headers=ALICE) as env:
        journal = env.runtime.journal
        now = env.runtime.clock.now()
        await journal.append_audit(
            AuditRecord(
                at=now - 100 * 86400,
                actor="cli",
                action="stop",
                decision=Decision.ALLOWED,
                reason="old",
            )
        )
        async with env.http.post(
            "/v1/audit/prune", json={"older_than_days": 90}, headers=OPERATOR
        ) as resp:
            assert resp.status == 403
        for bad in (0, "90d", True, 36501):
            async with env.http.post("/v1/audit/prune", json={"older_than_days": bad}) as resp:
                assert resp.status == 400, bad
        async with env.http.post("/v1/audit/prune", json={"older_than_days": 90}) as resp:
            assert resp.status == 200
            body = await resp.json()
        assert body["pruned"] == 1
        assert body["audit"]["actor"] == "api:alice"
        left = (await journal.list_audit()).items
        assert "old" not in {r.reason for r in left}
        assert [r.action for r in left if r.decision is Decision.PRUNED] == ["audit_prune"]


async def test_the_openapi_document_names_roles_and_limits(sim: SimServer, tmp_path: Path) -> None:
    """Each /v1 operation names its role; writes declare 408 and 429, every route 421."""
    async with serving(sim, tmp_path, run=False) as env:
        _status, doc = await env.get_json("/openapi.json")
    paths = doc["paths"]
    roles = {
        ("post", "/v1/ops"): "operate",
        ("get", "/v1/ops"): "read",
        ("post", "/v1/ops/{id}/cancel"): "operate",
        ("delete", "/v1/dead-letters/{id}"): "admin",
        ("post", "/v1/guests/{vmid}/manage"): "admin",
        ("post", "/v1/audit/prune"): "admin",
    }
    for (method, path), role in roles.items():
        assert paths[path][method]["x-lifecycled-role"] == role, (method, path)
    assert {"408", "429"} <= paths["/v1/ops"]["post"]["responses"].keys()
    assert "429" not in paths["/v1/ops"]["get"]["responses"]
    assert "421" in paths["/healthz"]["get"]["responses"]


async def test_an_unfinished_tls_handshake_is_closed_within_the_timeout(
    sim: SimServer, tmp_path: Path
) -> None:
    """A TLS listener closes a connection that sends a partial ClientHello, after http_timeout."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    key_file.chmod(0o600)
    async with serving(
        sim, tmp_path, run=False, tls_cert_file=cert_file, tls_key_file=key_file, http_timeout=1.0
    ) as env:
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(env))
        writer.write(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, never finished
        try:
            assert await _closed_within(reader, 5.0) == b""
        finally:
            writer.close()
