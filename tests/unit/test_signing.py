"""Signature verification of destructive ops (SPEC §4 "signed destructive ops"; pure)."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lifecycled.domain.signing import (
    HEADERS,
    IDEMPOTENCY_HEADER,
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    VERSION_HEADER,
    SignatureAccepted,
    SignatureRefused,
    TrustedKey,
    canonical_string,
    parse_timestamp,
    parse_trusted_keys,
    sign,
    trusted_key_line,
    verify,
)
from lifecycled.errors import ConfigError

NOW = 1_732_291_200.0
BODY = b'{"action": "terminate", "vmid": 101}'
NONCE = "n-0123456789abcdef"
SKEW = 300.0
NODE = "pve1"


def keypair(key_id: str) -> tuple[Ed25519PrivateKey, dict[str, TrustedKey]]:
    private = Ed25519PrivateKey.generate()
    keys = parse_trusted_keys(trusted_key_line(key_id, private.public_key()), "test")
    return private, keys


def signed(
    private: Ed25519PrivateKey,
    key_id: str = "ops-2024",
    *,
    timestamp: str = str(int(NOW)),
    nonce: str = NONCE,
    body: bytes = BODY,
    path: str = "/v1/ops",
    node: str = NODE,
    idempotency_key: str | None = None,
) -> dict[str, str]:
    headers = sign(
        private,
        key_id=key_id,
        method="POST",
        path=path,
        body=body,
        timestamp=timestamp,
        nonce=nonce,
        node=node,
        idempotency_key=idempotency_key,
    )
    if idempotency_key is not None:
        headers[IDEMPOTENCY_HEADER] = idempotency_key
    return headers


def check(
    keys: dict[str, TrustedKey],
    headers: dict[str, str],
    *,
    now: float = NOW,
    body: bytes = BODY,
    path: str = "/v1/ops",
    method: str = "POST",
    node: str = NODE,
) -> SignatureAccepted | SignatureRefused:
    return verify(
        keys, method=method, path=path, body=body, headers=headers, node=node, now=now, skew=SKEW
    )


def test_canonical_string_v2_has_the_node_and_the_idempotency_key() -> None:
    """v2, METHOD, PATH, NODE, Idempotency-Key header, TIMESTAMP, NONCE, SHA-256 of the body."""
    digest = hashlib.sha256(BODY).hexdigest()
    text = canonical_string(
        "post", "/v1/ops", "1732291200", NONCE, BODY, node="pve1", idempotency_key="k-1"
    )
    assert text == f"v2\nPOST\n/v1/ops\npve1\nk-1\n1732291200\n{NONCE}\n{digest}".encode()
    assert not text.endswith(b"\n")
    bare = canonical_string("POST", "/v1/ops", "1", NONCE, BODY, node="pve1", idempotency_key=None)
    assert bare.split(b"\n")[4] == b""


def test_a_v1_client_is_told_which_version_to_speak() -> None:
    """A v1 signature (no version header) or another version: signature_version_unsupported,
    naming v2 — not a bare signature_invalid."""
    private, keys = keypair("ops-2024")
    v1 = signed(private)
    del v1[VERSION_HEADER]
    for headers in (v1, {**signed(private), VERSION_HEADER: "v1"}):
        verdict = check(keys, headers)
        assert isinstance(verdict, SignatureRefused)
        assert verdict.code == "signature_version_unsupported" and "v2" in verdict.reason


def test_a_signature_for_another_node_or_idempotency_key_is_invalid() -> None:
    """Captured at pve1's sidecar and replayed at pve2's, or with the Idempotency-Key header
    swapped: signature_invalid."""
    private, keys = keypair("ops-2024")
    assert isinstance(check(keys, signed(private), node="pve2"), SignatureRefused)
    headers = signed(private, idempotency_key="order-1")
    assert isinstance(check(keys, headers), SignatureAccepted)
    swapped = {**headers, IDEMPOTENCY_HEADER: "order-2"}
    verdict = check(keys, swapped)
    assert isinstance(verdict, SignatureRefused) and verdict.code == "signature_invalid"
    dropped = dict(headers)
    del dropped[IDEMPOTENCY_HEADER]
    assert isinstance(check(keys, dropped), SignatureRefused)


def test_a_good_signature_is_accepted_with_its_nonce_expiry() -> None:
    """A valid signature yields the key id, the nonce and until when to remember it."""
    private, keys = keypair("ops-2024")
    verdict = check(keys, signed(private))
    assert isinstance(verdict, SignatureAccepted)
    assert verdict.key_id == "ops-2024" and verdict.nonce == NONCE
    assert verdict.nonce_expires_at == NOW + SKEW


@pytest.mark.parametrize("missing", HEADERS)
def test_each_missing_header_means_signature_required(missing: str) -> None:
    """Without any one of the four v2 signature headers: signature_required, naming it."""
    private, keys = keypair("ops-2024")
    headers = signed(private)
    del headers[missing]
    verdict = check(keys, headers)
    assert isinstance(verdict, SignatureRefused) and verdict.code == "signature_required"
    assert missing in verdict.reason


def test_an_unknown_key_id_is_refused() -> None:
    """A key id not in the trusted keys file: unknown_key."""
    private, keys = keypair("ops-2024")
    verdict = check(keys, signed(private, "someone-else"))
    assert isinstance(verdict, SignatureRefused) and verdict.code == "unknown_key"


@pytest.mark.parametrize(
    ("what", "change"),
    [
        ("body", {"body": b'{"action": "terminate", "vmid": 102}'}),
        ("path", {"path": "/v1/ops?x=1"}),
        ("method", {"method": "PUT"}),
    ],
)
def test_tampering_with_the_request_invalidates_the_signature(
    what: str, change: dict[str, object]
) -> None:
    """Another body, path or method than the one signed: signature_invalid."""
    private, keys = keypair("ops-2024")
    verdict = check(keys, signed(private), **change)  # type: ignore[arg-type]
    assert isinstance(verdict, SignatureRefused) and verdict.code == "signature_invalid", what


def test_a_signature_by_another_key_under_a_trusted_id_is_invalid() -> None:
    """Signed with a different private key than the trusted one for that id: invalid."""
    _, keys = keypair("ops-2024")
    impostor = Ed25519PrivateKey.generate()
    verdict = check(keys, signed(impostor))
    assert isinstance(verdict, SignatureRefused) and verdict.code == "signature_invalid"


@pytest.mark.parametrize("bad", ["not base64!!", base64.b64encode(b"short").decode()])
def test_a_malformed_signature_header_is_invalid(bad: str) -> None:
    """A signature that is not base64 of 64 bytes: signature_invalid."""
    private, keys = keypair("ops-2024")
    headers = {**signed(private), SIGNATURE_HEADER: bad}
    verdict = check(keys, headers)
    assert isinstance(verdict, SignatureRefused) and verdict.code == "signature_invalid"


@pytest.mark.parametrize("nonce", ["short", "has space in it 123", "x" * 129])
def test_a_malformed_nonce_is_invalid(nonce: str) -> None:
    """Nonces are 16-128 characters of a safe alphabet."""
    private, keys = keypair("ops-2024")
    verdict = check(keys, signed(private, nonce=nonce))
    assert isinstance(verdict, SignatureRefused) and verdict.code == "signature_invalid"


@pytest.mark.parametrize("offset", [-SKEW - 1, SKEW + 1])
def test_a_timestamp_outside_the_skew_window_is_expired(offset: float) -> None:
    """Too old or too far in the future: signature_expired."""
    private, keys = keypair("ops-2024")
    verdict = check(keys, signed(private, timestamp=str(int(NOW + offset))))
    assert isinstance(verdict, SignatureRefused) and verdict.code == "signature_expired"


@pytest.mark.parametrize("offset", [-SKEW, 0, SKEW])
def test_a_timestamp_at_the_edges_of_the_window_is_accepted(offset: float) -> None:
    """Exactly skew seconds away is still inside the window."""
    private, keys = keypair("ops-2024")
    verdict = check(keys, signed(private, timestamp=str(int(NOW + offset))))
    assert isinstance(verdict, SignatureAccepted)
    assert verdict.nonce_expires_at == max(NOW + offset, NOW) + SKEW


def test_rfc3339_timestamps_are_accepted_verbatim() -> None:
    """An RFC 3339 timestamp is signed as sent and parsed for the skew check."""
    private, keys = keypair("ops-2024")
    stamp = "2024-11-22T16:00:00Z"
    assert parse_timestamp(stamp) == NOW
    assert parse_timestamp("2024-11-22T17:00:00+01:00") == NOW
    assert isinstance(check(keys, signed(private, timestamp=stamp)), SignatureAccepted)


@pytest.mark.parametrize("stamp", ["yesterday", "2024-11-22T16:00:00", "1e9", "-5", ""])
def test_unreadable_timestamps_are_invalid(stamp: str) -> None:
    """A timestamp that is neither epoch seconds nor RFC 3339 with a zone: signature_invalid."""
    private, keys = keypair("ops-2024")
    headers = {**signed(private), TIMESTAMP_HEADER: stamp}
    verdict = check(keys, headers)
    assert isinstance(verdict, SignatureRefused)
    assert verdict.code == ("signature_required" if not stamp else "signature_invalid")


def test_key_rotation_two_trusted_keys_both_verify() -> None:
    """With old and new keys trusted, requests signed by either pass; removing one refuses it."""
    old = Ed25519PrivateKey.generate()
    new = Ed25519PrivateKey.generate()
    text = "\n".join(
        [
            "# rotation: ops-2024 retires next week",
            trusted_key_line("ops-2024", old.public_key()),
            "",
            trusted_key_line("ops-2025", new.public_key()),
        ]
    )
    keys = parse_trusted_keys(text, "keys")
    assert set(keys) == {"ops-2024", "ops-2025"}
    assert isinstance(check(keys, signed(old, "ops-2024")), SignatureAccepted)
    assert isinstance(
        check(keys, signed(new, "ops-2025", nonce="n-fedcba9876543210")), SignatureAccepted
    )
    # The new key under the old id does not pass: ids bind keys.
    assert isinstance(check(keys, signed(new, "ops-2024")), SignatureRefused)
    only_new = parse_trusted_keys(trusted_key_line("ops-2025", new.public_key()), "keys")
    refused = check(only_new, signed(old, "ops-2024"))
    assert isinstance(refused, SignatureRefused) and refused.code == "unknown_key"


def test_der_public_keys_are_accepted_too() -> None:
    """The base64 of a DER SubjectPublicKeyInfo (openssl's output) names the same key."""
    private = Ed25519PrivateKey.generate()
    der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    keys = parse_trusted_keys(f"k1 ed25519 {base64.b64encode(der).decode()}", "keys")
    assert isinstance(check(keys, signed(private, "k1")), SignatureAccepted)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "holds no key"),
        ("k1 ed25519", "expected KEYID ed25519"),
        ("k1 rsa AAAA", "only ed25519"),
        ("bad/id ed25519 AAAA", "key id"),
        ("k1 ed25519 not-base64!", "base64"),
        ("k1 ed25519 " + base64.b64encode(b"x" * 31).decode(), "32 raw bytes"),
    ],
)
def test_bad_key_files_name_the_problem(text: str, problem: str) -> None:
    """A malformed trusted keys file is a ConfigError naming the line's problem."""
    with pytest.raises(ConfigError, match=problem):
        parse_trusted_keys(text, "keys")


def test_duplicate_key_ids_are_refused() -> None:
    """Two lines with one id would make rotation ambiguous."""
    line = trusted_key_line("k1", Ed25519PrivateKey.generate().public_key())
    with pytest.raises(ConfigError, match="duplicate"):
        parse_trusted_keys(f"{line}\n{line}", "keys")


def test_nonce_header_name_is_stable() -> None:
    """The header names are part of the contract."""
    assert HEADERS == (
        "X-Lifecycled-Key-Id",
        "X-Lifecycled-Timestamp",
        NONCE_HEADER,
        "X-Lifecycled-Signature",
    )
    assert NONCE_HEADER == "X-Lifecycled-Nonce"
