"""Logs are one event per line with stable keys, and never contain a credential (SPEC §5)."""

from __future__ import annotations

import io
import json
import logging
import os
import re
from pathlib import Path

from engine_support import pick, running, submit, wait_terminal

from lifecycled.logs import JsonFormatter, TextFormatter, configure_logging, redact
from lifecycled.sim import SimServer


def test_redact_hides_every_credential_shape() -> None:
    """Token headers, ticket cookies, CSRF tokens, passwords and bearer tokens are masked."""
    samples = {
        "Authorization: PVEAPIToken=root@pam!ci=5f2c1e7a-aaaa-bbbb-cccc-1234567890ab": "5f2c1e7a",
        "cookie PVEAuthCookie=PVE:root@pam:65F1C2A3::c2lnbmF0dXJl": "c2lnbmF0dXJl",
        'CSRFPreventionToken: "65F1C2A3:Zm9vYmFy"': "Zm9vYmFy",
        "password=hunter2 user=x": "hunter2",
        "Authorization: Bearer s3cr3t-api-token": "s3cr3t-api-token",
    }
    for text, secret in samples.items():
        assert secret not in redact(text), text


async def test_engine_logs_never_contain_the_token(sim: SimServer, tmp_path: Path) -> None:
    """A full op cycle with errors logs JSON events with op keys and no token secret anywhere."""
    stream = io.StringIO()
    configure_logging("json", "debug", stream=stream)
    try:
        guest = pick(sim, "qemu", False)
        sim.sim.add_fault(
            method="POST",
            path=f"/qemu/{guest.vmid}/status/start$",
            count=1,
            status=500,
            reason="internal error",
        )
        async with running(sim, tmp_path) as rt:
            op = await submit(rt, "start", guest, key="logs")
            await wait_terminal(rt, op.id)
    finally:
        logging.getLogger("lifecycled").handlers.clear()
    secret = sim.sim.cfg.token.partition("=")[2]
    text = stream.getvalue()
    assert secret not in text
    events = [json.loads(line) for line in text.splitlines()]
    dispatched = [e for e in events if e["event"] == "op.dispatched"]
    assert dispatched
    assert {"op_id", "upid", "vmid", "node", "action"} <= set(dispatched[0])
    assert any(e["event"] == "op.requeued" for e in events)


def test_text_and_json_formats_are_one_line() -> None:
    """Both formats put one event on one line, with extra fields as keys."""
    record = logging.LogRecord("lifecycled.x", logging.INFO, __file__, 1, "op.claimed", None, None)
    record.op_id = 7
    record.reason = "multi\nline"
    for formatter in (JsonFormatter(), TextFormatter()):
        line = formatter.format(record)
        assert "\n" not in line
        assert "op.claimed" in line
        assert "7" in line


_LOGFMT_PAIR = re.compile(r'([A-Za-z_][A-Za-z0-9_.]*)=("(?:[^"\\]|\\.)*"|[^\s"=]+)(?:\s|$)')


def _parse_logfmt(line: str) -> dict[str, str]:
    """A strict logfmt reader: the pairs must cover the whole line."""
    pairs = list(_LOGFMT_PAIR.finditer(line))
    assert "".join(m.group(0) for m in pairs).rstrip() == line, line
    out: dict[str, str] = {}
    for m in pairs:
        raw = m.group(2)
        if raw.startswith('"'):
            raw = json.loads(raw.replace("\\x", "\\u00"))
        out[m.group(1)] = raw
    return out


def test_text_format_is_valid_logfmt() -> None:
    """Values with spaces, quotes, '=', backslashes and newlines are quoted and read back whole."""
    record = logging.LogRecord(
        "lifecycled.x", logging.WARNING, __file__, 1, "op.failed", None, None
    )
    reason = 'can\'t lock file "x" = timeout\\n\nnext\x01'
    record.__dict__.update(op_id=7, reason=reason, node="pve1")
    line = TextFormatter().format(record)
    fields = _parse_logfmt(line)
    assert fields["level"] == "warning" and fields["event"] == "op.failed"
    assert fields["op_id"] == "7" and fields["node"] == "pve1"
    assert fields["reason"] == reason
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", fields["ts"])


def test_journald_stream_gets_priorities_and_no_timestamp(tmp_path: Path) -> None:
    """When stderr is the journal (JOURNAL_STREAM matches it), lines start <N> and carry no ts."""
    path = tmp_path / "stream"
    root = logging.getLogger("lifecycled")
    with path.open("w") as stream:
        st = os.fstat(stream.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        configure_logging("text", "debug", stream=stream, env=env)
        log = logging.getLogger("lifecycled.test")
        log.warning("op.retry", extra={"op_id": 3})
        log.info("op.done")
        log.error("op.broken")
        configure_logging("json", "info", stream=stream, env=env)
        log.warning("op.json")
        configure_logging("text", "info", stream=stream, env={"JOURNAL_STREAM": "1:2"})
        log.info("not.journal")
        root.handlers.clear()  # the file closes here: later tests must not log into it
        root.propagate = True
    lines = path.read_text().splitlines()
    assert lines[0] == "<4>level=warning event=op.retry op_id=3"
    assert lines[1] == "<6>level=info event=op.done"
    assert lines[2].startswith("<3>level=error ")
    assert lines[3].startswith("<4>{") and json.loads(lines[3][3:])["event"] == "op.json"
    assert lines[4].startswith("ts=")
