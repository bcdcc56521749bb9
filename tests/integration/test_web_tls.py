"""The API over TLS (``--tls-cert-file``/``--tls-key-file``, client certificates with
``--tls-client-ca-file``), over real HTTPS with trustme certificates (issue 11 point 7)."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import pytest
import trustme
from conftest_web import ALICE, serving

from lifecycled.sim import SimServer


def issue(tmp_path: Path, ca: trustme.CA) -> tuple[Path, Path]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    key_file.chmod(0o600)
    return cert_file, key_file


async def test_the_api_is_served_over_tls(sim: SimServer, tmp_path: Path) -> None:
    """With a certificate and key the URL is https, a client trusting the CA gets its
    answers (authenticated /v1 included), and plain HTTP on that port gets none."""
    ca = trustme.CA()
    cert_file, key_file = issue(tmp_path, ca)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    async with serving(
        sim, tmp_path, run=False, tls_cert_file=cert_file, tls_key_file=key_file
    ) as env:
        assert env.url.startswith("https://127.0.0.1:")
        async with aiohttp.ClientSession(headers=ALICE) as http:
            async with http.get(env.url + "/healthz", ssl=trusting) as resp:
                assert resp.status == 200
            async with http.get(env.url + "/v1/status", ssl=trusting) as resp:
                assert resp.status == 200
                assert (await resp.json())["node"] == "pve1"
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await http.get(env.url + "/healthz")  # the system store does not know the CA
            plain = env.url.replace("https://", "http://")
            with pytest.raises(aiohttp.ClientError):
                async with http.get(plain + "/healthz") as resp:
                    await resp.read()


async def test_client_certificates_are_required_with_a_client_ca(
    sim: SimServer, tmp_path: Path
) -> None:
    """With --tls-client-ca-file a client without a certificate (or with one from another
    CA) is refused in the handshake; one signed by that CA is served."""
    server_ca, client_ca, stranger_ca = trustme.CA(), trustme.CA(), trustme.CA()
    cert_file, key_file = issue(tmp_path, server_ca)
    client_ca_file = tmp_path / "clients-ca.pem"
    client_ca.cert_pem.write_to_path(str(client_ca_file))

    def context(ca: trustme.CA | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        server_ca.configure_trust(ctx)
        if ca is not None:
            ca.issue_cert("controlplane@example.net").configure_cert(ctx)
        return ctx

    async with (
        serving(
            sim,
            tmp_path,
            run=False,
            tls_cert_file=cert_file,
            tls_key_file=key_file,
            tls_client_ca_file=client_ca_file,
        ) as env,
        aiohttp.ClientSession(headers=ALICE) as http,
    ):
        for refused in (context(None), context(stranger_ca)):
            with pytest.raises(aiohttp.ClientError):
                async with http.get(env.url + "/v1/status", ssl=refused) as resp:
                    await resp.read()
        async with http.get(env.url + "/v1/status", ssl=context(client_ca)) as resp:
            assert resp.status == 200
