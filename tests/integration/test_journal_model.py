"""Random verb sequences against a real journal agree with the state machine (hypothesis)."""

from __future__ import annotations

import asyncio
import itertools
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from conftest_journal import BOOM, T0, request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lifecycled.domain.op import Op
from lifecycled.domain.states import IN_FLIGHT, REARMABLE, OpState, is_legal
from lifecycled.errors import InvalidTransition
from lifecycled.journal import Journal

S = OpState
#: verb → (states it accepts, state it produces); None = keeps the state.
MODEL: dict[str, tuple[frozenset[OpState], OpState | None]] = {
    "claim": (frozenset({S.PENDING}), S.DISPATCHING),
    "record_upid": (frozenset({S.DISPATCHING}), S.RUNNING),
    "set_upid": (IN_FLIGHT, S.RUNNING),
    "succeed": (IN_FLIGHT, S.SUCCEEDED),
    "fail": (IN_FLIGHT, S.FAILED),
    "requeue": (IN_FLIGHT, S.PENDING),
    "dead_letter": (IN_FLIGHT, S.DEAD_LETTERED),
    "cancel": (frozenset({S.PENDING}), S.CANCELLED),
    "retry": (REARMABLE, S.PENDING),
    "discard": (frozenset({S.DEAD_LETTERED}), None),
    "resubmit": (frozenset(S), None),  # re-arms REARMABLE, otherwise deduplicates
}


def _call(journal: Journal, op_id: int, verb: str, now: float) -> Callable[[], Awaitable[object]]:
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "claim": lambda: journal.claim_next(now=now),
        "record_upid": lambda: journal.record_upid(op_id, f"UPID:{now}", now=now),
        "set_upid": lambda: journal.set_upid_in_flight(op_id, f"UPID:x{now}", now=now, reason="r"),
        "succeed": lambda: journal.finish(op_id, S.SUCCEEDED, now=now, reason="r"),
        "fail": lambda: journal.finish(op_id, S.FAILED, now=now, reason="r", error=BOOM),
        "requeue": lambda: journal.requeue(op_id, now=now, next_attempt_at=now, reason="r"),
        "dead_letter": lambda: journal.dead_letter(op_id, now=now, reason="r"),
        "cancel": lambda: journal.cancel(op_id, now=now, reason="r"),
        "retry": lambda: journal.retry(op_id, now=now, reason="r"),
        "discard": lambda: journal.discard(op_id, now=now, reason="r"),
        "resubmit": lambda: journal.submit(request("key"), now=now),
    }
    return calls[verb]


async def _play(path: Path, verbs: list[str]) -> None:
    async with await Journal.open(path) as journal:
        op: Op = (await journal.submit(request("key"), now=T0)).op
        state, attempts = S.PENDING, 0
        for step, verb in enumerate(verbs, start=1):
            sources, target = MODEL[verb]
            now = T0 + step
            allowed = state in sources
            if verb == "claim":
                claimed = await journal.claim_next(now=now)
                assert (claimed is not None) == allowed
            elif allowed:
                await _call(journal, op.id, verb, now)()
            else:
                try:
                    await _call(journal, op.id, verb, now)()
                except InvalidTransition:
                    pass
                else:
                    raise AssertionError(f"{verb} accepted from {state}")
            if allowed:
                if verb == "claim":
                    attempts += 1
                if verb == "retry" or (verb == "resubmit" and state in REARMABLE):
                    attempts = 0
                if verb == "resubmit":
                    target = S.PENDING if state in REARMABLE else None
                state = target if target is not None else state
            now_op = await journal.get(op.id)
            assert (now_op.state, now_op.attempts) == (state, attempts), verb
        history = await journal.history(op.id)
        assert history[-1].to_state is state
        for a, b in itertools.pairwise(history):
            assert a.to_state is b.from_state
            assert b.from_state is not None
            assert is_legal(b.from_state, b.to_state) or b.from_state is b.to_state


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(sorted(MODEL)), min_size=1, max_size=25))
def test_random_verb_sequences_follow_the_state_machine(verbs: list[str]) -> None:
    """Whatever verbs are tried in whatever order, the journal only makes legal moves."""
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_play(Path(tmp) / "j.sqlite3", verbs))
