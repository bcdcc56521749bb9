"""Every rejection answers the JSON error shape and writes nothing to the journal (SPEC §5)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest_web import WebEnv, pick, serving

from lifecycled.errors import JournalUnavailable
from lifecycled.journal import Journal, SubmitRequest, SubmitResult
from lifecycled.sim import SimServer


def _assert_error(body: Any, code: str) -> None:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)


async def _post_raw(env: WebEnv, data: bytes, **headers: str) -> tuple[int, Any, str]:
    hdrs = {"Content-Type": "application/json", **headers}
    async with env.http.post("/v1/ops", data=data, headers=hdrs) as resp:
        return resp.status, await resp.json(), resp.content_type


async def test_malformed_bodies_are_400_and_write_nothing(sim: SimServer, tmp_path: Path) -> None:
    """Non-JSON, non-UTF-8, non-object and deeply nested bodies answer 400 malformed_json."""
    async with serving(sim, tmp_path, run=False) as env:
        for data in (
            b"",
            b"{",
            b"not json",
            b"[1, 2]",
            b'"start"',
            b"\xff\xfe{}",
            b"[" * 5000 + b"]" * 5000,
        ):
            status, body, ctype = await _post_raw(env, data)
            assert status == 400, data[:20]
            assert ctype == "application/json"
            _assert_error(body, "malformed_json")
        assert await env.op_count() == 0


async def test_wrong_types_and_missing_fields_are_400(sim: SimServer, tmp_path: Path) -> None:
    """Wrong JSON types and missing required fields answer 400 invalid_request per field."""
    cases: list[tuple[dict[str, Any], set[str]]] = [
        ({}, {"action", "vmid"}),
        ({"action": 1, "vmid": "101"}, {"action", "vmid"}),
        ({"action": "start", "vmid": True}, {"vmid"}),
        ({"action": "start", "vmid": 101.5}, {"vmid"}),
        ({"action": "start", "vmid": 101, "params": []}, {"params"}),
        ({"action": "start", "vmid": 101, "kind": 5, "node": ["a"]}, {"kind", "node"}),
        ({"action": "start", "vmid": 101, "idempotency_key": 7}, {"idempotency_key"}),
    ]
    async with serving(sim, tmp_path, run=False) as env:
        for sub, fields in cases:
            status, body = await env.submit(sub)
            assert status == 400, sub
            _assert_error(body, "invalid_request")
            assert set(body["error"]["details"]) == fields, sub
        assert await env.op_count() == 0


async def test_unknown_fields_are_400(sim: SimServer, tmp_path: Path) -> None:
    """A field the submission does not know answers 400 unknown_field naming it."""
    async with serving(sim, tmp_path, run=False) as env:
        status, body = await env.submit({"action": "start", "vmid": 101, "force": True, "x": 1})
        assert status == 400
        _assert_error(body, "unknown_field")
        assert body["error"]["details"] == {"force": "unknown field", "x": "unknown field"}
        assert await env.op_count() == 0


async def test_invalid_submissions_are_422_with_details(sim: SimServer, tmp_path: Path) -> None:
    """Unknown action, vmid out of range, unsupported kind/action, missing params: 422; an
    unknown guest 404 and an action the guest's kind (read from Proxmox) lacks 409."""
    qemu = pick(sim, "qemu", running=False)
    lxc = pick(sim, "lxc", running=False)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"action": "explode", "vmid": qemu.vmid}, "action"),
        ({"action": "start", "vmid": 99}, "vmid"),
        ({"action": "start", "vmid": 1_000_000_000}, "vmid"),
        ({"action": "reset", "vmid": lxc.vmid, "kind": "lxc", "node": lxc.node}, "action"),
        ({"action": "resize", "vmid": qemu.vmid, "params": {"size": "40G"}}, "params.disk"),
        ({"action": "resize", "vmid": qemu.vmid, "params": {"disk": "scsi0"}}, "params.size"),
        ({"action": "migrate", "vmid": qemu.vmid}, "params.target"),
        ({"action": "start", "vmid": qemu.vmid, "kind": "docker"}, "kind"),
        ({"action": "start", "vmid": qemu.vmid, "idempotency_key": "bad key!"}, "idempotency_key"),
        ({"action": "start", "vmid": qemu.vmid, "params": {"Bad Key": 1}}, "params.Bad Key"),
    ]
    async with serving(sim, tmp_path, run=False) as env:
        for sub, field in cases:
            status, body = await env.submit(sub)
            assert status == 422, sub
            _assert_error(body, "validation_failed")
            assert field in body["error"]["details"], (sub, body)
        status, body = await env.submit({"action": "start", "vmid": 999_999})
        assert status == 404
        _assert_error(body, "guest_not_found")
        # The kind read from Proxmox does not take the action: the guest's state refuses it.
        status, body = await env.submit({"action": "reset", "vmid": lxc.vmid})
        assert status == 409
        _assert_error(body, "unsupported_action")
        # Without a kind a param either kind takes passes the door; the kind read from
        # Proxmox then refuses a qemu disk on a container.
        # A managed guest named with another node or kind than its journal row: the row
        # refuses it (both values named), not the request's shape.
        status, body = await env.submit(
            {"action": "start", "vmid": qemu.vmid, "kind": "lxc", "node": "elsewhere"}
        )
        assert status == 421  # a node this daemon does not serve (SPEC §7)
        _assert_error(body, "wrong_node")
        other = "pve2" if qemu.node == "pve1" else "pve1"
        status, body = await env.submit(
            {"action": "start", "vmid": qemu.vmid, "kind": "lxc", "node": other}
        )
        assert status == 409
        _assert_error(body, "placement_mismatch")
        assert set(body["error"]["details"]) == {"node", "kind"}
        resize = {"action": "resize", "vmid": lxc.vmid, "params": {"disk": "scsi0", "size": "9G"}}
        status, body = await env.submit(resize)
        assert status == 409
        _assert_error(body, "unsupported_params")
        assert await env.op_count() == 0


async def test_a_body_over_the_limit_is_413(sim: SimServer, tmp_path: Path) -> None:
    """A body larger than max_body_bytes answers 413, with or without a Content-Length."""
    async with serving(sim, tmp_path, run=False, max_body_bytes=2048) as env:
        big = json.dumps({"action": "start", "vmid": 101, "params": {"x": "a" * 4096}}).encode()
        status, body, _ = await _post_raw(env, big)
        assert status == 413
        _assert_error(body, "body_too_large")
        assert body["error"]["details"] == {"max_bytes": 2048}

        async def chunks() -> Any:
            for _ in range(8):
                yield b" " * 512

        async with env.http.post(
            "/v1/ops", data=chunks(), headers={"Content-Type": "application/json"}
        ) as resp:
            assert resp.status == 413
            _assert_error(await resp.json(), "body_too_large")
        assert await env.op_count() == 0


async def test_unknown_routes_and_methods_answer_json(sim: SimServer, tmp_path: Path) -> None:
    """404 for unknown paths, 405 with Allow for wrong methods — JSON, never HTML."""
    async with serving(sim, tmp_path, run=False) as env:
        for path in ("/nope", "/v1/nope", "/v1/ops/1/explode", "/"):
            async with env.http.get(path) as resp:
                assert resp.status == 404, path
                assert resp.content_type == "application/json"
                _assert_error(await resp.json(), "not_found")
        async with env.http.put("/v1/ops") as resp:
            assert resp.status == 405
            assert resp.headers["Allow"] == "GET, POST"
            body = await resp.json()
        _assert_error(body, "method_not_allowed")
        assert body["error"]["details"] == {"allowed_methods": ["GET", "POST"]}
        async with env.http.post("/healthz") as resp:
            assert resp.status == 405
            _assert_error(await resp.json(), "method_not_allowed")
        assert await env.op_count() == 0


async def test_submissions_are_refused_with_503_while_stopping(
    sim: SimServer, tmp_path: Path
) -> None:
    """Once a stop is requested POST /v1/ops answers 503 with Retry-After; reads still work."""
    guest = pick(sim, "qemu", running=False)
    async with serving(sim, tmp_path, run=False) as env:
        env.runtime.request_stop()
        async with env.http.post("/v1/ops", json={"action": "start", "vmid": guest.vmid}) as resp:
            assert resp.status == 503
            assert resp.headers["Retry-After"].isdigit()
            _assert_error(await resp.json(), "shutting_down")
        status, _ = await env.get_json("/v1/ops")
        assert status == 200
        assert await env.op_count() == 0


async def test_a_read_only_journal_answers_503(sim: SimServer, tmp_path: Path) -> None:
    """A journal that cannot write (opened read-only) makes POST /v1/ops answer 503."""
    guest = pick(sim, "qemu", running=False)
    async with serving(sim, tmp_path, run=False) as env:
        writable = env.runtime.journal
        readonly = await Journal.open(writable.path, readonly=True, migrate=False)
        env.runtime.journal = env.runtime.services.journal = readonly
        try:
            sub = {"action": "start", "vmid": guest.vmid, "kind": "qemu", "node": guest.node}
            async with env.http.post("/v1/ops", json=sub) as resp:
                assert resp.status == 503
                assert resp.headers["Retry-After"].isdigit()
                _assert_error(await resp.json(), "journal_unavailable")
        finally:
            env.runtime.journal = env.runtime.services.journal = writable
            await readonly.close()
        assert await env.op_count() == 0


async def test_journal_unavailable_anywhere_is_503(
    sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """JournalUnavailable from the journal (e.g. a full disk) maps to 503 journal_unavailable."""

    async def full_disk(_req: SubmitRequest, *, now: float, **_kw: object) -> SubmitResult:
        raise JournalUnavailable("journal is unavailable: database or disk is full")

    guest = pick(sim, "qemu", running=False)
    async with serving(sim, tmp_path, run=False) as env:
        monkeypatch.setattr(env.runtime.journal, "submit", full_disk)
        monkeypatch.setattr(env.runtime.journal, "submit_guest_op", full_disk)
        status, body = await env.submit(
            {"action": "start", "vmid": guest.vmid, "kind": "qemu", "node": guest.node}
        )
        assert status == 503
        _assert_error(body, "journal_unavailable")
        assert await env.op_count() == 0


async def test_errors_never_leak_a_traceback(
    sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected failure in a handler answers 500 internal_error without internals."""

    async def boom(**_kw: Any) -> Any:
        raise RuntimeError("secret internals /etc/passwd")

    async with serving(sim, tmp_path, run=False) as env:
        monkeypatch.setattr(env.runtime.journal, "list_ops", boom)
        async with env.http.get("/v1/ops") as resp:
            assert resp.status == 500
            text = await resp.text()
        assert "Traceback" not in text and "passwd" not in text
        _assert_error(json.loads(text), "internal_error")


async def test_a_client_error_does_not_break_the_connection(sim: SimServer, tmp_path: Path) -> None:
    """After a 4xx on a keep-alive connection the next request on it is served normally."""
    async with serving(sim, tmp_path, run=False) as env:
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(
            base_url=env.url,
            connector=connector,
            headers={"Authorization": "Bearer alice-secret-0001"},
        ) as one:
            async with one.post(
                "/v1/ops", data=b"{", headers={"Content-Type": "application/json"}
            ) as resp:
                assert resp.status == 400
            async with one.get("/v1/ops") as resp:
                assert resp.status == 200


async def test_repeated_keys_media_types_and_numbers_are_refused(
    sim: SimServer, tmp_path: Path
) -> None:
    """A repeated JSON key is 400 duplicate_key, a non-JSON body 415, a number beyond 64 bits
    or not finite 400 invalid_number, a trailing newline in a field 422; nothing is written."""
    guest = pick(sim, "qemu", running=False)
    valid = {"action": "start", "vmid": guest.vmid, "kind": "qemu", "node": guest.node}
    text = json.dumps(valid)
    async with serving(sim, tmp_path, run=False) as env:
        dup = (text[:-1] + ', "action": "terminate"}').encode()
        status, body, _ = await _post_raw(env, dup)
        assert status == 400
        _assert_error(body, "duplicate_key")
        assert body["error"]["details"] == {"key": "action"}
        for ctype in (
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/json; charset=latin-1",
        ):
            status, body, _ = await _post_raw(env, text.encode(), **{"Content-Type": ctype})
            assert status == 415, ctype
            _assert_error(body, "unsupported_media_type")
        for number in ("1e400", "NaN", "-Infinity", "9223372036854775808", "1" * 30):
            raw = text.replace(f'"vmid": {guest.vmid}', f'"vmid": {number}').encode()
            status, body, _ = await _post_raw(env, raw)
            assert status == 400, number
            _assert_error(body, "invalid_number")
        for field in ("node", "idempotency_key", "kind", "action"):
            status, body = await env.submit({**valid, field: f"{valid.get(field, 'k1')}\n"})
            assert status == 422, field
            assert field in body["error"]["details"]
        assert await env.op_count() == 0
        status, _ = await env.submit({**valid, "vmid": float(guest.vmid)})  # 101.0 is 101
        assert status == 202


async def test_audit_filters_match_the_document_exactly(sim: SimServer, tmp_path: Path) -> None:
    """/v1/audit takes an action word and RFC 3339 times exactly as documented, nothing looser."""
    async with serving(sim, tmp_path, run=False) as env:
        _, doc = await env.get_json("/openapi.json")
        params = {p["name"]: p for p in doc["paths"]["/v1/audit"]["get"]["parameters"]}
        assert params["action"]["schema"]["pattern"] == "^[A-Za-z0-9_\\-]{1,64}$"
        for query in (
            "action=",
            "action=stop%0A",
            "action=st%C3%B6p",
            "since=2020-01-01%2000:00:00Z",
            "since=2020-01-01",
            "until=20200101T000000Z",
            "until=0000-01-01T00:00:00Z",
        ):
            status, body = await env.get_json(f"/v1/audit?{query}")
            assert status == 400, query
            _assert_error(body, "invalid_query")
        for query in (
            "action=drain",
            "since=2020-01-01t00:00:00.5z",
            "until=2999-01-01T00:00:00%2B01:00",
        ):
            status, _ = await env.get_json(f"/v1/audit?{query}")
            assert status == 200, query
