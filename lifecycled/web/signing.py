"""Signed destructive ops over HTTP (SPEC §4): the trusted keys, loaded at start, and the
check ``POST /v1/ops`` runs before anything is journaled.

Without ``--trusted-keys-file`` no signature is required (logged once at start). With it, a
destructive submission (:func:`lifecycled.domain.actions.is_destructive`: terminate, stop,
reset, a forced shutdown, a disk-removing or protection-lifting configure, a local-disk
migrate, a forced create) and the retry of such a dead letter need the ``X-Lifecycled-*``
headers of :mod:`lifecycled.domain.signing` (v2); a missing, invalid, expired, outdated or
replayed signature is answered 401 with a stable code and audited as refused. The nonce is
recorded in the journal, so a replay is refused even after a restart; a re-armed idempotency
key or a retried dead letter therefore needs a fresh signature.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

from aiohttp import web

from lifecycled.audit import AuditRecord, Decision
from lifecycled.config import read_secret_text
from lifecycled.domain.actions import is_destructive
from lifecycled.domain.signing import (
    KEY_ID_HEADER,
    KEY_ID_RE,
    NONCE_REPLAYED,
    SignatureRefused,
    TrustedKey,
    parse_trusted_keys,
    verify,
)
from lifecycled.engine.runtime import Runtime
from lifecycled.engine.submit import Submission
from lifecycled.web.errors import ApiError

log = logging.getLogger("lifecycled.web")

#: Param names kept in a refusal's audit record (names only; values are in the digest).
_AUDITED_PARAM_NAMES = 32
_CHALLENGE = {"WWW-Authenticate": 'Signature realm="lifecycled", algorithm="ed25519"'}


async def load_trusted_keys(path: Path) -> dict[str, TrustedKey]:
    """Read and parse the trusted keys file off the event loop."""
    text = await asyncio.to_thread(read_secret_text, path, "trusted keys")
    return parse_trusted_keys(text, str(path))


class SignatureGate:
    """Holds the trusted keys, loaded by the app's start-up hook (``None``: not required)."""

    def __init__(self, keys_file: Path | None) -> None:
        self.keys_file = keys_file
        self.keys: dict[str, TrustedKey] | None = None
        self.loaded = False

    async def load(self, _app: web.Application) -> None:
        """``on_startup`` hook: read the keys, or say once that no signature is required."""
        if self.keys_file is None:
            log.warning(
                "web.signatures_not_required",
                extra={
                    "hint": "no --trusted-keys-file: destructive ops are accepted without a "
                    "signature"
                },
            )
        else:
            await self.reload()
        self.loaded = True

    async def reload(self) -> str:
        """Read the trusted keys again and swap them in at once (SIGHUP); on an error the keys
        in force stay. Returns what was loaded, for the audit record."""
        if self.keys_file is None:
            return "trusted keys: none (signatures not required)"
        keys = await load_trusted_keys(self.keys_file)
        log.info(
            "web.trusted_keys_loaded", extra={"keys": sorted(keys), "path": str(self.keys_file)}
        )
        self.keys = keys
        return f"trusted keys: {', '.join(sorted(keys)) or 'none'} from {self.keys_file}"


SIGNATURE_GATE_KEY = web.AppKey("signature_gate", SignatureGate)


def _audit(
    sub: Submission,
    actor: str,
    refusal: SignatureRefused,
    key_id: str | None,
    now: float,
    body: bytes,
) -> AuditRecord:
    """The audit record of a refused signature: the validated submission's identity and a
    bounded digest of the body (never the body itself)."""
    return AuditRecord(
        at=now,
        actor=actor,
        action=sub.action,
        decision=Decision.REFUSED,
        reason=f"{refusal.code}: {refusal.reason}",
        vmid=sub.vmid,
        node=sub.node,
        snapshot={
            "key_id": key_id,
            "kind": sub.kind,
            "idempotency_key": sub.idempotency_key,
            "params": sorted(sub.params)[:_AUDITED_PARAM_NAMES],
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "body_bytes": len(body),
        },
    )


def _refused(refusal: SignatureRefused) -> ApiError:
    return ApiError(401, refusal.code, refusal.reason, headers=_CHALLENGE)


async def require_signature(
    request: web.Request, runtime: Runtime, sub: Submission, actor: str
) -> None:
    """Refuse (401, audited) a destructive request without a valid, fresh signature.

    ``sub`` is what the request would run: the submission, or the dead letter to retry."""
    gate = request.app[SIGNATURE_GATE_KEY]
    if not gate.loaded:
        raise ApiError(503, "not_ready", "signature keys are not loaded yet")
    if gate.keys is None or not is_destructive(sub.action, sub.kind, sub.params):
        return
    now = runtime.clock.now()
    raw_key_id = request.headers.get(KEY_ID_HEADER)
    key_id = raw_key_id if raw_key_id and KEY_ID_RE.fullmatch(raw_key_id) else None
    body = await request.read()
    verdict = verify(
        gate.keys,
        method=request.method,
        path=request.raw_path,
        body=body,
        headers=request.headers,
        node=runtime.settings.primary_node,
        now=now,
        skew=runtime.settings.signature_skew,
    )
    if isinstance(verdict, SignatureRefused):
        await runtime.journal.append_audit(_audit(sub, actor, verdict, key_id, now, body))
        _log_refusal(sub, actor, verdict.code, key_id)
        raise _refused(verdict)
    replay = SignatureRefused(
        code=NONCE_REPLAYED,
        reason="this signed request was already received (its nonce was used); sign it afresh",
    )
    fresh = await runtime.journal.remember_nonce(
        verdict.nonce,
        verdict.key_id,
        now=now,
        expires_at=verdict.nonce_expires_at,
        on_replay=_audit(sub, actor, replay, key_id, now, body),
    )
    if not fresh:
        _log_refusal(sub, actor, replay.code, key_id)
        raise _refused(replay)
    log.info(
        "http.signature_accepted",
        extra={"action": sub.action, "vmid": sub.vmid, "actor": actor, "key_id": key_id},
    )


def _log_refusal(sub: Submission, actor: str, code: str, key_id: str | None) -> None:
    log.warning(
        "http.signature_refused",
        extra={
            "action": sub.action,
            "vmid": sub.vmid,
            "actor": actor,
            "code": code,
            "key_id": key_id,
        },
    )
