"""SIGKILL the real daemon at random moments of a mixed workload with simulator faults;
nothing is lost or doubled (a short round of the ``make chaos`` campaign, tests/e2e/chaos.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from chaos import run_round, summary

pytestmark = pytest.mark.timeout(240)


def test_sigkill_at_random_moments_loses_and_doubles_nothing(tmp_path: Path) -> None:
    """Kill -9 the daemon 30 times while ops of every kind are in flight and faults fire:
    every op ends terminal, none is lost, no one-shot op runs twice, every task Proxmox ran
    is in the journal, the journal is intact, and Proxmox holds what succeeded ops say."""
    result = run_round(tmp_path, round_no=0, kills=30, seed=1234)
    print(summary([result]))
    assert result.integrity == ["ok"]
    assert result.ops >= 40 and result.refused == 0, (result.ops, result.refused)
    assert not result.lost, f"ops lost: {result.lost}"
    assert not result.not_terminal, f"ops not terminal: {result.not_terminal}"
    assert not result.duplicated, f"one-shot ops dispatched twice: {result.duplicated}"
    assert not result.unjournaled, f"tasks the journal never recorded: {result.unjournaled}"
    assert not result.wrong_targets, f"succeeded but Proxmox disagrees: {result.wrong_targets}"
    assert result.states.get("succeeded", 0) >= result.ops // 2, result.states
