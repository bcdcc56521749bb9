"""The op tracer (``tests/integration/trace_op.py``, docs/ARCHITECTURE.md) sees the whole way."""

from __future__ import annotations

from pathlib import Path

from trace_op import BACKGROUND, format_trace, trace_op


async def test_the_trace_follows_one_op_from_the_http_request_to_succeeded(
    tmp_path: Path,
) -> None:
    """One start is traced through web, engine, journal, pve and domain, without the simulator."""
    trace = await trace_op(tmp_path)
    files = {hop.function.split(":", 1)[0] for hop in trace.hops}
    packages = {name.split("/", 1)[0] for name in files if "/" in name}
    assert trace.state == "succeeded"
    assert {"web", "engine", "journal", "pve", "domain"} <= packages
    assert "sim" not in packages
    assert {"web/handlers_ops.py", "pve/http.py", "domain/outcome.py"} <= files
    assert not {hop.where for hop in trace.hops} & BACKGROUND
    assert trace.hops[0].function.startswith("web/")  # the request comes in through the API
    listing = format_trace(trace).splitlines()
    assert listing[0].startswith(f"{len(trace.hops)} hops, op succeeded")
    assert len(listing) == len(trace.hops) + 3 + len(trace.requests)  # each hop and request once
    assert any(r.startswith("POST ") and r.endswith("/status/start") for r in trace.requests)
