"""Property-based fuzzing of the live API from its own OpenAPI document (schemathesis)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from conftest_web import ALICE, serving
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.result import Err

from lifecycled.sim import SimServer

#: Examples per operation and generation mode; the whole run stays well under a minute.
MAX_EXAMPLES = 20
BUDGET_SECONDS = 60.0


class FuzzLog:
    """What the fuzzer did: operations run, requests by status, ops it really created."""

    def __init__(self) -> None:
        self.statuses: dict[int, int] = {}
        self.created: set[int] = set()
        self.operations: set[str] = set()


def _fuzz_in_child(base_url: str) -> tuple[dict[int, int], set[int], set[str]]:
    """:func:`_fuzz` in a process of its own (a spawned child): statuses, created ids, operations.

    Hypothesis describes strategies with ``ast.parse``, and CPython 3.11's AST constructor
    keeps its recursion depth per interpreter, not per thread: parsing in a worker thread while
    the daemon under test compiles code on the event loop's thread (attrs builds methods with
    ``compile``) fails with ``SystemError: AST constructor recursion depth mismatch``.
    """
    log = FuzzLog()
    try:
        _fuzz(base_url, log)
    except BaseException as exc:  # schemathesis' failures may not pickle back to the parent
        raise AssertionError(f"{type(exc).__name__}: {exc}") from None
    return log.statuses, log.created, log.operations


def _fuzz(base_url: str, log: FuzzLog) -> None:
    """Run every operation of the served document in both generation modes (blocking)."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", timeout=10)
    deadline = time.monotonic() + BUDGET_SECONDS
    with requests.Session() as session:
        for result in schema.get_all_operations():
            if isinstance(result, Err):
                raise result.err()  # the served document must load completely
            operation = result.ok()
            log.operations.add(operation.label)
            _run_one(operation.as_strategy(), base_url, session, log, deadline)
            try:
                negative = operation.as_strategy(generation_mode=GenerationMode.NEGATIVE)
                _run_one(negative, base_url, session, log, deadline)
            except Unsatisfiable:
                pass  # nothing to make invalid: no parameters and no body


def _run_one(
    strategy: st.SearchStrategy[Any],
    base_url: str,
    session: requests.Session,
    log: FuzzLog,
    deadline: float,
) -> None:
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def check(case: schemathesis.Case[Any]) -> None:
        if time.monotonic() > deadline:
            return
        response = case.call(base_url=base_url, session=session, headers=dict(ALICE), timeout=10)
        log.statuses[response.status_code] = log.statuses.get(response.status_code, 0) + 1
        if (
            case.operation.method.upper() == "POST"
            and case.operation.path == "/v1/ops"
            and response.status_code == 202
        ):
            log.created.add(int(response.json()["id"]))
        # Every check, positive_data_acceptance included: the document says exactly what the
        # server accepts (params per action and kind, from Proxmox's schema), and what only the
        # state can refuse (an unmanaged or unknown guest, two different keys) is a 404/409.
        case.validate_response(response, headers=dict(ALICE))

    check()


# Warnings schemathesis raises about its own internals (deprecations of its dependencies,
# hypothesis notes) say nothing about lifecycled; only this test tolerates them, and only
# when they are issued from schemathesis' or hypothesis' modules.
@pytest.mark.filterwarnings("ignore::DeprecationWarning:schemathesis")
@pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
@pytest.mark.timeout(120)
async def test_fuzzing_finds_no_server_error_and_rejects_without_writing(
    sim: SimServer, tmp_path: Path
) -> None:
    """Schema-driven requests never get a 5xx, valid ones are never refused as malformed
    (every check, positive_data_acceptance included) and rejections write nothing."""
    async with serving(sim, tmp_path) as env:
        before = await env.op_count()
        _, doc = await env.get_json("/openapi.json")
        documented = [f"{m.upper()} {p}" for p, ops in doc["paths"].items() for m in ops]
        log = FuzzLog()
        spawn = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
            found = await asyncio.get_running_loop().run_in_executor(pool, _fuzz_in_child, env.url)
        log.statuses, log.created, log.operations = found
        after = await env.op_count()
    # schemathesis leaves out the schema's own URL; every other route was exercised
    assert "POST /v1/ops" in log.operations and "DELETE /v1/dead-letters/{id}" in log.operations
    assert len(log.operations) == len(documented) - 1
    assert not [s for s in log.statuses if s >= 500], log.statuses
    assert sum(n for s, n in log.statuses.items() if 400 <= s < 500) > 0
    assert after - before == len(log.created)
