"""Signed destructive ops over real HTTP, replays across a restart (SPEC §4)."""

from __future__ import annotations

import asyncio
import base64
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

from lifecycled.domain.signing import (
    TIMESTAMP_HEADER,
    VERSION_HEADER,
    body_digest,
    sign,
    trusted_key_line,
)
from lifecycled.sim import Guest, SimServer

PATH = "/v1/ops"


def write_keys(tmp_path: Path, **keys: Ed25519PrivateKey) -> Path:
    path = tmp_path / "trusted-keys"
    lines = ["# trusted signing keys"]
    lines += [trusted_key_line(key_id, key.public_key()) for key_id, key in keys.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path.chmod(0o600)
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
    private: Ed25519PrivateKey,
    key_id: str,
    body: bytes,
    *,
    timestamp: float | None = None,
    path: str = PATH,
    node: str = "pve1",
) -> dict[str, str]:
    return sign(
        private,
        key_id=key_id,
        method="POST",
        path=path,
        body=body,
        timestamp=str(int(time.time() if timestamp is None else timestamp)),
        nonce=secrets.token_urlsafe(18),
        node=node,
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


def submission(guest: Guest, action: str, key: str, **params: Any) -> bytes:
    body = {
        "action": action,
        "vmid": guest.vmid,
        "kind": guest.kind,
        "node": guest.node,
        "params": params,
        "idempotency_key": key,
    }
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("action", "params"),
    [
        pytest.param("shutdown", {"force_stop": True}, id="shutdown-force-stop"),
        pytest.param("configure", {"delete": "scsi0"}, id="configure-delete-disk"),
        pytest.param("configure", {"delete": "unused0"}, id="configure-delete-unused"),
        pytest.param("configure", {"virtio1": "none"}, id="configure-disk-none"),
        pytest.param("configure", {"protection": 0}, id="configure-protection-off"),
        pytest.param(
            "migrate", {"target": "pve2", "with-local-disks": 1}, id="migrate-local-disks"
        ),
    ],
)
async def test_destructive_variants_of_other_actions_need_a_signature(
    sim: SimServer, tmp_path: Path, action: str, params: dict[str, Any]
) -> None:
    """Destructive whatever the name: unsigned → 401 signature_required, no op, one refused
    audit record; signed → 202. The harmless variant of the same action needs none."""
    guest = pick_on(sim, "pve1", "qemu", running=True)
    await manage(tmp_path / "journal.sqlite3", guest)
    private = Ed25519PrivateKey.generate()
    keys = write_keys(tmp_path, ops=private)
    async with serving(sim, tmp_path, run=False, trusted_keys_file=keys) as env:
        body = submission(guest, action, "k-unsigned", **params)
        status, answer = await post_raw(env, body, {})
        assert status == 401 and answer["error"]["code"] == "signature_required", answer
        assert await env.op_count() == 0
        assert await refusals(env) == ["signature_required"]
        status, answer = await post_raw(env, body, signature(private, "ops", body))
        assert status == 202, answer
        harmless: dict[str, dict[str, Any]] = {
            "shutdown": {},
            "configure": {"cores": 2},
            "migrate": {"target": "pve2"},
        }
        plain = submission(guest, action, "k-plain", **harmless[action])
        status, answer = await post_raw(env, plain, {})
        assert status == 202, answer
        assert await env.op_count() == 2


async def test_a_v1_signature_gets_a_clear_version_error(sim: SimServer, tmp_path: Path) -> None:
    """An old client's five-line signature without the version header: 401
    signature_version_unsupported naming v2; nothing journaled but the refusal."""
    guest = pick_on(sim, "pve1", "qemu", running=False)
    await manage(tmp_path / "journal.sqlite3", guest)
    private = Ed25519PrivateKey.generate()
    keys = write_keys(tmp_path, ops=private)
    body = terminate_body(guest)
    stamp, nonce = str(int(time.time())), secrets.token_urlsafe(18)
    v1 = "\n".join(("POST", PATH, stamp, nonce, body_digest(body))).encode()
    headers = {
        "X-Lifecycled-Key-Id": "ops",
        "X-Lifecycled-Timestamp": stamp,
        "X-Lifecycled-Nonce": nonce,
        "X-Lifecycled-Signature": base64.b64encode(private.sign(v1)).decode(),
    }
    async with serving(sim, tmp_path, run=False, trusted_keys_file=keys) as env:
        status, answer = await post_raw(env, body, headers)
        assert status == 401
        assert answer["error"]["code"] == "signature_version_unsupported"
        assert "v2" in answer["error"]["message"]
        assert VERSION_HEADER in answer["error"]["message"]
        assert await env.op_count() == 0
        assert await env.runtime.journal.nonce_count() == 0


async def test_a_request_signed_for_another_node_or_key_header_is_refused(
    sim: SimServer, tmp_path: Path
) -> None:
    """A terminate signed for pve2's sidecar, or sent with another Idempotency-Key header
    than signed, is signature_invalid here (pve1); signed with the header, it is accepted."""
    guest = pick_on(sim, "pve1", "qemu", running=False)
    await manage(tmp_path / "journal.sqlite3", guest)
    private = Ed25519PrivateKey.generate()
    keys = write_keys(tmp_path, ops=private)
    body = json.dumps({"action": "terminate", "vmid": guest.vmid, "kind": "qemu"}).encode()
    async with serving(sim, tmp_path, run=False, trusted_keys_file=keys) as env:
        status, answer = await post_raw(env, body, signature(private, "ops", body, node="pve2"))
        assert status == 401 and answer["error"]["code"] == "signature_invalid"
        signed = sign(
            private,
            key_id="ops",
            method="POST",
            path=PATH,
            body=body,
            timestamp=str(int(time.time())),
            nonce=secrets.token_urlsafe(18),
            node="pve1",
            idempotency_key="order-7",
        )
        status, answer = await post_raw(env, body, {**signed, "Idempotency-Key": "order-8"})
        assert status == 401 and answer["error"]["code"] == "signature_invalid"
        assert await env.op_count() == 0
        signed[VERSION_HEADER] = "v2"
        status, answer = await post_raw(env, body, {**signed, "Idempotency-Key": "order-7"})
        assert status == 202 and answer["idempotency_key"] == "order-7", answer


async def test_retrying_a_destructive_dead_letter_needs_a_fresh_signature(
    sim: SimServer, tmp_path: Path
) -> None:
    """POST /v1/dead-letters/{id}/retry of a stop: unsigned → 401 and it stays a dead letter;
    signed over the empty body → 200 pending; a non-destructive dead letter needs none."""
    guest = pick_on(sim, "pve1", "qemu", running=True)
    other = pick_on(sim, "pve1", "qemu", running=False)
    private = Ed25519PrivateKey.generate()
    keys = write_keys(tmp_path, ops=private)
    sim.sim.add_fault(method="POST", path=r"/status/(stop|start)$", status=595, count=None)
    async with serving(sim, tmp_path, trusted_keys_file=keys) as env:
        stop = submission(guest, "stop", "dl-stop")
        status, op = await post_raw(env, stop, signature(private, "ops", stop))
        assert status == 202, op
        start = submission(other, "start", "dl-start")
        status, plain = await post_raw(env, start, {})
        assert status == 202, plain
        assert (await env.wait_state(op["id"]))["state"] == "dead_lettered"
        assert (await env.wait_state(plain["id"]))["state"] == "dead_lettered"
        path = f"/v1/dead-letters/{op['id']}/retry"
        async with env.http.post(path) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == "signature_required"
        _, still = await env.get_json(f"/v1/ops/{op['id']}")
        assert still["state"] == "dead_lettered"
        async with env.http.post(path, headers=signature(private, "ops", b"", path=path)) as resp:
            assert resp.status == 200
            assert (await resp.json())["state"] in ("pending", "dispatching", "running")
        async with env.http.post(f"/v1/dead-letters/{plain['id']}/retry") as resp:
            assert resp.status == 200
        assert "signature_required" in await refusals(env)


async def test_re_arming_a_destructive_key_needs_a_fresh_signature(
    sim: SimServer, tmp_path: Path
) -> None:
    """A failed stop's key re-armed by resubmission: the first request's signature replayed
    is nonce_replayed (op stays failed); signed afresh it is re-armed (202)."""
    guest = pick_on(sim, "pve1", "qemu", running=True)
    private = Ed25519PrivateKey.generate()
    keys = write_keys(tmp_path, ops=private)
    fault = sim.sim.add_fault(method="POST", path=r"/status/stop$", status=403, count=None)
    async with serving(sim, tmp_path, trusted_keys_file=keys) as env:
        body = submission(guest, "stop", "rearm-stop")
        first = signature(private, "ops", body)
        status, op = await post_raw(env, body, first)
        assert status == 202, op
        assert (await env.wait_state(op["id"]))["state"] == "failed"
        sim.sim.remove_fault(fault.id)
        status, answer = await post_raw(env, body, first)
        assert status == 401 and answer["error"]["code"] == "nonce_replayed"
        _, still = await env.get_json(f"/v1/ops/{op['id']}")
        assert still["state"] == "failed"
        status, again = await post_raw(env, body, signature(private, "ops", body))
        assert status == 202 and again["id"] == op["id"], again


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
    daemon refuses it (signature_required) and the client exits with one error line; a
    forced shutdown without --node is signed for the node /v1/status names."""
    guest = pick_on(sim, "pve1", "qemu", running=False)
    other = pick_on(sim, "pve1", "qemu", running=True)
    await manage(tmp_path / "journal.sqlite3", guest, other)
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
        # Without --node the client signs for the node /v1/status names (v2 covers it).
        forced = [
            "shutdown",
            str(other.vmid),
            *common[2:4],
            *common[6:],
            "-p",
            "force_stop=1",
            "--key",
            "signed-2",
            "--signing-key",
            str(pem),
            "--key-id",
            "ops",
        ]
        assert await asyncio.to_thread(client.main, forced) == 0
        assert await env.runtime.journal.nonce_count() == 2


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
