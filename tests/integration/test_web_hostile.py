"""Hostile input over real HTTP (issue 11): hundreds of generated bad requests on every route.

Each generated request is invalid by construction (one hostile element in an otherwise valid
request: a control character, NUL or lone surrogate, a trailing newline, a huge or
non-finite number, a repeated JSON key, a wrong content type, an unknown or nested param, a
hostile path id or query). The daemon runs whole (Recover, dispatchers, tracker), so an
accepted op would be dispatched. Asserted: no 5xx, every refusal in the JSON error shape
without a ``Server`` header, nothing written (ops, audit records, guests, node, nonces), the
daemon still serving. The tallies are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import multiprocessing
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest_web import ALICE, WebEnv, pick, serving
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from lifecycled.sim import SimServer

#: Examples per family; the families below add up to several hundred requests.
EXAMPLES = {"ops": 300, "desired": 60, "node": 60, "query": 120, "path": 100}
BUDGET_SECONDS = 90.0

#: Characters no single-line field may hold (a lone surrogate included).
BAD_CHARS = ["\x00", "\x01", "\x08", "\x1b", "\x1f", "\x7f", "\x85", "\x9f", "\u2028", "\ud800"]
#: ...of which free text (a description) may hold none either.
BAD_FREE_TEXT = [c for c in BAD_CHARS if c not in "\n\t"]


class Tally:
    """What was sent and what came back."""

    def __init__(self) -> None:
        self.cases = 0
        self.statuses: dict[int, int] = {}
        self.server_errors: list[str] = []
        self.bad_shapes: list[str] = []
        self.accepted: list[str] = []

    def record(self, what: str, response: requests.Response, *, write: bool) -> None:
        self.cases += 1
        status = response.status_code
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status >= 500:
            self.server_errors.append(f"{status} {what}")
        if status >= 400 and not _is_error_shape(response):
            self.bad_shapes.append(f"{status} {what}: {response.text[:100]!r}")
        if "Server" in response.headers:
            self.bad_shapes.append(f"Server header on {what}")
        if write and status < 400:
            self.accepted.append(f"{status} {what}")


def _is_error_shape(response: requests.Response) -> bool:
    if response.headers.get("Content-Type", "").split(";")[0] != "application/json":
        return False
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and set(body.get("error", {})) == {"code", "message", "details"}


def _with_bad_char(chars: list[str]) -> st.SearchStrategy[str]:
    """Some text with at least one forbidden character somewhere in it."""
    return st.tuples(
        st.text(alphabet="abcXYZ019-_.:", max_size=8),
        st.sampled_from(chars),
        st.text(alphabet="abcXYZ019-_.:", max_size=8),
    ).map("".join)


HOSTILE_TEXT = st.one_of(
    _with_bad_char(BAD_CHARS),
    st.sampled_from(["pve1\n", "key-1\n", "start\n", "qemu\n", " ", "", "x" * 70_000]),
)
HUGE_INT = st.one_of(
    st.integers(min_value=2**63, max_value=2**300),
    st.integers(min_value=-(2**300), max_value=-(2**63) - 1),
)
#: JSON number texts no 64-bit integer or finite float can hold.
HUGE_NUMBER_TEXT = st.sampled_from(
    ["1e400", "-1e999", "123456789012345678901234567890", "NaN", "Infinity", "-Infinity"]
)


def _dump(value: Any) -> str:
    # ensure_ascii escapes a lone surrogate as \ud800, which a JSON parser turns back into one
    return json.dumps(value, ensure_ascii=True)


# --- POST /v1/ops ----------------------------------------------------------------------------


def _submission_cases(base: dict[str, Any]) -> st.SearchStrategy[tuple[str, bytes, str]]:
    """(description, body bytes, content type): ``base`` with one hostile change."""
    json_type = "application/json"

    def body(sub: dict[str, Any], why: str) -> tuple[str, bytes, str]:
        return (why, _dump(sub).encode(), json_type)

    field = st.sampled_from(["action", "kind", "node", "idempotency_key"])
    replaced_field = st.builds(
        lambda name, text: body({**base, name: text}, f"{name}={text[:20]!r}"), field, HOSTILE_TEXT
    )
    bad_vmid = st.builds(
        lambda v: body({**base, "vmid": v}, f"vmid={str(v)[:30]}"),
        st.one_of(
            HUGE_INT,
            st.integers(max_value=99),
            st.integers(min_value=1_000_000_000, max_value=2**63 - 1),
            st.sampled_from(["101", True, None, 101.5, [101], {"v": 101}]),
        ),
    )
    unknown_key = st.builds(
        lambda k: body({**base, "params": {**base["params"], f"zz{k}": 1}}, f"param zz{k!r}"),
        st.text(max_size=10),
    )
    bad_key = st.builds(
        lambda k: body({**base, "params": {k: 1}}, f"param key {k[:20]!r}"), HOSTILE_TEXT
    )
    nested_value = st.builds(
        lambda key, value: body({**base, "params": {key: value}}, f"{key}={value!r}"[:60]),
        st.sampled_from(["cores", "name", "description", "memory", "onboot"]),
        st.one_of(
            st.lists(st.integers(), max_size=3),
            st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
            st.none(),
            HUGE_INT,
        ),
    )
    wrong_type = st.builds(
        lambda pair: body({**base, "params": {pair[0]: pair[1]}}, f"{pair[0]}={pair[1]!r}"),
        st.sampled_from(
            [
                ("cores", "2"),
                ("cores", "yes"),
                ("cores", 0),
                ("cores", -5),
                ("cores", 1.5),
                ("cores", True),
                ("onboot", 2),
                ("onboot", "yes"),
                ("onboot", "on"),
                ("onboot", "2"),
                ("ostype", "dos"),
                ("ostype", 5),
                ("name", True),
            ]
        ),
    )
    hostile_value = st.builds(
        lambda key, text: body({**base, "params": {key: text}}, f"{key}={text[:20]!r}"),
        st.sampled_from(["name", "tags", "description", "args"]),
        st.one_of(_with_bad_char(BAD_FREE_TEXT), st.just("y" * 9000)),
    )
    too_many = st.just(
        body({**base, "params": {f"net{i}": "virtio" for i in range(200)}}, "200 params")
    )
    unknown_field = st.builds(
        lambda k: body({**base, k: 1}, f"field {k[:20]!r}"),
        st.text(min_size=1, max_size=10).filter(lambda k: k not in base and k != "params"),
    )
    raw_number = st.builds(
        lambda where, text: (
            f"{where}={text}",
            _dump(base).replace('"cores": 2', f'"cores": {text}').encode()
            if where == "param"
            else _dump({**base, "vmid": 0}).replace('"vmid": 0', f'"vmid": {text}').encode(),
            json_type,
        ),
        st.sampled_from(["param", "vmid"]),
        HUGE_NUMBER_TEXT,
    )
    duplicate = st.builds(
        lambda name, value: (
            f"duplicate {name}",
            _dump(base)[:-1].encode() + f", {_dump(name)}: {_dump(value)}}}".encode(),
            json_type,
        ),
        st.sampled_from(["action", "vmid", "params", "kind", "node"]),
        st.sampled_from(["terminate", 999, {}, "lxc", "pve2"]),
    )
    content_type = st.builds(
        lambda ctype: (f"content-type {ctype!r}", _dump(base).encode(), ctype),
        st.sampled_from(
            [
                "text/plain",
                "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x",
                "",
                "application/json; charset=latin-1",
                "application/jsonx",
                "text/json",
            ]
        ),
    )
    not_utf8 = st.sampled_from(
        [
            ("latin-1 body", _dump(base).replace("pve", "p\u00e9").encode("latin-1"), json_type),
            ("utf-16 body", _dump(base).encode("utf-16"), json_type),
            ("bom", b"\xef\xbb\xbf" + _dump(base).encode(), json_type),
            ("trailing garbage", _dump(base).encode() + b" x", json_type),
            ("two objects", _dump(base).encode() * 2, json_type),
        ]
    )
    return st.one_of(
        replaced_field,
        bad_vmid,
        unknown_key,
        bad_key,
        nested_value,
        wrong_type,
        hostile_value,
        too_many,
        unknown_field,
        raw_number,
        duplicate,
        content_type,
        not_utf8,
    )


# --- the other routes --------------------------------------------------------------------------


def _body_cases(
    field: str, good: str, max_length: int
) -> st.SearchStrategy[tuple[str, bytes, str]]:
    """Hostile bodies of a one-field JSON object (``{"state": ...}``, ``{"reason": ...}``)."""
    json_type = "application/json"
    return st.one_of(
        st.builds(
            lambda t: (f"{field}={t[:20]!r}", _dump({field: t}).encode(), json_type),
            _with_bad_char(BAD_CHARS),
        ),
        st.builds(
            lambda n: (f"{field} x{n}", _dump({field: "r" * n}).encode(), json_type),
            st.integers(min_value=max_length + 1, max_value=max_length + 5000),
        ),
        st.builds(
            lambda v: (f"{field}={v!r}"[:40], _dump({field: v}).encode(), json_type),
            st.one_of(
                HUGE_INT,
                st.lists(st.integers(), max_size=2),
                st.booleans(),
                st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
            ),
        ),
        st.just(
            (f"{field} twice", f'{{"{field}": "{good}", "{field}": "{good}"}}'.encode(), json_type)
        ),
        st.builds(
            lambda k: (f"extra {k!r}"[:30], _dump({field: good, f"zz{k}": 1}).encode(), json_type),
            st.text(max_size=5),
        ),
        st.builds(
            lambda c: (f"ctype {c!r}", _dump({field: good}).encode(), c),
            st.sampled_from(
                [
                    "text/plain",
                    "application/x-www-form-urlencoded",
                    "application/json; charset=utf-16",
                ]
            ),
        ),
        st.builds(
            lambda t: (f"number {t}", f'{{"{field}": {t}}}'.encode(), json_type), HUGE_NUMBER_TEXT
        ),
    )


QUERY_ROUTES = ["/v1/ops", "/v1/dead-letters", "/v1/guests", "/v1/audit"]
QUERY_VALUES = st.one_of(
    st.sampled_from(
        [
            "%00",
            "101%0A",
            "pending%0A",
            "%ED%A0%80",
            "%EF%BC%91%EF%BC%90%EF%BC%91",
            "99999999999999999999999999",
            "-1",
            "0",
            "1e3",
            "101.0",
            "%20101",
            "",
            "true%0A",
            "start%00",
            "2026-13-40T99:99:99Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.99999999999999999999%2B99:99",
            "nan",
            "%C0%AF",
        ]
    ),
    st.text(alphabet="%0123456789ABCDEFabcxyz", max_size=20),
)
QUERY_KEYS = st.sampled_from(
    [
        "state",
        "vmid",
        "action",
        "limit",
        "cursor",
        "origin",
        "observed",
        "drifted",
        "decision",
        "since",
        "until",
        "zz",
        "%00",
        "limit%0A",
        "vmid[]",
    ]
)

PATH_IDS = st.one_of(
    st.sampled_from(
        [
            "%00",
            "1%0A",
            "101%0A",
            "99999999999999999999999",
            "9223372036854775808",
            "-1",
            "0",
            "%EF%BC%91%EF%BC%90%EF%BC%91",
            "101.0",
            "1e3",
            "%ED%A0%80",
            "%20101",
            "0x65",
            "%C0%AF",
            "..%2F..",
            "101%00",
        ]
    ),
    st.integers(min_value=2**63, max_value=2**100).map(str),
)
PATH_ROUTES = [
    ("GET", "/v1/ops/{}"),
    ("POST", "/v1/ops/{}/cancel"),
    ("POST", "/v1/dead-letters/{}/retry"),
    ("DELETE", "/v1/dead-letters/{}"),
    ("GET", "/v1/guests/{}"),
    ("POST", "/v1/guests/{}/manage"),
    ("POST", "/v1/guests/{}/adopt"),
    ("POST", "/v1/guests/{}/release"),
    ("PUT", "/v1/guests/{}/desired"),
]


def _hypothesis(examples: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )


def _fuzz_in_child(url: str, base: dict[str, Any], vmid: int) -> Tally:
    """:func:`_fuzz` in a spawned process of its own: hypothesis parses source with ``ast``,
    whose recursion depth CPython 3.11 keeps per interpreter, not per thread, so it must not
    run beside the daemon's event loop (see test_web_schemathesis). A failure comes back as
    a plain AssertionError (what hypothesis raises may not pickle)."""
    tally = Tally()
    try:
        _fuzz(url, base, vmid, tally)
    except BaseException as exc:
        raise AssertionError(f"{type(exc).__name__}: {exc}") from None
    return tally


def _fuzz(url: str, base: dict[str, Any], vmid: int, tally: Tally) -> None:
    """Every family against the live daemon (blocking)."""
    deadline = time.monotonic() + BUDGET_SECONDS
    headers = dict(ALICE)
    with requests.Session() as session:

        def send(method: str, path: str, what: str, *, write: bool, **kwargs: Any) -> None:
            if time.monotonic() > deadline:
                return
            response = session.request(
                method,
                url + path,
                headers=headers | kwargs.pop("headers", {}),
                timeout=10,
                **kwargs,
            )
            tally.record(f"{method} {path[:60]} {what}", response, write=write)

        @_hypothesis(EXAMPLES["ops"])
        @given(case=_submission_cases(base))
        def ops(case: tuple[str, bytes, str]) -> None:
            what, data, ctype = case
            send("POST", "/v1/ops", what, write=True, data=data, headers={"Content-Type": ctype})

        @_hypothesis(EXAMPLES["desired"])
        @given(case=_body_cases("state", "running", 20))
        def desired(case: tuple[str, bytes, str]) -> None:
            what, data, ctype = case
            send(
                "PUT",
                f"/v1/guests/{vmid}/desired",
                what,
                write=True,
                data=data,
                headers={"Content-Type": ctype},
            )

        @_hypothesis(EXAMPLES["node"])
        @given(
            case=_body_cases("reason", "maintenance", 500),
            verb=st.sampled_from(["drain", "undrain", "decommission"]),
        )
        def node(case: tuple[str, bytes, str], verb: str) -> None:
            what, data, ctype = case
            send(
                "POST",
                f"/v1/node/{verb}",
                what,
                write=True,
                data=data,
                headers={"Content-Type": ctype},
            )

        @_hypothesis(EXAMPLES["query"])
        @given(
            route=st.sampled_from(QUERY_ROUTES),
            pairs=st.lists(st.tuples(QUERY_KEYS, QUERY_VALUES), min_size=1, max_size=3),
        )
        def query(route: str, pairs: list[tuple[str, str]]) -> None:
            # requests would re-encode a dict; the raw query string is sent as written
            qs = "&".join(f"{k}={v}" for k, v in pairs)
            send("GET", f"{route}?{qs}", "", write=False)

        @_hypothesis(EXAMPLES["path"])
        @given(route=st.sampled_from(PATH_ROUTES), ident=PATH_IDS)
        def path(route: tuple[str, str], ident: str) -> None:
            method, template = route
            kwargs: dict[str, Any] = {}
            if method == "PUT":
                kwargs = {"json": {"state": "running"}}
            send(method, template.format(ident), "", write=method != "GET", **kwargs)

        for family in (ops, desired, node, query, path):
            family()


async def _written(env: WebEnv) -> tuple[Any, ...]:
    journal = env.runtime.journal
    return (
        await journal.counts_by_state(),
        len((await journal.list_audit(limit=500)).items),
        await journal.all_guests(),
        await journal.nonce_count(),
        (await journal.ensure_node(env.runtime.settings.primary_node, now=0.0, actor="test")).state,
    )


# Requests made by hypothesis in a thread: its own notes are not lifecycled's warnings.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
@pytest.mark.timeout(180)
async def test_hostile_requests_on_every_route_get_4xx_and_write_nothing(
    sim: SimServer, tmp_path: Path
) -> None:
    """Hundreds of generated hostile requests: no 5xx, JSON errors, no write, still serving."""
    guest = pick(sim, "qemu", running=False)
    base = {
        "action": "configure",
        "vmid": guest.vmid,
        "kind": "qemu",
        "node": guest.node,
        "params": {"cores": 2},
        "idempotency_key": "hostile-base",
    }
    async with serving(sim, tmp_path) as env:
        before = await _written(env)
        spawn = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
            tally = await asyncio.get_running_loop().run_in_executor(
                pool, _fuzz_in_child, env.url, base, guest.vmid
            )
        after = await _written(env)
        status, health = await env.get_json("/readyz")
        print(
            f"\nhostile HTTP: {tally.cases} cases, "
            f"{sum(n for s, n in tally.statuses.items() if s >= 500)} 5xx, "
            f"{len(tally.accepted)} accepted writes, statuses {sorted(tally.statuses.items())}"
            f" {tally.accepted}"
        )
        assert (status, health) == (200, {"status": "ready"})
        assert not env.runtime.stopping.is_set()
        # the base itself is valid: the daemon still accepts real work
        status, _ = await env.submit(base)
        assert status == 202
    assert tally.cases >= 500, tally.cases
    assert tally.server_errors == []
    assert tally.bad_shapes == []
    assert tally.accepted == []
    assert after == before


# --- aiohttp's own protocol errors -------------------------------------------------------------

MARKER = b"SECRETBYTES"
PROTOCOL_CASES = {
    "NUL in a header": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: " + MARKER + b"\x00\r\n\r\n",
    "bad request line": b"GET /he\x00althz " + MARKER + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "header too long": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: " + MARKER * 1000 + b"\r\n\r\n",
    "line too long": b"GET /" + MARKER * 1000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "too many headers": b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
    + b"".join(b"X-%d: " % i + MARKER + b"\r\n" for i in range(200))
    + b"\r\n",
    "bad content length": b"POST /v1/ops HTTP/1.1\r\nHost: x\r\nContent-Length: "
    + MARKER
    + b"\r\n\r\n",
    "bad chunk size": b"POST /v1/ops HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Type: application/json\r\n\r\n" + MARKER + b"\r\nabc\r\n0\r\n\r\n",
    "second request malformed": b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nBL\x01AH / HTTP/1.1\r\nX: "
    + MARKER
    + b"\r\n\r\n",
}


def _exchange(host: str, port: int, data: bytes) -> bytes:
    with socket.create_connection((host, port), timeout=5) as conn:
        conn.sendall(data)
        out = b""
        while chunk := conn.recv(65536):
            out += chunk
    return out


async def test_protocol_errors_log_one_line_without_traceback_or_request_bytes(
    sim: SimServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Malformed HTTP (bad request line, NUL in a header, lines too long) is answered 400 and
    logged as one http.protocol_error line: no traceback, none of the request's bytes."""
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="lifecycled.web.protocol")
    async with serving(sim, tmp_path, run=False) as env:
        host, _, port = env.url.removeprefix("http://").rpartition(":")
        for name, data in PROTOCOL_CASES.items():
            answer = await asyncio.to_thread(_exchange, host, int(port), data)
            assert b" 400 " in answer.split(b"\r\n", 1)[0] or b" 400 " in answer, name
        async with env.http.get("/healthz") as resp:
            assert resp.status == 200
            assert "Server" not in resp.headers
    events = [r for r in caplog.records if r.name.startswith("lifecycled.web.protocol")]
    assert len(events) >= len(PROTOCOL_CASES) - 1  # the first-request bad method is debug-only
    assert all(r.getMessage() == "http.protocol_error" and r.exc_info is None for r in events)
    assert "Traceback" not in caplog.text
    assert MARKER.decode() not in caplog.text
