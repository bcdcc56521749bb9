"""SIGKILL the real daemon while ops are dispatching or running, with simulator faults;
nothing is lost or doubled, and Recover demonstrably did the work (a short round of the
``make chaos`` campaign, tests/e2e/chaos.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from chaos import recovery, run_round, summary

pytestmark = pytest.mark.timeout(240)

KILLS = 30


def test_sigkill_while_ops_are_in_flight_loses_and_doubles_nothing(tmp_path: Path) -> None:
    """Kill -9 the daemon 30 times, each time while ops are dispatching or running, some
    between a POST and its UPID, while faults fire: Recover examines the ops left in flight
    (adopting tasks whose UPID was never journaled), every op ends terminal, none is lost, no
    one-shot op runs twice, every task Proxmox ran is in the journal, the journal is intact,
    and Proxmox holds what succeeded ops say."""
    result = run_round(tmp_path, round_no=0, kills=KILLS, seed=1234)
    print(summary([result]))
    assert result.integrity == ["ok"]
    assert result.ops >= 40 and result.refused == 0, (result.ops, result.refused)
    assert not result.lost, f"ops lost: {result.lost}"
    assert not result.not_terminal, f"ops not terminal: {result.not_terminal}"
    assert not result.duplicated, f"one-shot ops dispatched twice: {result.duplicated}"
    assert not result.unjournaled, f"tasks the journal never recorded: {result.unjournaled}"
    assert not result.wrong_targets, f"succeeded but Proxmox disagrees: {result.wrong_targets}"
    assert result.states.get("succeeded", 0) >= result.ops // 2, result.states
    # The kills exercised recovery: they landed on in-flight work, and Recover resolved it.
    proof = recovery([result])
    assert result.busy_kills >= KILLS * 2 // 3, proof
    assert result.aimed_kills >= 3, proof
    assert result.recover_passes >= KILLS // 2, proof
    assert result.recover_working >= KILLS // 2, proof
    assert result.recover.get("examined", 0) >= KILLS, proof
    assert result.recover.get("adopted", 0) >= 1, proof
