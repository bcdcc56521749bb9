"""Logs are one event per line with stable keys, and never contain a credential (SPEC §5)."""

from __future__ import annotations

import io
import json
import logging
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
