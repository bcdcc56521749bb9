"""``make bench``: lifecycled's benchmarks (docs/BENCHMARKS.md).

``BENCH_LIFECYCLED=<source tree>`` measures the lifecycled in that tree (e.g. a worktree of
an older commit) instead of the installed one: it is put first on ``sys.path`` here, before
any bench module imports lifecycled, and the daemon child runs from it too. The simulator
always runs from this tree (it is the environment, not what is measured).
"""

from __future__ import annotations

import os
import sys

MEASURED_SOURCE = os.environ.get("BENCH_LIFECYCLED") or None
if MEASURED_SOURCE is not None:
    MEASURED_SOURCE = os.path.abspath(MEASURED_SOURCE)
    sys.path.insert(0, MEASURED_SOURCE)
