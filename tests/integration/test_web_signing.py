"""Signed destructive ops over real HTTP, replays across a restart (SPEC §4)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import secrets
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest_web import WebEnv, serving
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from node_support import manage, pick_on

from lifecycled.domain.signing import TIMESTAMP_HEADER, sign, trusted_key_line
from lifecycled.sim import Guest, SimServer

PATH = "/v1/ops"


def write_keys(tmp_path: Path, **keys: Ed25519PrivateKey) -> Path:
    path = tmp_path / "trusted-keys"
    lines = ["# trusted signing keys"]
    lines += [trusted_key_line(key_id, key.public_key()) for key_id, key in keys.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def terminate_body(guest: Guest, key: str = "order-1-terminate") -> bytes:
    body = {
        "action": "terminate",
        "vmid": guest.vmid,
        "kind": guest.kind,
        "node": guest.node,
        "idempotency_key": key,
    }
    return json.dumps(body).encode()


def signature(
    private: Ed25519PrivateKey, key_id: str, body: bytes, *, timestamp: float | None = None
) -> dict[str, str]:
    return sign(
        private,
        key_id=key_id,
        method="POST",
        path=PATH,
        body=body,
        timestamp=str(int(time.time() if timestamp is None else timestamp)),
        nonce=secrets.token_urlsafe(18),
    )


async def post_raw(env: WebEnv, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    all_headers = {"Content-Type": "application/json", **headers}
    async with env.http.post(PATH, data=body, headers=all_headers) as resp:
        return resp.status, await resp.json()


async def refusals(env: WebEnv) -> list[str]:
    page = await env.runtime.journal.list_audit(decision="refused")
    return [r.reason.split(":", 1)[0] for r in page.items]


async def test_without_keys_no_signature_is_needed(sim: SimServer, tmp_path: Path) -> None:
    """No trusted keys file: an unsigned terminate is accepted and /v1/node says so."""
    guest = pick_on(sim, "pve1", "qemu", running=False)
    await manage(tmp_path / "journal.sqlite3", guest)
    async with serving(sim, tmp_path, run=False) as env:
        status, body = await post_raw(env, terminate_body(guest), {})
        assert status == 202, body
        _, node = await env.get_json("/v1/node")
        assert node["signatures_required"] is False


async def test_an_unsigned_destructive_request_is_refused_and_writes_nothing_else(
    sim: SimServer, tmp_path: Path
) -> None:
    """With keys configured, a terminate without a signature is 401 signature_required; no op,
    no nonce, one refused audit record. A start needs no signature."""
    guest = pick_on(sim, "pve1", "qemu", running=False)
    other = pick_on(sim, "pve1", "lxc", running=False)
    await manage(tmp_path / "journal.sqlite3", guest, other)
    keys = write_keys(tmp_path, ops=Ed25519PrivateKey.generate())
    async with serving(sim, tmp_path, run=False, trusted_keys_file=keys) as env:
        status, body = await post_raw(env, terminate_body(guest), {})
        assert status == 401
        assert body["error"]["code"] == "signature_required"
        assert "X-Lifecycled-Signature" in body["error"]["message"]
        assert await env.op_count() == 0
        assert await env.runtime.journal.nonce_count() == 0
        records = (await env.runtime.journal.list_audit(decision="refused")).items
        assert len(records) == 1
        assert records[0].action == "terminate" and records[0].vmid == guest.vmid
        assert records[0].actor == "api:alice"
        status, _ = await env.submit(
            {"action": "start", "vmid": other.vmid, "kind": "lxc", "node": "pve1"}
        )
        assert status == 202
        _, node = await env.get_json("/v1/node")
        assert node["signatures_required"] is True


async def test_a_valid_signed_terminate_is_accepted(sim: SimServer, tmp_path: Path) -> None:
    """A terminate signed by a trusted key is journaled (202) and its nonce remembered."""
    guest = pick_on(sim, "pve1", "qemu", running=False)
    await manage(tmp_path / "journal.sqlite3", guest)
    private = Ed25519PrivateKey.generate()
    keys = write_keys(tmp_path, ops=private)
    body = terminate_body(guest)
    async with serving(sim, tmp_path, run=False, trusted_keys_file=keys) as env:
        status, op = await post_raw(env, body, signature(private, "ops", body))
        assert status == 202, op
        assert op["action"] == "terminate" and op["state"] == "pending"
        assert await env.runtime.journal.nonce_count() == 1
        assert await refusals(env) == []


async def test_a_replay_is_refused_before_and_after_a_restart(
    sim: SimServer, tmp_path: Path
) -> None:
    """The same signed request sent again is 401 nonce_replayed, also after the runtime
    restarted on the same journal; each replay is audited; only one op exists."""
    guest = pick_on(sim, "pve1", "qemu", running=False)
    await manage(tmp_path / "journal.sqlite3", guest)
    private = Ed25519PrivateKey.generate()
    keys = write_keys(tmp_path, ops=private)
    body = terminate_body(guest)
    headers = signature(private, "ops", body)
    async with serving(sim, tmp_path, run=False, trusted_keys_file=keys) as env:
        status, _ = await post_raw(env, body, headers)
        assert status == 202
        status, answer = await post_raw(env, body, headers)
        assert status == 401 and answer["error"]["code"] == "nonce_replayed"
    async with serving(sim, tmp_path, trusted_keys_file=keys) as env:
        status, answer = await post_raw(env, body, headers)
        assert status == 401 and answer["error"]["code"] == "nonce_replayed"
        assert await env.op_count() == 1
        assert await refusals(env) == ["nonce_replayed", "nonce_replayed"]
        # Signed afresh, the same request (same idempotency key) is simply deduplicated.
        status, again = await post_raw(env, body, signature(private, "ops", body))
        assert status == 200 and again["deduplicated"] is True


async def test_bad_signatures_are_refused_with_stable_codes(sim: SimServer, tmp_path: Path) -> None:
    """Unknown key, tampered body, expired timestamp: 401 with their codes, each audited."""
    guest = pick_on(sim, "pve1", "qemu", running=True)
    await manage(tmp_path / "journal.sqlite3", guest)
    private = Ed25519PrivateKey.generate()
    keys = write_keys(tmp_path, ops=private)
    stop = json.dumps(
        {"action": "stop", "vmid": guest.vmid, "kind": "qemu", "node": "pve1"}
    ).encode()
    async with serving(sim, tmp_path, run=False, trusted_keys_file=keys) as env:
        cases = [
            (signature(Ed25519PrivateKey.generate(), "stranger", stop), stop, "unknown_key"),
            (signature(private, "ops", stop), stop.replace(b"stop", b"reset"), "signature_invalid"),
            (
                signature(private, "ops", stop, timestamp=time.time() - 3600),
                stop,
                "signature_expired",
            ),
            (
                {**signature(private, "ops", stop), TIMESTAMP_HEADER: "soon"},
                stop,
                "signature_invalid",
            ),
        ]
        for headers, body, code in cases:
            status, answer = await post_raw(env, body, headers)
            assert status == 401, (code, answer)
            assert answer["error"]["code"] == code
        assert await env.op_count() == 0
        assert await env.runtime.journal.nonce_count() == 0
        assert sorted(await refusals(env)) == sorted(code for _, _, code in cases)


async def test_two_trusted_keys_allow_rotation(sim: SimServer, tmp_path: Path) -> None:
    """With the old and the new key trusted, both sign successfully."""
    first = pick_on(sim, "pve1", "qemu", running=True)
    second = pick_on(sim, "pve1", "qemu", running=True, avoid={first.vmid})
    await manage(tmp_path / "journal.sqlite3", first, second)
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    keys = write_keys(tmp_path, **{"ops-2024": old, "ops-2025": new})
    async with serving(sim, tmp_path, run=False, trusted_keys_file=keys) as env:
        for guest, key_id, private in ((first, "ops-2024", old), (second, "ops-2025", new)):
            body = json.dumps(
                {"action": "stop", "vmid": guest.vmid, "kind": "qemu", "node": "pve1"}
            ).encode()
            status, answer = await post_raw(env, body, signature(private, key_id, body))
            assert status == 202, answer
        assert await env.op_count() == 2


def load_client() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "examples" / "client.py"
    spec = importlib.util.spec_from_file_location("lifecycled_example_client_signing", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_example_client_signs_what_the_daemon_verifies(
    sim: SimServer, tmp_path: Path
) -> None:
    """examples/client.py --signing-key/--key-id gets a terminate accepted; without them the
    daemon refuses it (signature_required) and the client exits with one error line."""
    guest = pick_on(sim, "pve1", "qemu", running=False)
    await manage(tmp_path / "journal.sqlite3", guest)
    private = Ed25519PrivateKey.generate()
    pem = tmp_path / "ops.pem"
    pem.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    keys = write_keys(tmp_path, ops=private)
    client = load_client()
    async with serving(sim, tmp_path, run=False, trusted_keys_file=keys) as env:
        common = [
            "terminate",
            str(guest.vmid),
            "--kind",
            "qemu",
            "--node",
            "pve1",
            "--url",
            env.url,
            "--token-file",
            str(tmp_path / "api-tokens"),
            "--attempts",
            "1",
            "--no-wait",
        ]
        with pytest.raises(SystemExit, match="signature_required"):
            await asyncio.to_thread(client.main, [*common, "--key", "unsigned-1"])
        signed_argv = [*common, "--key", "signed-1", "--signing-key", str(pem), "--key-id", "ops"]
        assert await asyncio.to_thread(client.main, signed_argv) == 0
        assert await env.op_count() == 1
        assert await env.runtime.journal.nonce_count() == 1


async def test_a_malformed_destructive_request_is_refused_before_any_audit(
    sim: SimServer, tmp_path: Path
) -> None:
    """With keys configured, an invalid terminate is 422 and leaves no audit row; a refused
    signature is audited with the body's digest, never its params' values."""
    guest = pick_on(sim, "pve1", "qemu", running=False)
    await manage(tmp_path / "journal.sqlite3", guest)
    keys = write_keys(tmp_path, ops=Ed25519PrivateKey.generate())
    async with serving(sim, tmp_path, run=False, trusted_keys_file=keys) as env:
        before = len((await env.runtime.journal.list_audit(limit=500)).items)
        for params in ({"purge": "x" * 5000}, {"junk\u0000": 1}, {"purge": {"nested": 1}}):
            body = json.loads(terminate_body(guest))
            status, answer = await post_raw(
                env, json.dumps({**body, "params": params}).encode(), {}
            )
            assert status == 422, answer
            assert answer["error"]["code"] == "validation_failed"
        assert len((await env.runtime.journal.list_audit(limit=500)).items) == before
        secret_looking = {**json.loads(terminate_body(guest)), "params": {"purge": True}}
        raw = json.dumps(secret_looking).encode()
        status, answer = await post_raw(env, raw, {})
        assert status == 401
        record = (await env.runtime.journal.list_audit(decision="refused")).items[0]
        assert record.snapshot is not None
        assert record.snapshot["params"] == ["purge"]
        assert record.snapshot["body_bytes"] == len(raw)
        assert len(record.snapshot["body_sha256"]) == 64
        assert await env.op_count() == 0
