"""The aiohttp adapter's wire mapping, against canned answers (aioresponses).

Covers every row of the reference's §11 classification table, the envelope, error texts,
authentication (token, ticket, CSRF, renewal), TLS options, form encoding of lifecycle
calls, the metrics hook's endpoint labels, and that secrets never leak.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey
from aioresponses import aioresponses
from yarl import URL

from lifecycled.domain.actions import Action
from lifecycled.domain.classify import ErrorClass
from lifecycled.domain.op import GuestKind
from lifecycled.domain.upid import Upid
from lifecycled.errors import ConfigError, PveError
from lifecycled.pve import wire
from lifecycled.pve.auth import TicketAuth, TokenAuth, load_token_file
from lifecycled.pve.http import HttpPveClient
from lifecycled.pve.port import PveClient
from lifecycled.pve.timeouts import Timeouts
from lifecycled.pve.tls import TlsOptions, normalize_fingerprint, ssl_for
from lifecycled.pve.transport import form_body
from lifecycled.pve.wire import ANYEVENT_REASONS

ORIGIN = "http://pve.test:8006"
API = ORIGIN + "/api2/json"
SECRET = "0b5c3f6e-9d1a-4c2b-8e7f-5a4d3c2b1a09"
TOKEN = TokenAuth(user="root@pam!lifecycled", secret=SECRET)
PASSWORD = "hunter2-very-secret"
TICKET1 = "PVE:root@pam:65000000::ticket-one-signature=="
TICKET2 = "PVE:root@pam:65000E10::ticket-two-signature=="
CSRF1 = "65000000:csrf-one"
CSRF2 = "65000E10:csrf-two"
UPID_TEXT = "UPID:pve2:00001234:00ABCDEF:65000000:qmstart:100:root@pam!lifecycled:"
UPID = Upid.parse(UPID_TEXT)

Q, L = GuestKind.QEMU, GuestKind.LXC

HookCall = tuple[str, str, str, float]


def at(path: str) -> re.Pattern[str]:
    """A URL pattern for ``path`` below the API root, with any query string."""
    return re.compile(re.escape(API + path) + r"(\?.*)?$")


def requests_to(m: Any, method: str, path: str) -> list[Any]:
    """The recorded calls to ``method path`` (any query), in order."""
    found: list[Any] = []
    for (meth, url), calls in m.requests.items():
        if meth == method and URL(url).path == URL(API + path).path:
            found.extend(calls)
    return found


def only_request(m: Any) -> tuple[str, URL, dict[str, Any]]:
    """The single request recorded: method, URL (with query) and the call's keyword args."""
    items = [(meth, url, call) for (meth, url), calls in m.requests.items() for call in calls]
    assert len(items) == 1, items
    meth, url, call = items[0]
    return meth, url, call.kwargs


def form_of(kwargs: dict[str, Any]) -> dict[str, str] | None:
    """The form fields a recorded request sent (its urlencoded body, declared as a form)."""
    body = kwargs.get("data")
    if body is None:
        return None
    assert kwargs["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    assert isinstance(body, bytes)
    return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False))


def password_of(call: Any) -> str:
    """The password field of a recorded login."""
    form = form_of(call.kwargs)
    assert form is not None
    return form["password"]


class _SentWriter:
    """Stands in for the request writer of a request that was already sent."""

    output_size = 0


class _CompatResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.9 builds responses without aiohttp ≥ 3.12's ``stream_writer``."""

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", _SentWriter())
        super().__init__(method, url, **kwargs)


class _Mocked(aioresponses):
    def add(self, url: Any, method: str = "GET", **kwargs: Any) -> None:  # type: ignore[override]
        kwargs.setdefault("response_class", _CompatResponse)
        super().add(url, method, **kwargs)


@pytest.fixture
def mocked() -> Iterator[Any]:
    with _Mocked() as m:
        yield m


@pytest.fixture
def hook_calls() -> list[HookCall]:
    return []


@pytest.fixture
async def client(hook_calls: list[HookCall]) -> AsyncIterator[HttpPveClient]:
    def hook(method: str, endpoint: str, code: str, seconds: float) -> None:
        hook_calls.append((method, endpoint, code, seconds))

    async with HttpPveClient(ORIGIN, auth=TOKEN, on_request=hook) as c:
        yield c


async def raised(coro: Any) -> PveError:
    """Await ``coro`` and return the :class:`PveError` it raised."""
    with pytest.raises(PveError) as info:
        await coro
    return info.value


def start(client: HttpPveClient, kind: GuestKind = Q, vmid: int = 100) -> Any:
    return client.dispatch("pve1", kind, Action.START, vmid, {})


# --- structural typing ---------------------------------------------------------------------


async def test_client_satisfies_the_port() -> None:
    """HttpPveClient is accepted where a PveClient is expected."""
    port: PveClient = HttpPveClient(ORIGIN, auth=TOKEN)
    assert port.user == "root@pam!lifecycled"
    await port.close()


async def test_calls_after_close_fail_without_sending(mocked: Any) -> None:
    """A closed client opens no new session: a transient error, nothing sent."""
    client = HttpPveClient(ORIGIN, auth=TOKEN)
    await client.close()
    await client.close()
    err = await raised(start(client))
    assert (err.error_class, err.sent) == (ErrorClass.TRANSIENT, False)
    assert not mocked.requests


# --- §11 transient -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (595, "No route to host"),
        (500, "can't lock file '/var/lock/qemu-server/lock-100.conf' - got timeout"),
        (500, "got no worker upid - start worker failed"),
        (500, "cluster not ready - no quorum?"),
        (401, "No ticket"),
    ],
)
async def test_transient_answers(
    client: HttpPveClient, mocked: Any, status: int, reason: str
) -> None:
    """595, a sync lock-file timeout, no worker UPID, no quorum and 401 are transient."""
    mocked.post(at("/nodes/pve1/qemu/100/status/start"), status=status, reason=reason)
    err = await raised(start(client))
    assert err.error_class is ErrorClass.TRANSIENT
    assert (err.status, err.reason, err.method) == (status, reason, "POST")


async def test_sync_lock_timeout_on_put_config_is_transient(
    client: HttpPveClient, mocked: Any
) -> None:
    """A synchronous ``can't lock file … got timeout`` on LXC PUT config is transient."""
    text = "can't lock file '/run/lock/lxc/pve-config-104.lock' - got timeout"
    mocked.put(at("/nodes/pve1/lxc/104/config"), status=500, reason=text)
    err = await raised(client.dispatch("pve1", L, Action.CONFIGURE, 104, {"cores": 2}))
    assert err.error_class is ErrorClass.TRANSIENT


async def test_connect_failure_before_sending_is_transient(
    client: HttpPveClient, mocked: Any
) -> None:
    """A refused connection means nothing was sent: transient, ``sent`` False."""
    key = ConnectionKey("pve.test", 8006, False, True, None, None, None, None)
    exc = aiohttp.ClientConnectorError(key, OSError(111, "Connection refused"))
    mocked.post(at("/nodes/pve1/qemu/100/status/start"), exception=exc)
    err = await raised(start(client))
    assert (err.error_class, err.status, err.sent) == (ErrorClass.TRANSIENT, None, False)
    assert "Connection refused" in err.reason


async def test_connect_timeout_is_transient(client: HttpPveClient, mocked: Any) -> None:
    """A connect timeout happens before the request is written: transient."""
    mocked.post(at("/nodes/pve1/qemu/100/status/start"), exception=aiohttp.ConnectionTimeoutError())
    err = await raised(start(client))
    assert (err.error_class, err.sent) == (ErrorClass.TRANSIENT, False)


# --- §11 ambiguous -------------------------------------------------------------------------


async def test_timeout_after_post_is_ambiguous(client: HttpPveClient, mocked: Any) -> None:
    """No answer within the limit after a POST was sent: ambiguous, status None."""
    mocked.post(at("/nodes/pve1/qemu/100/status/start"), timeout=True)
    err = await raised(start(client))
    assert (err.error_class, err.status, err.sent) == (ErrorClass.AMBIGUOUS, None, True)
    assert "no answer within" in err.reason


@pytest.mark.parametrize(
    "exc",
    [
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientOSError(104, "Connection reset by peer"),
        aiohttp.ClientPayloadError("Response payload is not completed"),
    ],
)
async def test_connection_lost_after_post_is_ambiguous(
    client: HttpPveClient, mocked: Any, exc: Exception
) -> None:
    """A reset or closed connection after the POST went out: ambiguous."""
    mocked.post(at("/nodes/pve1/qemu/100/status/start"), exception=exc)
    err = await raised(start(client))
    assert (err.error_class, err.status, err.sent) == (ErrorClass.AMBIGUOUS, None, True)


async def test_timeout_on_a_read_is_transient(client: HttpPveClient, mocked: Any) -> None:
    """A read that times out has no side effect: transient."""
    mocked.get(at(f"/nodes/pve2/tasks/{UPID_TEXT}/status"), timeout=True)
    err = await raised(client.task_status(UPID))
    assert (err.error_class, err.status) == (ErrorClass.TRANSIENT, None)


@pytest.mark.parametrize("status", [596, 597, 599])
@pytest.mark.parametrize(
    ("action", "kind", "method", "path"),
    [
        (Action.START, Q, "POST", "/nodes/pve1/qemu/100/status/start"),
        (Action.RESIZE, Q, "PUT", "/nodes/pve1/qemu/100/resize"),
        (Action.TERMINATE, Q, "DELETE", "/nodes/pve1/qemu/100"),
    ],
)
async def test_proxy_errors_on_writes_are_ambiguous(
    client: HttpPveClient,
    mocked: Any,
    status: int,
    action: Action,
    kind: GuestKind,
    method: str,
    path: str,
) -> None:
    """596/597/599 on POST/PUT/DELETE: the proxied request may have run — ambiguous."""
    mocked.add(at(path), method=method, status=status, reason="Connection timed out")
    params = {"disk": "scsi0", "size": "40G"} if action is Action.RESIZE else {}
    err = await raised(client.dispatch("pve1", kind, action, 100, params))
    assert (err.error_class, err.status, err.method) == (ErrorClass.AMBIGUOUS, status, method)


@pytest.mark.parametrize("status", [596, 597, 599])
async def test_proxy_errors_on_reads_are_transient(
    client: HttpPveClient, mocked: Any, status: int
) -> None:
    """596/597/599 on a GET: nothing can have happened — transient."""
    mocked.get(at("/nodes/pve1/qemu/100/status/current"), status=status, reason="")
    err = await raised(client.guest_status("pve1", Q, 100))
    assert err.error_class is ErrorClass.TRANSIENT
    assert err.reason == ANYEVENT_REASONS[status]  # AnyEvent's text when no reason came


# --- §11 satisfied (needs the op's action) ---------------------------------------------------


@pytest.mark.parametrize(
    ("action", "kind", "method", "path", "text"),
    [
        (Action.STOP, L, "POST", "/nodes/pve1/lxc/100/status/stop", "CT 100 not running"),
        (Action.START, L, "POST", "/nodes/pve1/lxc/100/status/start", "CT 100 already running"),
        (
            Action.TERMINATE,
            Q,
            "DELETE",
            "/nodes/pve1/qemu/100",
            "Configuration file 'nodes/pve1/qemu-server/100.conf' does not exist",
        ),
    ],
)
async def test_already_satisfied_answers(
    client: HttpPveClient,
    mocked: Any,
    action: Action,
    kind: GuestKind,
    method: str,
    path: str,
    text: str,
) -> None:
    """The adapter classifies with the op's action: the raised error says satisfied."""
    mocked.add(at(path), method=method, status=500, reason=text, payload={"data": None})
    err = await raised(client.dispatch("pve1", kind, action, 100, {}))
    assert err.error_class is ErrorClass.SATISFIED


# --- §11 locked ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "VM is locked (backup)",
        "checksum mismatch (file change by other user?)",
        "detected modified configuration - file changed by other user? Try again.",
    ],
)
async def test_lock_and_digest_answers_are_locked(
    client: HttpPveClient, mocked: Any, text: str
) -> None:
    """A config lock and both digest-mismatch texts are ``locked``."""
    mocked.post(at("/nodes/pve1/qemu/100/config"), status=500, reason=text)
    err = await raised(client.dispatch("pve1", Q, Action.CONFIGURE, 100, {"cores": 4}))
    assert err.error_class is ErrorClass.LOCKED


# --- §11 permanent -------------------------------------------------------------------------


async def test_400_with_errors_is_permanent_and_carries_them(
    client: HttpPveClient, mocked: Any
) -> None:
    """A 400 with per-parameter ``errors`` is permanent; the errors come along."""
    mocked.post(
        at("/nodes/pve1/qemu/100/status/stop"),
        status=400,
        reason="Parameter verification failed.",
        payload={"data": None, "errors": {"skiplock": "Only root may use this option.\n"}},
    )
    err = await raised(client.dispatch("pve1", Q, Action.STOP, 100, {"skiplock": True}))
    assert err.error_class is ErrorClass.PERMANENT
    assert err.errors == {"skiplock": "Only root may use this option."}
    assert err.text == "Parameter verification failed. (skiplock: Only root may use this option.)"


@pytest.mark.parametrize(
    ("status", "method", "path", "action", "params", "text"),
    [
        (
            403,
            "POST",
            "/nodes/pve1/qemu/100/status/start",
            Action.START,
            {},
            "Permission check failed (/vms/100, VM.PowerMgmt)",
        ),
        (
            501,
            "POST",
            "/nodes/pve1/qemu/100/status/start",
            Action.START,
            {},
            "Method 'POST /nodes/pve1/qemu/100/status/start' not implemented",
        ),
        (
            500,
            "POST",
            "/nodes/pve1/qemu/100/status/shutdown",
            Action.SHUTDOWN,
            {},
            "VM is paused - cannot shutdown",
        ),
        (
            500,
            "PUT",
            "/nodes/pve1/qemu/100/resize",
            Action.RESIZE,
            {"disk": "scsi0", "size": "8G"},
            "shrinking disks is not supported",
        ),
        (
            500,
            "DELETE",
            "/nodes/pve1/qemu/100",
            Action.TERMINATE,
            {},
            "can't remove VM 100 - protection mode enabled",
        ),
        (
            500,
            "POST",
            "/nodes/pve1/qemu/100/status/start",
            Action.START,
            {},
            "you can't start a vm if it's a template",
        ),
    ],
)
async def test_permanent_answers(
    client: HttpPveClient,
    mocked: Any,
    status: int,
    method: str,
    path: str,
    action: Action,
    params: dict[str, Any],
    text: str,
) -> None:
    """403, 501, paused shutdown, shrink, protection and template start are permanent."""
    mocked.add(at(path), method=method, status=status, reason=text)
    err = await raised(client.dispatch("pve1", Q, action, 100, params))
    assert err.error_class is ErrorClass.PERMANENT
    assert err.reason == text


async def test_unsupported_action_is_permanent_and_sends_nothing(
    client: HttpPveClient, mocked: Any
) -> None:
    """``reset`` of a container is refused before anything is sent."""
    err = await raised(client.dispatch("pve1", L, Action.RESET, 104, {}))
    assert (err.error_class, err.sent) == (ErrorClass.PERMANENT, False)
    assert not mocked.requests


# --- envelope and error texts ----------------------------------------------------------------


async def test_upid_answer_is_parsed(client: HttpPveClient, mocked: Any) -> None:
    """``{"data": "UPID:…"}`` becomes a :class:`Upid`."""
    mocked.post(at("/nodes/pve1/qemu/100/status/start"), payload={"data": UPID_TEXT})
    assert await start(client) == UPID


async def test_null_answer_is_none(client: HttpPveClient, mocked: Any) -> None:
    """``{"data": null}`` (sync endpoint, background_delay) becomes ``None``."""
    mocked.post(at("/nodes/pve1/qemu/100/config"), payload={"data": None})
    got = await client.dispatch(
        "pve1", Q, Action.CONFIGURE, 100, {"cores": 2, "background_delay": 5}
    )
    assert got is None


async def test_non_upid_string_after_a_write_is_ambiguous(
    client: HttpPveClient, mocked: Any
) -> None:
    """A 200 whose data is not a task id cannot be read: the task may exist — ambiguous."""
    mocked.post(at("/nodes/pve1/qemu/100/status/start"), payload={"data": "OK"})
    err = await raised(start(client))
    assert err.error_class is ErrorClass.AMBIGUOUS
    assert "'OK'" in err.reason


async def test_non_json_success_after_a_write_is_ambiguous(
    client: HttpPveClient, mocked: Any
) -> None:
    """A 200 to a POST whose body is not JSON: the task may exist — ambiguous."""
    mocked.post(at("/nodes/pve1/qemu/100/status/start"), body="<html>", content_type="text/html")
    err = await raised(start(client))
    assert err.error_class is ErrorClass.AMBIGUOUS


async def test_non_json_success_on_a_read_is_transient(client: HttpPveClient, mocked: Any) -> None:
    """A 200 to a GET without a JSON envelope is a transient oddity."""
    mocked.get(at("/cluster/resources"), payload={"no": "data"})
    err = await raised(client.cluster_resources())
    assert err.error_class is ErrorClass.TRANSIENT


@pytest.mark.parametrize(
    ("status", "expected"), [(500, ErrorClass.TRANSIENT), (400, ErrorClass.PERMANENT)]
)
async def test_non_json_error_bodies(
    client: HttpPveClient, mocked: Any, status: int, expected: ErrorClass
) -> None:
    """An error whose body is not JSON: 5xx transient, 4xx permanent, reason kept."""
    mocked.get(
        at("/nodes/pve1/status"),
        status=status,
        reason="Something odd",
        body="<html>oops</html>",
        content_type="text/html",
    )
    err = await raised(client.node_status("pve1"))
    assert (err.error_class, err.reason) == (expected, "Something odd")


async def test_body_message_is_preferred_to_the_reason(client: HttpPveClient, mocked: Any) -> None:
    """The body ``message`` (new servers) wins over the status line; only its first line."""
    mocked.post(
        at("/nodes/pve1/qemu/100/status/start"),
        status=500,
        reason="Internal Server Error",
        payload={"data": None, "message": "VM is locked (backup)\nsecond line\n"},
    )
    err = await raised(start(client))
    assert (err.reason, err.error_class) == ("VM is locked (backup)", ErrorClass.LOCKED)


async def test_reason_first_line_when_no_message(client: HttpPveClient, mocked: Any) -> None:
    """Without a body ``message`` the status-line reason is the text."""
    mocked.post(
        at("/nodes/pve1/qemu/100/status/start"),
        status=500,
        reason="VM is locked (migrate)",
        payload={"data": None},
    )
    err = await raised(start(client))
    assert err.reason == "VM is locked (migrate)"


async def test_empty_reason_falls_back_to_standard_phrase(
    client: HttpPveClient, mocked: Any
) -> None:
    """No reason and no message: the standard phrase of the status code."""
    mocked.get(at("/nodes/pve1/status"), status=503, reason="", body="")
    err = await raised(client.node_status("pve1"))
    assert err.reason == "Service Unavailable"


async def test_no_such_task_is_recognisable(client: HttpPveClient, mocked: Any) -> None:
    """400 ``no such task`` keeps its ``errors`` so callers can tell rotation from failure."""
    mocked.get(
        at(f"/nodes/pve2/tasks/{UPID_TEXT}/status"),
        status=400,
        reason="Parameter verification failed.",
        payload={"data": None, "errors": {"upid": "no such task"}},
    )
    err = await raised(client.task_status(UPID))
    assert err.errors == {"upid": "no such task"}


# --- reads ---------------------------------------------------------------------------------


async def test_task_reads_go_to_the_upid_node(client: HttpPveClient, mocked: Any) -> None:
    """Status, log and stop of a task are addressed to the node in the UPID."""
    base = f"/nodes/pve2/tasks/{UPID_TEXT}"
    mocked.get(at(base + "/status"), payload={"data": {"status": "running", "upid": UPID_TEXT}})
    mocked.get(
        at(base + "/log"),
        payload={"data": [{"n": 2, "t": "TASK OK"}, {"n": 1, "t": "starting"}], "total": 2},
    )
    mocked.delete(at(base), payload={"data": None})
    status = await client.task_status(UPID)
    assert (status.running, status.exitstatus, status.upid) == (True, None, UPID)
    assert await client.task_log(UPID, start=0, limit=10) == ["starting", "TASK OK"]
    await client.stop_task(UPID)
    assert requests_to(mocked, "DELETE", base)


async def test_stopped_task_status_has_exitstatus(client: HttpPveClient, mocked: Any) -> None:
    """A stopped task's ``exitstatus`` is returned as is."""
    mocked.get(
        at(f"/nodes/pve2/tasks/{UPID_TEXT}/status"),
        payload={"data": {"status": "stopped", "exitstatus": "WARNINGS: 2"}},
    )
    status = await client.task_status(UPID)
    assert (status.running, status.exitstatus) == (False, "WARNINGS: 2")


async def test_task_list_filters_and_total(client: HttpPveClient, mocked: Any) -> None:
    """Proxmox's own filter names go into the query; ``total`` is read when present."""
    item = {"upid": UPID_TEXT, "starttime": 0x65000000, "status": "RUNNING", "endtime": None}
    mocked.get(at("/nodes/pve1/tasks"), payload={"data": [item, {"upid": "bogus"}], "total": 7})
    got = await client.tasks(
        "pve1",
        source="all",
        vmid=100,
        typefilter="qmstart",
        since=1_700_000_000,
        userfilter="root@pam",
        start=0,
        limit=100,
    )
    _, url, _ = only_request(mocked)
    assert dict(url.query) == {
        "source": "all",
        "vmid": "100",
        "typefilter": "qmstart",
        "since": "1700000000",
        "userfilter": "root@pam",
        "start": "0",
        "limit": "100",
    }
    assert got.total == 7
    assert [(e.upid, e.status, e.type, e.id) for e in got.items] == [
        (UPID, "RUNNING", "qmstart", "100")
    ]


async def test_task_list_total_absent_when_empty(client: HttpPveClient, mocked: Any) -> None:
    """An empty list comes without ``total``: its total is 0 (§12.2)."""
    mocked.get(at("/nodes/pve1/tasks"), payload={"data": []})
    got = await client.tasks("pve1")
    assert (got.items, got.total) == ((), 0)
    _, url, _ = only_request(mocked)
    assert dict(url.query) == {"source": "all", "start": "0", "limit": "50"}


async def test_guest_status_ha_ignored_is_not_managed(client: HttpPveClient, mocked: Any) -> None:
    """An HA resource in state ``ignored`` is not HA-managed (§13.10); its state is kept."""
    mocked.get(
        at("/nodes/pve1/qemu/100/status/current"),
        payload={
            "data": {"vmid": 100, "status": "stopped", "ha": {"managed": 1, "state": "ignored"}}
        },
    )
    st = await client.guest_status("pve1", Q, 100)
    assert (st.ha_managed, st.ha_state) == (False, "ignored")


async def test_node_guests_lists_live_statuses(client: HttpPveClient, mocked: Any) -> None:
    """``GET /nodes/{node}/qemu``: one status per guest; items without vmid/status skipped."""
    mocked.get(
        at("/nodes/pve1/qemu"),
        payload={
            "data": [
                {"vmid": 100, "status": "running", "lock": "backup", "template": 0},
                {"vmid": "101", "status": "stopped", "name": "db"},
                {"status": "running"},
                {"vmid": 102},
            ]
        },
    )
    got = await client.node_guests("pve1", Q)
    assert [(g.vmid, g.status, g.lock) for g in got] == [
        (100, "running", "backup"),
        (101, "stopped", None),
    ]


async def test_node_guests_only_decodes_the_guests_asked_for(
    client: HttpPveClient, mocked: Any
) -> None:
    """``only``: the listing's items of those vmids, the others left undecoded."""
    mocked.get(
        at("/nodes/pve1/qemu"),
        payload={
            "data": [
                {"vmid": 100, "status": "running"},
                {"vmid": "101", "status": "stopped", "lock": "migrate"},
                {"vmid": 102, "status": "running"},
                {"vmid": 103},
            ]
        },
    )
    got = await client.node_guests("pve1", Q, only=frozenset({101, 103, 104}))
    assert [(g.vmid, g.status, g.lock) for g in got] == [(101, "stopped", "migrate")]


async def test_guest_status_maps_ha_and_template(client: HttpPveClient, mocked: Any) -> None:
    """``ha`` becomes ``ha_managed``/``ha_state``; ``template: 1`` becomes True."""
    mocked.get(
        at("/nodes/pve1/qemu/100/status/current"),
        payload={
            "data": {
                "vmid": 100,
                "status": "running",
                "qmpstatus": "paused",
                "name": "web",
                "lock": "backup",
                "template": 1,
                "ha": {"managed": 1, "state": "started"},
                "cpus": 2,
                "maxmem": 2147483648,
                "maxdisk": 34359738368,
                "uptime": 12,
            }
        },
    )
    st = await client.guest_status("pve1", Q, 100)
    assert (st.status, st.qmpstatus, st.name, st.lock) == ("running", "paused", "web", "backup")
    assert (st.template, st.ha_managed, st.ha_state) == (True, True, "started")
    assert (st.cpus, st.maxmem, st.maxdisk, st.uptime) == (2.0, 2147483648, 34359738368, 12)


async def test_guest_status_unmanaged(client: HttpPveClient, mocked: Any) -> None:
    """``{"managed": 0}`` and no template field mean not HA-managed, not a template."""
    mocked.get(
        at("/nodes/pve1/lxc/104/status/current"),
        payload={"data": {"vmid": 104, "status": "stopped", "ha": {"managed": 0}}},
    )
    st = await client.guest_status("pve1", L, 104)
    assert (st.ha_managed, st.ha_state, st.template, st.lock) == (False, None, False, None)


async def test_guest_config_separates_digest(client: HttpPveClient, mocked: Any) -> None:
    """The digest is split from the values; ``current=True`` asks for ``current=1``."""
    mocked.get(
        at("/nodes/pve1/qemu/100/config"),
        payload={"data": {"cores": 2, "memory": "2048", "digest": "abc123"}},
    )
    cfg = await client.guest_config("pve1", Q, 100, current=True)
    assert (dict(cfg.values), cfg.digest) == ({"cores": 2, "memory": "2048"}, "abc123")
    _, url, _ = only_request(mocked)
    assert dict(url.query) == {"current": "1"}


async def test_cluster_resources_filters_vms(client: HttpPveClient, mocked: Any) -> None:
    """``type=vm`` is asked for; only qemu/lxc items become records."""
    mocked.get(
        at("/cluster/resources"),
        payload={
            "data": [
                {
                    "id": "qemu/100",
                    "vmid": 100,
                    "type": "qemu",
                    "node": "pve1",
                    "status": "running",
                },
                {
                    "id": "lxc/104",
                    "vmid": 104,
                    "type": "lxc",
                    "node": "pve2",
                    "status": "stopped",
                    "template": 0,
                    "hastate": "started",
                    "lock": "",
                },
                {"id": "storage/pve1/local", "type": "storage", "node": "pve1"},
            ]
        },
    )
    got = await client.cluster_resources()
    _, url, _ = only_request(mocked)
    assert dict(url.query) == {"type": "vm"}
    assert [(r.vmid, r.kind, r.node, r.status, r.hastate, r.lock) for r in got] == [
        (100, Q, "pve1", "running", None, None),
        (104, L, "pve2", "stopped", "started", None),
    ]


async def test_node_status_is_returned(client: HttpPveClient, mocked: Any) -> None:
    """``/nodes/{node}/status`` is returned as a mapping."""
    mocked.get(at("/nodes/pve1/status"), payload={"data": {"uptime": 5}})
    assert await client.node_status("pve1") == {"uptime": 5}


@pytest.mark.parametrize(
    ("status", "reason"), [(500, "no such resource 'vm:100'"), (404, "Not Found")]
)
async def test_ha_resource_absent_is_none(
    client: HttpPveClient, mocked: Any, status: int, reason: str
) -> None:
    """A guest that is not an HA resource reads as ``None``."""
    mocked.get(at("/cluster/ha/resources/vm:100"), status=status, reason=reason)
    assert await client.ha_resource("vm:100") is None


async def test_ha_resource_and_set_state(client: HttpPveClient, mocked: Any) -> None:
    """An HA resource is returned; its request state is PUT as a form field."""
    mocked.get(
        at("/cluster/ha/resources/vm:100"),
        payload={"data": {"sid": "vm:100", "state": "started"}},
    )
    mocked.put(at("/cluster/ha/resources/vm:100"), payload={"data": None})
    assert await client.ha_resource("vm:100") == {"sid": "vm:100", "state": "started"}
    await client.ha_set_state("vm:100", "stopped")
    (call,) = requests_to(mocked, "PUT", "/cluster/ha/resources/vm:100")
    assert form_of(call.kwargs) == {"state": "stopped"}


@pytest.mark.parametrize(
    "form",
    [
        {"tags": "lifecycled-owner;web", "digest": "0123abcd"},
        {"description": "line one\nline two & more = 100% + ü ✓", "digest": ""},
        {"a b": "c/d?e#f", "x": "~!*'()"},
        {},
    ],
)
async def test_a_form_body_is_what_aiohttp_would_send(form: dict[str, str]) -> None:
    """The form encoded once per request is byte for byte aiohttp's ``FormData`` body."""
    assert form_body(form) == await aiohttp.FormData(form)().as_bytes()


async def test_a_form_reaches_the_wire_with_every_character(
    client: HttpPveClient, mocked: Any
) -> None:
    """A multi-line, non-ASCII form value is sent as a declared form and reads back unchanged."""
    mocked.put(at("/nodes/pve1/config"), payload={"data": None})
    text = "owner: lifecycled\nnote = a & b; 100% ✓"
    await client.set_node_description("pve1", text, "d1g3st")
    _, _, kwargs = only_request(mocked)
    assert form_of(kwargs) == {"description": text, "digest": "d1g3st"}


async def test_ha_resource_other_errors_raise(client: HttpPveClient, mocked: Any) -> None:
    """Any other failure of an HA read is raised, not mistaken for "not managed"."""
    mocked.get(at("/cluster/ha/resources/vm:100"), status=595, reason="No route to host")
    err = await raised(client.ha_resource("vm:100"))
    assert err.error_class is ErrorClass.TRANSIENT


# --- dispatch: URL, method and form fields ----------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "action", "vmid", "params", "method", "path", "form", "query"),
    [
        (Q, Action.START, 100, {}, "POST", "/nodes/pve1/qemu/100/status/start", {}, {}),
        (
            Q,
            Action.SHUTDOWN,
            100,
            {"force_stop": True, "timeout": 30},
            "POST",
            "/nodes/pve1/qemu/100/status/shutdown",
            {"forceStop": "1", "timeout": "30"},
            {},
        ),
        (
            L,
            Action.CONFIGURE,
            104,
            {"cores": 2, "memory": 1024, "delete": ["swap", "description"]},
            "PUT",
            "/nodes/pve1/lxc/104/config",
            {"cores": "2", "memory": "1024", "delete": "swap,description"},
            {},
        ),
        (
            Q,
            Action.RESIZE,
            100,
            {"disk": "scsi0", "size": "40G"},
            "PUT",
            "/nodes/pve1/qemu/100/resize",
            {"disk": "scsi0", "size": "40G"},
            {},
        ),
        (
            Q,
            Action.MIGRATE,
            100,
            {"target": "pve2", "online": True, "with_local_disks": True},
            "POST",
            "/nodes/pve1/qemu/100/migrate",
            {"target": "pve2", "online": "1", "with-local-disks": "1"},
            {},
        ),
        (
            Q,
            Action.CLONE,
            120,
            {"source_vmid": 9000, "name": "clone1", "full": True},
            "POST",
            "/nodes/pve1/qemu/9000/clone",
            {"newid": "120", "name": "clone1", "full": "1"},
            {},
        ),
        (
            L,
            Action.CREATE,
            130,
            {"ostemplate": "local:vztmpl/debian-12.tar.zst", "hostname": "ct130"},
            "POST",
            "/nodes/pve1/lxc",
            {"vmid": "130", "ostemplate": "local:vztmpl/debian-12.tar.zst", "hostname": "ct130"},
            {},
        ),
        (
            Q,
            Action.TERMINATE,
            100,
            {"purge": True, "destroy-unreferenced-disks": False},
            "DELETE",
            "/nodes/pve1/qemu/100",
            None,
            {"purge": "1", "destroy-unreferenced-disks": "0"},
        ),
    ],
)
async def test_dispatch_wire_mapping(
    client: HttpPveClient,
    mocked: Any,
    kind: GuestKind,
    action: Action,
    vmid: int,
    params: dict[str, Any],
    method: str,
    path: str,
    form: dict[str, str] | None,
    query: dict[str, str],
) -> None:
    """Each lifecycle call hits the catalogued method and URL with form-encoded fields."""
    answer = None if (kind, action) == (L, Action.CONFIGURE) else UPID_TEXT
    mocked.add(at(path), method=method, payload={"data": answer})
    got = await client.dispatch("pve1", kind, action, vmid, params)
    assert got == (Upid.parse(answer) if answer else None)
    meth, url, kwargs = only_request(mocked)
    assert (meth, url.path, dict(url.query)) == (method, "/api2/json" + path, query)
    assert form_of(kwargs) == form
    if form:
        assert all(isinstance(v, str) for v in form.values())


# --- authentication --------------------------------------------------------------------------


async def test_token_header(client: HttpPveClient, mocked: Any) -> None:
    """A token goes out as ``Authorization: PVEAPIToken=USER@REALM!TOKENID=SECRET``."""
    mocked.post(at("/nodes/pve1/qemu/100/status/start"), payload={"data": UPID_TEXT})
    await start(client)
    _, _, kwargs = only_request(mocked)
    assert kwargs["headers"]["Authorization"] == f"PVEAPIToken=root@pam!lifecycled={SECRET}"
    assert "CSRFPreventionToken" not in kwargs["headers"]


def ticket_answer(ticket: str, csrf: str) -> dict[str, Any]:
    return {"data": {"ticket": ticket, "CSRFPreventionToken": csrf, "username": "root@pam"}}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_ticket_login_cookie_and_csrf_on_writes_only(mocked: Any) -> None:
    """A ticket login posts the password; GETs carry the cookie, writes also the CSRF token."""
    mocked.post(at("/access/ticket"), payload=ticket_answer(TICKET1, CSRF1))
    mocked.get(at("/nodes/pve1/status"), payload={"data": {}})
    mocked.post(at("/nodes/pve1/qemu/100/status/start"), payload={"data": UPID_TEXT})
    auth = TicketAuth(username="root@pam", password=PASSWORD)
    async with HttpPveClient(ORIGIN, auth=auth) as client:
        assert client.user == "root@pam"
        await client.node_status("pve1")
        await start(client)
    (login,) = requests_to(mocked, "POST", "/access/ticket")
    assert form_of(login.kwargs) == {"username": "root@pam", "password": PASSWORD}
    (get,) = requests_to(mocked, "GET", "/nodes/pve1/status")
    assert get.kwargs["headers"]["Cookie"] == f"PVEAuthCookie={TICKET1}"
    assert "CSRFPreventionToken" not in get.kwargs["headers"]
    assert "Authorization" not in get.kwargs["headers"]
    (post,) = requests_to(mocked, "POST", "/nodes/pve1/qemu/100/status/start")
    assert post.kwargs["headers"]["Cookie"] == f"PVEAuthCookie={TICKET1}"
    assert post.kwargs["headers"]["CSRFPreventionToken"] == CSRF1


async def test_ticket_is_renewed_after_an_hour(mocked: Any) -> None:
    """Past ``renew_after`` the ticket is renewed by posting it as the password."""
    mocked.post(at("/access/ticket"), payload=ticket_answer(TICKET1, CSRF1))
    mocked.post(at("/access/ticket"), payload=ticket_answer(TICKET2, CSRF2))
    mocked.get(at("/nodes/pve1/status"), payload={"data": {}}, repeat=True)
    clock = FakeClock()
    auth = TicketAuth(username="root@pam", password=PASSWORD)
    async with HttpPveClient(ORIGIN, auth=auth, clock=clock) as client:
        await client.node_status("pve1")
        clock.now += 3599
        await client.node_status("pve1")  # still the first ticket
        clock.now += 2
        await client.node_status("pve1")
    logins = requests_to(mocked, "POST", "/access/ticket")
    assert [password_of(c) for c in logins] == [PASSWORD, TICKET1]
    cookies = [
        c.kwargs["headers"]["Cookie"] for c in requests_to(mocked, "GET", "/nodes/pve1/status")
    ]
    assert cookies == [f"PVEAuthCookie={t}" for t in (TICKET1, TICKET1, TICKET2)]


async def test_refused_renewal_falls_back_to_password(mocked: Any) -> None:
    """An expired ticket that cannot be renewed leads to a fresh password login."""
    mocked.post(at("/access/ticket"), payload=ticket_answer(TICKET1, CSRF1))
    mocked.post(at("/access/ticket"), status=401, reason="authentication failure")
    mocked.post(at("/access/ticket"), payload=ticket_answer(TICKET2, CSRF2))
    mocked.get(at("/nodes/pve1/status"), payload={"data": {}}, repeat=True)
    clock = FakeClock()
    auth = TicketAuth(username="root@pam", password=PASSWORD)
    async with HttpPveClient(ORIGIN, auth=auth, clock=clock) as client:
        await client.node_status("pve1")
        clock.now += 8000
        await client.node_status("pve1")
    logins = requests_to(mocked, "POST", "/access/ticket")
    assert [password_of(c) for c in logins] == [PASSWORD, TICKET1, PASSWORD]


async def test_ticket_401_relogs_in_and_retries_once(mocked: Any) -> None:
    """A 401 with a ticket triggers one fresh login and one retry of the same request."""
    mocked.post(at("/access/ticket"), payload=ticket_answer(TICKET1, CSRF1))
    mocked.post(at("/access/ticket"), payload=ticket_answer(TICKET2, CSRF2))
    mocked.post(at("/nodes/pve1/qemu/100/status/start"), status=401, reason="No ticket")
    mocked.post(at("/nodes/pve1/qemu/100/status/start"), payload={"data": UPID_TEXT})
    auth = TicketAuth(username="root@pam", password=PASSWORD)
    async with HttpPveClient(ORIGIN, auth=auth) as client:
        assert await start(client) == UPID
    starts = requests_to(mocked, "POST", "/nodes/pve1/qemu/100/status/start")
    assert [c.kwargs["headers"]["CSRFPreventionToken"] for c in starts] == [CSRF1, CSRF2]
    logins = requests_to(mocked, "POST", "/access/ticket")
    assert [password_of(c) for c in logins] == [PASSWORD, PASSWORD]


async def test_ticket_second_401_is_raised(mocked: Any) -> None:
    """A 401 after the re-login is not retried again: it is raised (transient)."""
    mocked.post(at("/access/ticket"), payload=ticket_answer(TICKET1, CSRF1), repeat=True)
    mocked.get(at("/nodes/pve1/status"), status=401, reason="No ticket", repeat=True)
    auth = TicketAuth(username="root@pam", password=PASSWORD)
    async with HttpPveClient(ORIGIN, auth=auth) as client:
        err = await raised(client.node_status("pve1"))
    assert (err.status, err.error_class) == (401, ErrorClass.TRANSIENT)
    assert len(requests_to(mocked, "GET", "/nodes/pve1/status")) == 2


async def test_failed_login_is_raised(mocked: Any) -> None:
    """Wrong credentials: the login's 401 is raised and the request is not sent."""
    mocked.post(at("/access/ticket"), status=401, reason="authentication failure")
    auth = TicketAuth(username="root@pam", password=PASSWORD)
    async with HttpPveClient(ORIGIN, auth=auth) as client:
        err = await raised(client.node_status("pve1"))
    assert (err.status, err.path) == (401, "/access/ticket")
    assert not requests_to(mocked, "GET", "/nodes/pve1/status")


async def test_two_factor_login_is_refused(mocked: Any) -> None:
    """A user that needs TFA cannot be used: permanent, with advice."""
    answer = ticket_answer(TICKET1, CSRF1)
    answer["data"]["NeedTFA"] = 1
    mocked.post(at("/access/ticket"), payload=answer)
    auth = TicketAuth(username="root@pam", password=PASSWORD)
    async with HttpPveClient(ORIGIN, auth=auth) as client:
        err = await raised(client.node_status("pve1"))
    assert err.error_class is ErrorClass.PERMANENT
    assert "API token" in err.reason


# --- secrets ---------------------------------------------------------------------------------


async def test_token_secret_never_in_errors_or_logs(
    client: HttpPveClient, mocked: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Failures (even one echoing the secret) never show the token secret."""
    caplog.set_level(logging.DEBUG)
    mocked.post(at("/nodes/pve1/qemu/100/status/start"), status=401, reason="No ticket")
    mocked.post(
        at("/nodes/pve1/qemu/100/status/stop"),
        status=500,
        reason="bad",
        payload={"data": None, "message": f"token {SECRET} rejected", "errors": {"x": SECRET}},
    )
    mocked.post(
        at("/nodes/pve1/qemu/100/status/reset"), exception=aiohttp.ServerDisconnectedError()
    )
    errors = [
        await raised(start(client)),
        await raised(client.dispatch("pve1", Q, Action.STOP, 100, {})),
        await raised(client.dispatch("pve1", Q, Action.RESET, 100, {})),
    ]
    for err in errors:
        assert SECRET not in str(err)
        assert SECRET not in repr(err)
        assert SECRET not in err.text
    assert "***" in errors[1].reason
    assert SECRET not in caplog.text
    assert SECRET not in repr(TOKEN)


async def test_password_and_ticket_never_in_errors_or_logs(
    mocked: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """With ticket auth, neither the password, the ticket nor the CSRF token leak."""
    caplog.set_level(logging.DEBUG)
    mocked.post(at("/access/ticket"), payload=ticket_answer(TICKET1, CSRF1), repeat=True)
    mocked.get(
        at("/nodes/pve1/status"),
        status=500,
        reason="odd",
        payload={"data": None, "message": f"cookie {TICKET1} / {CSRF1} / {PASSWORD}"},
    )
    mocked.get(
        at("/nodes/pve1/qemu/100/status/current"), status=401, reason="No ticket", repeat=True
    )
    mocked.post(at("/nodes/pve1/qemu/100/status/start"), timeout=True)
    auth = TicketAuth(username="root@pam", password=PASSWORD)
    async with HttpPveClient(ORIGIN, auth=auth) as client:
        errors = [
            await raised(client.node_status("pve1")),
            await raised(client.guest_status("pve1", Q, 100)),
            await raised(start(client)),
        ]
    for err in errors:
        for secret in (PASSWORD, TICKET1, CSRF1):
            assert secret not in str(err)
            assert secret not in caplog.text
    assert PASSWORD not in repr(auth)


# --- the metrics hook ------------------------------------------------------------------------


async def test_hook_gets_low_cardinality_labels(
    client: HttpPveClient, mocked: Any, hook_calls: list[HookCall]
) -> None:
    """One hook call per request; endpoint labels never hold a vmid, UPID or node name."""
    mocked.post(at("/nodes/pve1/qemu/100/status/start"), payload={"data": UPID_TEXT})
    mocked.post(at("/nodes/pve1/lxc/104/status/shutdown"), payload={"data": UPID_TEXT})
    mocked.put(at("/nodes/pve1/lxc/104/config"), payload={"data": None})
    mocked.delete(at("/nodes/pve1/qemu/100"), payload={"data": UPID_TEXT})
    mocked.get(at(f"/nodes/pve2/tasks/{UPID_TEXT}/status"), payload={"data": {"status": "running"}})
    mocked.get(at("/nodes/pve1/tasks"), payload={"data": []})
    mocked.get(at("/nodes/pve1/qemu/100/status/current"), status=500, reason="x")
    mocked.get(at("/cluster/ha/resources/vm:100"), timeout=True)
    await start(client)
    await client.dispatch("pve1", L, Action.SHUTDOWN, 104, {})
    await client.dispatch("pve1", L, Action.CONFIGURE, 104, {"cores": 1})
    await client.dispatch("pve1", Q, Action.TERMINATE, 100, {})
    await client.task_status(UPID)
    await client.tasks("pve1", vmid=100)
    await raised(client.guest_status("pve1", Q, 100))
    await raised(client.ha_resource("vm:100"))
    labels = [(method, endpoint, code) for method, endpoint, code, _ in hook_calls]
    assert labels == [
        ("POST", "/nodes/{node}/{kind}/{vmid}/status/{action}", "200"),
        ("POST", "/nodes/{node}/{kind}/{vmid}/status/{action}", "200"),
        ("PUT", "/nodes/{node}/{kind}/{vmid}/config", "200"),
        ("DELETE", "/nodes/{node}/{kind}/{vmid}", "200"),
        ("GET", "/nodes/{node}/tasks/{upid}/status", "200"),
        ("GET", "/nodes/{node}/tasks", "200"),
        ("GET", "/nodes/{node}/{kind}/{vmid}/status/current", "500"),
        ("GET", "/cluster/ha/resources/{sid}", "error"),
    ]
    assert all(seconds >= 0 for *_, seconds in hook_calls)


async def test_a_failing_hook_does_not_lose_the_answer(
    mocked: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A hook that raises is logged; the call still returns its UPID."""

    def broken(method: str, endpoint: str, code: str, seconds: float) -> None:
        raise RuntimeError("metrics down")

    mocked.post(at("/nodes/pve1/qemu/100/status/start"), payload={"data": UPID_TEXT})
    async with HttpPveClient(ORIGIN, auth=TOKEN, on_request=broken) as client:
        assert await start(client) == UPID
    assert "pve.request_hook_failed" in caplog.text


# --- timeouts --------------------------------------------------------------------------------


async def test_timeouts_per_call_kind(mocked: Any) -> None:
    """Reads, task reads, async writes and sync writes use their own limits."""
    timeouts = Timeouts(connect=1, read=2, task_read=3, write=4, sync_write=50)
    mocked.get(at(f"/nodes/pve2/tasks/{UPID_TEXT}/status"), payload={"data": {"status": "running"}})
    mocked.get(at("/nodes/pve1/status"), payload={"data": {}})
    mocked.post(at("/nodes/pve1/qemu/100/status/start"), payload={"data": UPID_TEXT})
    mocked.post(at("/nodes/pve1/qemu/100/config"), payload={"data": None})
    mocked.put(at("/nodes/pve1/lxc/104/config"), payload={"data": None})
    async with HttpPveClient(ORIGIN, auth=TOKEN, timeouts=timeouts) as client:
        await client.task_status(UPID)
        await client.node_status("pve1")
        await start(client)
        await client.dispatch("pve1", Q, Action.CONFIGURE, 100, {"background_delay": 10})
        await client.dispatch("pve1", L, Action.CONFIGURE, 104, {"cores": 1})

    def limit(method: str, path: str) -> tuple[float | None, float | None]:
        (call,) = requests_to(mocked, method, path)
        return call.kwargs["timeout"].total, call.kwargs["timeout"].sock_connect

    assert limit("GET", f"/nodes/pve2/tasks/{UPID_TEXT}/status") == (3, 1)
    assert limit("GET", "/nodes/pve1/status") == (2, 1)
    assert limit("POST", "/nodes/pve1/qemu/100/status/start") == (4, 1)
    assert limit("POST", "/nodes/pve1/qemu/100/config") == (14, 1)
    assert limit("PUT", "/nodes/pve1/lxc/104/config") == (50, 1)


def test_timeouts_must_be_positive() -> None:
    """A zero or negative limit is a configuration error."""
    with pytest.raises(ConfigError, match="read"):
        Timeouts(read=0)


# --- configuration: URL, TLS, token file --------------------------------------------------------


def test_base_url_is_validated() -> None:
    """Only http(s) URLs with a host are accepted."""
    with pytest.raises(ConfigError, match="invalid Proxmox URL"):
        HttpPveClient("127.0.0.1:8006", auth=TOKEN)


async def test_api_suffix_is_not_doubled(mocked: Any) -> None:
    """A base URL that already ends in ``/api2/json`` is used as is."""
    mocked.get(at("/nodes/pve1/status"), payload={"data": {}})
    async with HttpPveClient(API + "/", auth=TOKEN) as client:
        await client.node_status("pve1")
    _, url, _ = only_request(mocked)
    assert url.path == "/api2/json/nodes/pve1/status"


DIGEST = "3A:5F:" + ":".join(["0C"] * 30)


def test_fingerprint_pinning_accepts_colons_or_plain_hex() -> None:
    """``AA:BB:…`` and plain hex name the same SHA-256 pin, given to aiohttp as a Fingerprint."""
    plain = DIGEST.replace(":", "").lower()
    assert normalize_fingerprint(DIGEST) == plain
    for text in (DIGEST, plain, plain.upper()):
        pinned = ssl_for(TlsOptions(fingerprint=text))
        assert isinstance(pinned, aiohttp.Fingerprint)
        assert pinned.fingerprint == bytes.fromhex(plain)


@pytest.mark.parametrize("bad", ["", "AA:BB", "zz" * 32, "AA" * 20])
def test_fingerprint_must_be_sha256(bad: str) -> None:
    """Anything but 32 bytes of hex is refused with advice."""
    with pytest.raises(ConfigError, match="SHA-256"):
        TlsOptions(fingerprint=bad)


def test_tls_options_are_exclusive(tmp_path: Path) -> None:
    """A CA file, a fingerprint and insecure cannot be combined."""
    with pytest.raises(ConfigError, match="choose one"):
        TlsOptions(ca_file=str(tmp_path / "ca.pem"), insecure=True)
    with pytest.raises(ConfigError, match="choose one"):
        TlsOptions(fingerprint=DIGEST, insecure=True)


async def test_insecure_logs_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """``insecure`` disables verification and says so in a ``pve.tls_insecure`` event."""
    caplog.set_level(logging.WARNING)
    assert ssl_for(TlsOptions(insecure=True)) is False
    client = HttpPveClient("https://pve.test:8006", auth=TOKEN, tls=TlsOptions(insecure=True))
    await client.close()
    assert [r.levelno for r in caplog.records if r.getMessage() == "pve.tls_insecure"] == [
        logging.WARNING,
        logging.WARNING,
    ]


def test_missing_ca_file_is_a_config_error(tmp_path: Path) -> None:
    """A CA file that does not exist is reported when the client is built."""
    with pytest.raises(ConfigError, match="does not exist"):
        HttpPveClient(
            "https://pve.test:8006",
            auth=TOKEN,
            tls=TlsOptions(ca_file=str(tmp_path / "missing.pem")),
        )


def test_load_token_file(tmp_path: Path) -> None:
    """A one-line token file gives the token user and secret."""
    path = tmp_path / "token"
    path.write_text(f"root@pam!lifecycled={SECRET}\n")
    path.chmod(0o600)
    auth = load_token_file(path)
    assert (auth.user, auth.secret) == ("root@pam!lifecycled", SECRET)
    assert auth.header() == f"PVEAPIToken=root@pam!lifecycled={SECRET}"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("", "is empty"),
        ("\n  \n", "is empty"),
        (f"root@pam={SECRET}\n", "malformed"),
        (f"root@pam!lifecycled {SECRET}\n", "malformed"),
        (f"rootpam!lifecycled={SECRET}\n", "malformed"),
        (f"root@pam!a={SECRET}\nroot@pam!b={SECRET}\n", "2 lines"),
    ],
)
def test_bad_token_files(tmp_path: Path, content: str | None, message: str) -> None:
    """Missing, empty and malformed token files are clear errors that never show the secret."""
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
        path.chmod(0o600)
    with pytest.raises(ConfigError, match=message) as info:
        load_token_file(path)
    assert SECRET not in str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_token_file_open_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    """Readable (or writable) by group or others: refused in one line naming the mode and
    the fix, never echoing the secret (it only warned before)."""
    path = tmp_path / "token"
    path.write_text(f"root@pam!lifecycled={SECRET}\n")
    path.chmod(mode)
    with pytest.raises(ConfigError, match=f"mode {mode:04o}.*chmod 600") as info:
        load_token_file(path)
    assert SECRET not in str(info.value) and "\n" not in str(info.value)


def test_token_user_is_validated() -> None:
    """A token user without ``!TOKENID`` is refused; the secret is not echoed."""
    with pytest.raises(ConfigError, match="USER@REALM!TOKENID") as info:
        TokenAuth(user="root@pam", secret=SECRET)
    assert SECRET not in str(info.value)


def test_unsendable_refuses_what_would_not_go_out_as_built() -> None:
    """unsendable names control characters and non-UTF-8 text; form newlines pass."""
    ok_form = {"description": "line one\nline two", "cores": 2}
    assert wire.unsendable("/nodes/pve1/qemu/100/config", {"vmid": 100}, ok_form) is None
    refused = {
        "path": wire.unsendable("/nodes/pve1\n/qemu/100/config", None, None),
        "query value": wire.unsendable("/nodes/pve1/tasks", {"userfilter": "a\tb"}, None),
        "form name": wire.unsendable("/x", None, {"cores\n": 2}),
        "surrogate": wire.unsendable("/x", None, {"description": "\ud800"}),
    }
    assert all(reason is not None for reason in refused.values()), refused
    assert "control character" in str(refused["form name"])
    assert "not UTF-8 encodable" in str(refused["surrogate"])
