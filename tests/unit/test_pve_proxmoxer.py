"""The proxmoxer adapter's mapping of proxmoxer answers and failures, with a fake ProxmoxAPI."""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import threading
from collections.abc import Callable
from typing import Any

import pytest
import requests
import urllib3.exceptions
from proxmoxer.core import AuthenticationError, ResourceException

from lifecycled.domain.actions import Action
from lifecycled.domain.classify import ErrorClass
from lifecycled.domain.op import GuestKind
from lifecycled.domain.upid import Upid
from lifecycled.errors import ConfigError, PveError
from lifecycled.pve.auth import TokenAuth
from lifecycled.pve.port import PveClient
from lifecycled.pve.proxmoxer_backend import ProxmoxerPveClient, build_proxmoxer_client
from lifecycled.pve.proxmoxer_errors import upid_text
from lifecycled.pve.tls import TlsOptions

UPID_TEXT = "UPID:pve1:00001234:00ABCDEF:65000000:qmstart:100:root@pam:"
SECRET = "9f8e7d6c-5b4a-3928-1716-151413121110"

Handler = Callable[[str, str, dict[str, Any]], Any]


class FakeResource:
    def __init__(self, api: FakeApi, path: str) -> None:
        self._api, self._path = api, path

    def _do(self, method: str, params: dict[str, Any]) -> Any:
        self._api.calls.append((method, self._path, params, threading.current_thread().name))
        return self._api.handler(method, self._path, params)

    def get(self, **params: Any) -> Any:
        return self._do("GET", params)

    def post(self, **data: Any) -> Any:
        return self._do("POST", data)

    def put(self, **data: Any) -> Any:
        return self._do("PUT", data)

    def delete(self, **params: Any) -> Any:
        return self._do("DELETE", params)


class FakeApi:
    """Stands in for ``ProxmoxAPI``: ``api("nodes/pve1/…").post(**data)``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.calls: list[tuple[str, str, dict[str, Any], str]] = []

    def __call__(self, path: str) -> FakeResource:
        return FakeResource(self, "/" + path)


def client_for(
    handler: Handler, *, backend: str = "local", hooks: list[tuple[str, str, str]] | None = None
) -> tuple[ProxmoxerPveClient, FakeApi]:
    api = FakeApi(handler)

    def hook(method: str, endpoint: str, code: str, seconds: float) -> None:
        if hooks is not None:
            hooks.append((method, endpoint, code))

    client = ProxmoxerPveClient(
        lambda: api,
        backend=backend,
        user="root@pam",
        timeout=5.0,
        max_workers=2,
        on_request=hook,
        secrets=[SECRET],
    )
    return client, api


def raising(exc: BaseException) -> Handler:
    def handler(method: str, path: str, params: dict[str, Any]) -> Any:
        raise exc

    return handler


async def failed(client: ProxmoxerPveClient, action: Action = Action.START) -> PveError:
    with pytest.raises(PveError) as info:
        await client.dispatch("pve1", GuestKind.QEMU, action, 100, {})
    await client.close()
    return info.value


async def test_client_satisfies_the_port() -> None:
    """ProxmoxerPveClient is accepted where a PveClient is expected."""
    client, _ = client_for(lambda m, p, d: None)
    port: PveClient = client
    assert port.user == "root@pam"
    await port.close()


async def test_calls_after_close_fail_without_sending() -> None:
    """A closed client refuses calls: transient, nothing sent."""
    client, api = client_for(lambda m, p, d: UPID_TEXT)
    await client.close()
    err = await failed(client)
    assert (err.error_class, err.sent) == (ErrorClass.TRANSIENT, False)
    assert not api.calls


async def test_calls_run_in_the_pool_with_form_fields() -> None:
    """A lifecycle call runs in a pool thread with the catalogued path and wire fields."""
    client, api = client_for(lambda m, p, d: UPID_TEXT)
    got = await client.dispatch(
        "pve1", GuestKind.QEMU, Action.SHUTDOWN, 100, {"force_stop": True, "timeout": 30}
    )
    await client.close()
    assert got == Upid.parse(UPID_TEXT)
    ((method, path, params, thread),) = api.calls
    assert (method, path, params) == (
        "POST",
        "/nodes/pve1/qemu/100/status/shutdown",
        {"forceStop": "1", "timeout": "30"},
    )
    assert thread.startswith("pve-local")


async def test_cli_output_with_task_log_yields_the_upid() -> None:
    """When pvesh's output could not be parsed, the last UPID in it is the answer."""
    raw = f"starting\nUPID stuff\n{UPID_TEXT!r}\n"
    assert upid_text({"errors": raw.encode()}) == UPID_TEXT
    assert upid_text({"errors": b""}) is None
    assert upid_text(UPID_TEXT) == UPID_TEXT
    assert upid_text(None) is None


async def test_https_resource_exception_uses_the_reason() -> None:
    """https: ``content`` is the status-line reason; ``errors`` come from the body."""
    exc = ResourceException(
        400,
        "Bad Request",
        "Parameter verification failed.",
        errors={"skiplock": "Only root may use this option."},
    )
    client, _ = client_for(raising(exc), backend="https")
    err = await failed(client)
    assert (err.status, err.reason, err.error_class) == (
        400,
        "Parameter verification failed.",
        ErrorClass.PERMANENT,
    )
    assert err.errors == {"skiplock": "Only root may use this option."}


async def test_cli_stderr_is_parsed() -> None:
    """pvesh: ``NNN reason`` is stripped to the reason; ``param: text`` lines become errors."""
    exc = ResourceException(
        400,
        "Bad Request",
        "400 Parameter verification failed.\nupid: no such task\n",
    )
    client, _ = client_for(raising(exc))
    with pytest.raises(PveError) as info:
        await client.task_status(Upid.parse(UPID_TEXT))
    await client.close()
    assert (info.value.reason, info.value.errors) == (
        "Parameter verification failed.",
        {"upid": "no such task"},
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("CT 100 already running\n", ErrorClass.SATISFIED),  # for a start: the action counts
        ("VM is locked (backup)\n", ErrorClass.LOCKED),
        (
            "can't lock file '/var/lock/qemu-server/lock-100.conf' - got timeout\n",
            ErrorClass.TRANSIENT,
        ),
        (
            "can't lock file '/var/log/pve/tasks/.active.lock' - got timeout\n",
            ErrorClass.AMBIGUOUS,
        ),
    ],
)
async def test_cli_500_text_is_classified(text: str, expected: ErrorClass) -> None:
    """A handler's bare ``die`` text (pvesh's 500) is classified by text and action."""
    client, _ = client_for(raising(ResourceException(500, "Internal Server Error", text)))
    err = await failed(client)
    assert (err.reason, err.error_class) == (text.strip(), expected)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(f'{{"data": "{UPID_TEXT}"}}\x00junk'.encode(), id="upid-then-junk"),
        pytest.param(b'{"data": "UPID:pve1:0000', id="cut"),
    ],
)
async def test_https_unreadable_answer_to_a_write_is_ambiguous(body: bytes) -> None:
    """https: a 200 body proxmoxer cannot parse is ambiguous, as with aiohttp."""
    client, _ = client_for(lambda m, p, d: {"errors": body}, backend="https")
    err = await failed(client)
    assert (err.status, err.error_class) == (200, ErrorClass.AMBIGUOUS)


async def test_cli_upid_with_nine_hex_digits_of_pstart_is_the_answer() -> None:
    """A 9-hex-digit pstart UPID that proxmoxer took for a 500 is found by our parser."""
    upid = "UPID:pve1:00001234:1ABCDEF01:65000000:qmstart:100:root@pam:"
    output = f'starting VM 100\n"{upid}"\n'
    client, _ = client_for(raising(ResourceException(500, "Internal Server Error", output)))
    got = await client.dispatch("pve1", GuestKind.QEMU, Action.START, 100, {})
    await client.close()
    assert got == Upid.parse(upid)
    assert got is not None and got.pstart == 0x1ABCDEF01


@pytest.mark.parametrize("status", [596, 599])
async def test_proxy_status_on_write_is_ambiguous(status: int) -> None:
    """596/599 from proxmoxer on a POST: ambiguous."""
    exc = ResourceException(status, "Errors during TLS negotiation", "Connection timed out")
    client, _ = client_for(raising(exc), backend="https")
    assert (await failed(client)).error_class is ErrorClass.AMBIGUOUS


@pytest.mark.parametrize(
    ("exc", "sent", "expected"),
    [
        (requests.exceptions.ReadTimeout("read timed out"), True, ErrorClass.AMBIGUOUS),
        (
            requests.exceptions.ConnectionError(
                urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError())
            ),
            True,
            ErrorClass.AMBIGUOUS,
        ),
        (
            requests.exceptions.ConnectionError(
                urllib3.exceptions.MaxRetryError(
                    None,  # type: ignore[arg-type]
                    "/",
                    urllib3.exceptions.NewConnectionError(None, "refused"),  # type: ignore[arg-type]
                )
            ),
            False,
            ErrorClass.TRANSIENT,
        ),
        (requests.exceptions.ConnectTimeout("connect"), False, ErrorClass.TRANSIENT),
        (subprocess.TimeoutExpired(["pvesh"], 5), True, ErrorClass.AMBIGUOUS),
        (RuntimeError("odd"), True, ErrorClass.AMBIGUOUS),
    ],
)
async def test_no_answer_mapping(exc: Exception, sent: bool, expected: ErrorClass) -> None:
    """Timeouts and lost connections after sending are ambiguous; connect failures transient."""
    client, _ = client_for(raising(exc), backend="https")
    err = await failed(client)
    assert (err.status, err.sent, err.error_class) == (None, sent, expected)


async def test_no_answer_on_a_read_is_transient() -> None:
    """A read that times out is transient."""
    client, _ = client_for(raising(requests.exceptions.ReadTimeout("slow")), backend="https")
    with pytest.raises(PveError) as info:
        await client.cluster_resources()
    await client.close()
    assert info.value.error_class is ErrorClass.TRANSIENT


async def test_connect_failure_is_not_sent() -> None:
    """A failing ``ProxmoxAPI`` construction (login, ssh) means nothing was sent."""

    def connect() -> Any:
        raise AuthenticationError("Couldn't authenticate user: root@pam")

    client = ProxmoxerPveClient(connect, backend="https", user="root@pam", timeout=5.0)
    err = await failed(client)
    assert (err.status, err.sent, err.error_class) == (401, False, ErrorClass.TRANSIENT)


async def test_missing_pvesh_is_permanent() -> None:
    """The local backend off a Proxmox node: pvesh is missing, a permanent error."""
    client, _ = client_for(raising(FileNotFoundError(2, "No such file", "pvesh")))
    err = await failed(client)
    assert (err.error_class, err.sent) == (ErrorClass.PERMANENT, False)
    assert "pvesh not found" in err.reason


async def test_secrets_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    """A failure text echoing the secret shows ``***`` instead, in errors and logs."""
    caplog.set_level(logging.DEBUG)
    client, _ = client_for(raising(RuntimeError(f"token {SECRET} leaked")), backend="https")
    err = await failed(client)
    assert SECRET not in str(err)
    assert "***" in err.reason
    assert SECRET not in caplog.text


async def test_hook_labels_and_codes() -> None:
    """The hook gets one call per proxmoxer call, with endpoint templates and codes."""
    hooks: list[tuple[str, str, str]] = []

    def handler(method: str, path: str, params: dict[str, Any]) -> Any:
        if path.endswith("/status/current"):
            raise ResourceException(500, "Internal Server Error", "Configuration file missing")
        return {"status": "running"} if method == "GET" else UPID_TEXT

    client, _ = client_for(handler, hooks=hooks)
    await client.dispatch("pve1", GuestKind.LXC, Action.START, 104, {})
    await client.task_status(Upid.parse(UPID_TEXT))
    with pytest.raises(PveError):
        await client.guest_status("pve1", GuestKind.LXC, 104)
    await client.close()
    assert hooks == [
        ("POST", "/nodes/{node}/{kind}/{vmid}/status/{action}", "200"),
        ("GET", "/nodes/{node}/tasks/{upid}/status", "200"),
        ("GET", "/nodes/{node}/{kind}/{vmid}/status/current", "500"),
    ]


async def test_task_list_total_is_unknown() -> None:
    """proxmoxer returns only ``data``: the total is unknown and a full page means "more"."""
    item = {"upid": UPID_TEXT, "starttime": 0x65000000, "status": "OK"}
    client, api = client_for(lambda m, p, d: [item])
    got = await client.tasks("pve1", vmid=100, typefilter="qmstart", source="archive")
    await client.close()
    assert got.total is None
    assert got.more_after(start=0, limit=1) and not got.more_after(start=0, limit=2)
    assert api.calls[0][2] == {
        "source": "archive",
        "vmid": 100,
        "typefilter": "qmstart",
        "start": 0,
        "limit": 50,
    }


def test_factory_effective_users() -> None:
    """The effective UPID user: root@pam for pvesh, the token user or ticket user for https."""
    token = TokenAuth(user="root@pam!lifecycled", secret=SECRET)
    assert build_proxmoxer_client("local").user == "root@pam"
    assert build_proxmoxer_client("https", "127.0.0.1:8006", token=token).user == (
        "root@pam!lifecycled"
    )
    ticket = build_proxmoxer_client("https", "127.0.0.1", user="ops@pve", password="pw")
    assert ticket.user == "ops@pve"


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("telnet",), {}, "unknown proxmoxer backend"),
        (("local", "pve1"), {}, "give no host"),
        (("https",), {}, "needs a host"),
        (("https", "127.0.0.1"), {}, "needs a token"),
        (
            ("https", "127.0.0.1"),
            {"user": "root@pam", "password": "x", "tls": TlsOptions(fingerprint="ab" * 32)},
            "fingerprint pinning",
        ),
        (("ssh_paramiko", "pve1"), {}, "paramiko"),
    ],
)
def test_factory_refuses_bad_settings(
    args: tuple[str, ...], kwargs: dict[str, Any], message: str
) -> None:
    """Unusable backend settings are configuration errors with a clear message."""
    if args[0] == "ssh_paramiko" and importlib.util.find_spec("paramiko") is not None:
        pytest.skip("paramiko is installed")
    with pytest.raises(ConfigError, match=message):
        build_proxmoxer_client(*args, **kwargs)
