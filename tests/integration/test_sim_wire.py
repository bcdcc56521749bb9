"""The simulator's wire format and authentication, pinned to reference §2 and §6."""

from __future__ import annotations

import hashlib
import ssl
import time
from collections.abc import Awaitable, Callable

import aiohttp
import trustme

from lifecycled.sim import SimServer
from lifecycled.sim.rawclient import RawClient

TOKEN = "root@pam!lifecycled=lifecycled-sim"
SimFactory = Callable[..., Awaitable[SimServer]]


async def test_success_envelope_and_headers(sim_api: RawClient) -> None:
    """§2.1: 200 with {"data": …}, Content-Type application/json;charset=UTF-8, Server pve-api-daemon/3.0."""
    answer = await sim_api.get("/version")
    assert answer.status == 200
    assert answer.headers["Content-Type"] == "application/json;charset=UTF-8"
    assert answer.headers["Server"] == "pve-api-daemon/3.0"
    assert answer.headers["Cache-Control"] == "max-age=0"
    assert answer.headers["Pragma"] == "no-cache"
    assert set(answer.json) == {"data"}
    assert answer.data["version"]


async def test_error_reason_body_and_connection_close(sim_api: RawClient) -> None:
    """§2.2: a 500 carries the message as reason phrase, {"data":null,"message":"…\\n"} and closes."""
    answer = await sim_api.get("/nodes/pve1/qemu/999/status/current")
    text = "Configuration file 'nodes/pve1/qemu-server/999.conf' does not exist"
    assert (answer.status, answer.reason) == (500, text)
    assert answer.json == {"data": None, "message": text + "\n"}
    assert answer.headers["Connection"] == "close"


async def test_reason_phrase_is_first_line_only(sim: SimServer, sim_api: RawClient) -> None:
    """§2.2: only the first line of a multi-line message goes into the status line."""
    sim.sim.add_fault(method="GET", path="/version$", status=500, reason="first line\nsecond line")
    answer = await sim_api.get("/version")
    assert (answer.status, answer.reason) == (500, "first line")
    assert answer.message == "first line\nsecond line\n"


async def test_parameter_error_is_400_with_errors(sim_api: RawClient) -> None:
    """§2.2, §12.9: a schema failure is 400 'Parameter verification failed.' with per-key errors."""
    answer = await sim_api.post("/nodes/pve1/qemu/100/status/start", {"bogus": "1"})
    assert (answer.status, answer.reason) == (400, "Parameter verification failed.")
    assert answer.errors == {
        "bogus": "property is not defined in schema and the schema does not allow additional properties"
    }
    assert answer.message == "Parameter verification failed.\n"
    assert answer.data is None
    assert answer.headers["Connection"] == "close"


async def test_bad_vmid_type_check(sim_api: RawClient) -> None:
    """§2.3: a non-integer vmid fails the type check with JSONSchema's wording."""
    answer = await sim_api.get("/nodes/pve1/qemu/abc/status/current")
    assert answer.status == 400
    assert answer.errors == {"vmid": "type check ('integer') failed - got 'abc'"}


async def test_unknown_path_is_501(sim_api: RawClient) -> None:
    """§2.2: no handler for method and path → 501 "Method 'GET /x' not implemented"."""
    answer = await sim_api.get("/nodes/pve1/nothing")
    assert (answer.status, answer.reason) == (
        501,
        "Method 'GET /nodes/pve1/nothing' not implemented",
    )


async def test_lxc_has_no_async_config_post(sim_api: RawClient) -> None:
    """§1.2: LXC config is PUT only; POST …/lxc/{vmid}/config is not implemented."""
    answer = await sim_api.post("/nodes/pve2/lxc/103/config", {"cores": "2"})
    assert answer.status == 501


async def test_json_body_and_query_override(sim: SimServer, sim_api: RawClient) -> None:
    """§6: JSON bodies are accepted and query-string parameters override body keys."""
    guest = sim.sim.pick_guest("qemu", running=False)
    path = f"/nodes/{guest.node}/qemu/{guest.vmid}/config?cores=3"
    answer = await sim_api.call("PUT", path, json_body={"cores": 7, "onboot": True})
    assert answer.status == 200, answer.reason
    assert answer.json == {"data": None}
    assert guest.config["cores"] == 3
    assert guest.config["onboot"] == 1


async def test_missing_token_is_401_no_ticket(sim: SimServer) -> None:
    """§6, §12.9: no credentials → 401 'No ticket', empty body, connection closed."""
    async with RawClient(sim.url) as anon:
        answer = await anon.get("/version")
    assert (answer.status, answer.reason, answer.text) == (401, "No ticket", "")
    assert answer.headers["Connection"] == "close"


async def test_wrong_token_is_401_authentication_failed(sim: SimServer) -> None:
    """§12.9: a wrong token secret → 401 'Authentication failed!'."""
    async with RawClient(sim.url, token="root@pam!lifecycled=wrong") as bad:
        answer = await bad.get("/version")
    assert (answer.status, answer.reason) == (401, "Authentication failed!")


async def test_401_is_delayed(sim_factory: SimFactory) -> None:
    """§6: every 401 is delayed (auth_delay, 3 s on real PVE)."""
    server = await sim_factory(auth_delay=0.3)
    async with RawClient(server.url, token="root@pam!lifecycled=nope") as bad:
        started = time.monotonic()
        answer = await bad.get("/version")
    assert answer.status == 401
    assert time.monotonic() - started >= 0.29


async def test_token_header_with_space(sim: SimServer) -> None:
    """§6: extract_auth_value accepts a space instead of '=' after PVEAPIToken."""
    headers = {"Authorization": f"PVEAPIToken {TOKEN}"}
    async with RawClient(sim.url) as client:
        answer = await client.call("GET", "/version", headers=headers)
    assert answer.status == 200


async def test_token_user_in_upid(sim: SimServer, sim_api: RawClient) -> None:
    """§3.1, §6: a token-started task carries user@realm!tokenid in its UPID."""
    guest = sim.sim.pick_guest("qemu", running=False)
    answer = await sim_api.post(f"/nodes/{guest.node}/qemu/{guest.vmid}/status/start")
    assert answer.data.endswith(f":qmstart:{guest.vmid}:root@pam!lifecycled:")


async def test_root_only_option_refused_for_tokens(sim: SimServer, sim_api: RawClient) -> None:
    """§1.1: skiplock is checked against the literal root@pam, so even a root token gets a 400."""
    guest = sim.sim.pick_guest("qemu", running=False)
    path = f"/nodes/{guest.node}/qemu/{guest.vmid}/status/start"
    answer = await sim_api.post(path, {"skiplock": "1"})
    assert answer.status == 400
    assert answer.errors == {"skiplock": "Only root may use this option."}


async def _login(client: RawClient, user: str, password: str) -> dict[str, str]:
    answer = await client.post("/access/ticket", {"username": user, "password": password})
    assert answer.status == 200, answer.reason
    data: dict[str, str] = answer.data
    return data


async def test_ticket_login_and_csrf(sim_factory: SimFactory) -> None:
    """§6: ticket auth uses the PVEAuthCookie cookie; writes also need CSRFPreventionToken."""
    server = await sim_factory(password="pw")
    guest = server.sim.pick_guest("qemu", running=False)
    path = f"/nodes/{guest.node}/qemu/{guest.vmid}/status/start"
    async with RawClient(server.url) as client:
        login = await _login(client, "root@pam", "pw")
        assert login["username"] == "root@pam"
        cookie = {"PVEAuthCookie": login["ticket"]}
        assert (await client.call("GET", "/version", cookies=cookie)).status == 200
        refused = await client.call("POST", path, {}, cookies=cookie)
        assert (refused.status, refused.reason) == (401, "Permission denied - invalid csrf token")
        csrf = {"CSRFPreventionToken": login["CSRFPreventionToken"]}
        started = await client.call("POST", path, {}, cookies=cookie, headers=csrf)
    assert started.status == 200
    assert started.data.endswith(f":qmstart:{guest.vmid}:root@pam:")


async def test_ticket_renewal_and_bad_password(sim_factory: SimFactory) -> None:
    """§6: posting the ticket as the password renews it; a wrong password is a 401."""
    server = await sim_factory(password="pw")
    async with RawClient(server.url) as client:
        first = await _login(client, "root@pam", "pw")
        renewed = await _login(client, "root@pam", first["ticket"])
        assert renewed["ticket"].startswith("PVE:root@pam:")
        wrong = await client.post("/access/ticket", {"username": "root@pam", "password": "x"})
    assert (wrong.status, wrong.reason) == (401, "authentication failure")


async def test_expired_ticket_is_refused(sim_factory: SimFactory) -> None:
    """§6: tickets expire after their lifetime (2 h on PVE); an expired one is a 401."""
    server = await sim_factory(password="pw", ticket_lifetime=0.0)
    async with RawClient(server.url) as client:
        login = await _login(client, "root@pam", "pw")
        answer = await client.call("GET", "/version", cookies={"PVEAuthCookie": login["ticket"]})
    assert answer.status == 401


async def test_root_ticket_may_clear_lock_with_skiplock(sim_factory: SimFactory) -> None:
    """§12.5: only root@pam with skiplock can clear a lock via PUT config delete=lock."""
    server = await sim_factory(password="pw")
    guest = server.sim.pick_guest("qemu", running=False)
    guest.config["lock"] = "backup"
    path = f"/nodes/{guest.node}/qemu/{guest.vmid}/config"
    async with RawClient(server.url, token=server.cfg.token) as token_client:
        refused = await token_client.put(path, {"delete": "lock"})
    assert (refused.status, refused.reason) == (500, "VM is locked (backup)")
    async with RawClient(server.url) as client:
        login = await _login(client, "root@pam", "pw")
        answer = await client.call(
            "PUT",
            path,
            {"delete": "lock", "skiplock": "1"},
            cookies={"PVEAuthCookie": login["ticket"]},
            headers={"CSRFPreventionToken": login["CSRFPreventionToken"]},
        )
    assert answer.status == 200, answer.reason
    assert guest.lock is None


async def test_tls_self_signed(sim_factory: SimFactory) -> None:
    """§6: tls=True serves HTTPS with a generated certificate for 127.0.0.1; fingerprint matches."""
    server = await sim_factory(tls=True)
    assert server.url.startswith("https://127.0.0.1:")
    assert server.cert_pem is not None and server.fingerprint is not None
    der = ssl.PEM_cert_to_DER_cert(server.cert_pem)
    digest = hashlib.sha256(der).hexdigest().upper()
    assert server.fingerprint.replace(":", "") == digest
    trust = ssl.create_default_context(cadata=server.cert_pem)
    async with RawClient(server.url, token=server.cfg.token, ssl_context=trust) as client:
        answer = await client.get("/version")
    assert answer.status == 200


async def test_tls_injected_context(sim_factory: SimFactory) -> None:
    """§6: an injected SSLContext is served as is; the fingerprint is read from the handshake."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert = ca.issue_cert("127.0.0.1")
    cert.configure_cert(server_ctx)
    server = await sim_factory(ssl_context=server_ctx)
    assert server.cert_pem is None
    der = ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())
    assert server.fingerprint is not None
    assert server.fingerprint.replace(":", "") == hashlib.sha256(der).hexdigest().upper()
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    async with RawClient(server.url, token=server.cfg.token, ssl_context=client_ctx) as client:
        answer = await client.get("/version")
    assert answer.status == 200


async def test_control_api_needs_no_auth(sim: SimServer) -> None:
    """The /_sim/ control endpoint is a test tool: no credentials needed."""
    async with aiohttp.ClientSession() as session, session.get(f"{sim.url}/_sim/state") as resp:
        assert resp.status == 200
        body = await resp.json()
    assert {n["name"] for n in body["nodes"]} == {"pve1", "pve2"}
