"""Three real sidecars (``lifecycled run`` subprocesses, one SIGKILLed with its node) on a
three-node simulator subprocess: the ``demo-cluster`` story, every promise checked (SPEC §7)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from lifecycled.demo.cluster import ClusterDemo


@pytest.mark.timeout(120)
async def test_three_real_sidecars_keep_every_cluster_promise(tmp_path: Path) -> None:
    """Placement (421), hand-off after API and out-of-band migrations, a crashed node's guest
    restored elsewhere, LOST once, a drain every sidecar respects, one key one run."""
    out = io.StringIO()
    demo = ClusterDemo(Console(file=out, width=160), tmp_path)
    code = await demo.run()
    assert code == 0, out.getvalue()
    assert demo.numbers["LOST reports"] == 1
    assert demo.numbers["duplicates"] == 0
    assert demo.numbers["ops"] >= 4
