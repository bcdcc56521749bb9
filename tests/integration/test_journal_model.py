"""Random verb sequences against a real journal agree with the state machine (hypothesis):
one op through random verbs, and a stateful model of many ops sharing guests and nodes."""

from __future__ import annotations

import asyncio
import itertools
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
from conftest_journal import BOOM, T0, raw_rows, request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from lifecycled.domain.lifecycle import legal as is_legal
from lifecycled.domain.op import Op
from lifecycled.domain.states import IN_FLIGHT, REARMABLE, OpState
from lifecycled.errors import Conflict, InvalidTransition
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


# --- a stateful model of many ops, guests and nodes (hypothesis RuleBasedStateMachine) -------


@attrs.define
class ModelOp:
    """What the journal must hold for one op."""

    id: int
    key: str
    action: str
    vmid: int
    node: str
    state: OpState = S.PENDING
    attempts: int = 0
    due_at: float = 0.0
    upid: str | None = None
    discarded: bool = False


#: Guests (vmid → node): few, so that ops contend for guests and node caps.
GUESTS = {101: "pve1", 102: "pve1", 103: "pve2"}
KEYS = [f"k{i}" for i in range(6)]


class JournalMachine(RuleBasedStateMachine):
    """Every journal verb, in any order, on several ops sharing guests and nodes; after each
    step the journal agrees with the model and the SPEC §1 invariants hold."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.path = Path(self.tmp.name) / "j.sqlite3"
        self.loop = asyncio.new_event_loop()
        self.journal: Journal = self.loop.run_until_complete(Journal.open(self.path))
        self.model: dict[int, ModelOp] = {}
        self.now = T0

    def run(self, coro: Awaitable[Any]) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.journal.close())
        self.loop.close()
        self.tmp.cleanup()

    def tick(self) -> float:
        self.now += 1
        return self.now

    def by_key(self, key: str) -> ModelOp | None:
        return next((m for m in self.model.values() if m.key == key), None)

    def refused(self, call: Awaitable[Any]) -> None:
        with pytest.raises(InvalidTransition):
            self.run(call)

    # -- rules ---------------------------------------------------------------------------

    @rule(key=st.sampled_from(KEYS), vmid=st.sampled_from(sorted(GUESTS)), stop=st.booleans())
    def submit(self, key: str, vmid: int, stop: bool) -> None:
        now = self.tick()
        action = "stop" if stop else "start"
        req = request(key, action=action, vmid=vmid, node=GUESTS[vmid])
        known = self.by_key(key)
        if known is not None and (known.action, known.vmid) != (action, vmid):
            with pytest.raises(Conflict):
                self.run(self.journal.submit(req, now=now))
            return
        result = self.run(self.journal.submit(req, now=now))
        if known is None:
            assert not result.deduplicated and not result.rearmed
            self.model[result.op.id] = ModelOp(
                id=result.op.id, key=key, action=action, vmid=vmid, node=GUESTS[vmid], due_at=now
            )
        elif known.state in REARMABLE:
            assert result.rearmed and result.op.id == known.id
            known.state, known.attempts, known.due_at, known.upid = S.PENDING, 0, now, None
            known.discarded = False
        else:
            assert result.deduplicated and result.op.id == known.id

    @rule(cap=st.sampled_from([None, 1, 2]))
    def claim(self, cap: int | None) -> None:
        now = self.tick()
        busy_guests = {m.vmid for m in self.model.values() if m.state in IN_FLIGHT}
        per_node = Counter(m.node for m in self.model.values() if m.state in IN_FLIGHT)
        due = sorted(
            (
                m
                for m in self.model.values()
                if m.state is S.PENDING
                and m.due_at <= now
                and m.vmid not in busy_guests
                and (cap is None or per_node[m.node] < cap)
            ),
            key=lambda m: (m.due_at, m.id),
        )
        claimed = self.run(self.journal.claim_next(now=now, node_cap=cap))
        if not due:
            assert claimed is None
            return
        assert claimed is not None and claimed.id == due[0].id
        due[0].state, due[0].attempts = S.DISPATCHING, due[0].attempts + 1

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def record_upid(self, data: st.DataObject) -> None:
        m = self.model[data.draw(st.sampled_from(sorted(self.model)))]
        upid = f"UPID:{m.node}:{self.now:.0f}:{m.id}:"
        call = self.journal.record_upid(m.id, upid, now=self.tick())
        if m.state is not S.DISPATCHING:
            self.refused(call)
            return
        self.run(call)
        m.state, m.upid = S.RUNNING, upid

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def set_upid(self, data: st.DataObject) -> None:
        m = self.model[data.draw(st.sampled_from(sorted(self.model)))]
        upid = f"UPID:{m.node}:adopted:{m.id}:"
        call = self.journal.set_upid_in_flight(m.id, upid, now=self.tick(), reason="adopted")
        if m.state not in IN_FLIGHT:
            self.refused(call)
            return
        self.run(call)
        m.state, m.upid = S.RUNNING, upid

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data(), ok=st.booleans())
    def finish(self, data: st.DataObject, ok: bool) -> None:
        m = self.model[data.draw(st.sampled_from(sorted(self.model)))]
        state = S.SUCCEEDED if ok else S.FAILED
        call = self.journal.finish(
            m.id, state, now=self.tick(), reason="r", error=None if ok else BOOM
        )
        if m.state not in IN_FLIGHT:
            self.refused(call)
            return
        self.run(call)
        m.state = state

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data(), delay=st.integers(min_value=0, max_value=3))
    def requeue(self, data: st.DataObject, delay: int) -> None:
        m = self.model[data.draw(st.sampled_from(sorted(self.model)))]
        now = self.tick()
        call = self.journal.requeue(m.id, now=now, next_attempt_at=now + delay, reason="r")
        if m.state not in IN_FLIGHT:
            self.refused(call)
            return
        self.run(call)
        m.state, m.due_at, m.upid = S.PENDING, now + delay, None

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def dead_letter(self, data: st.DataObject) -> None:
        m = self.model[data.draw(st.sampled_from(sorted(self.model)))]
        call = self.journal.dead_letter(m.id, now=self.tick(), reason="r", error=BOOM)
        if m.state not in IN_FLIGHT:
            self.refused(call)
            return
        self.run(call)
        m.state = S.DEAD_LETTERED

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        m = self.model[data.draw(st.sampled_from(sorted(self.model)))]
        call = self.journal.cancel(m.id, now=self.tick(), reason="r")
        if m.state is not S.PENDING:
            self.refused(call)
            return
        self.run(call)
        m.state = S.CANCELLED

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        m = self.model[data.draw(st.sampled_from(sorted(self.model)))]
        now = self.tick()
        call = self.journal.retry(m.id, now=now, reason="operator")
        if m.state not in REARMABLE:
            self.refused(call)
            return
        self.run(call)
        m.state, m.attempts, m.due_at, m.upid, m.discarded = S.PENDING, 0, now, None, False

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def discard(self, data: st.DataObject) -> None:
        m = self.model[data.draw(st.sampled_from(sorted(self.model)))]
        call = self.journal.discard(m.id, now=self.tick(), reason="r")
        if m.state is not S.DEAD_LETTERED:
            self.refused(call)
            return
        self.run(call)
        m.discarded = True

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def journal_agrees_with_the_model(self) -> None:
        ops = {op.id: op for op in self.run(self.journal.list_ops(limit=1000)).items}
        assert set(ops) == set(self.model), "an op appeared or was lost"
        for m in self.model.values():
            op = ops[m.id]
            assert (op.state, op.attempts) == (m.state, m.attempts), (m, op)
            assert op.idempotency_key == m.key
            if m.state in IN_FLIGHT or m.state is S.PENDING:
                assert op.upid_text == m.upid, (m, op)
            assert (op.finished_at is not None) == m.state.is_terminal, op

    @invariant()
    def spec_invariants_hold(self) -> None:
        """SPEC §1: one op in flight per guest, phase in step with state, keys unique, each
        history a chain of legal transitions ending in the op's state, the DLQ listing is
        exactly the dead letters not discarded."""
        rows = raw_rows(self.path, "SELECT id, state, phase, vmid, idempotency_key FROM ops")
        in_flight = Counter(vmid for _, state, _, vmid, _ in rows if state in IN_FLIGHT)
        assert all(n == 1 for n in in_flight.values()), in_flight
        phases = {OpState.PENDING: 1, **dict.fromkeys(IN_FLIGHT, 2)}
        assert all(phase == phases.get(OpState(state), 0) for _, state, phase, _, _ in rows), rows
        assert len({key for *_, key in rows}) == len(rows)
        for op_id, state, *_ in rows:
            history = self.run(self.journal.history(op_id))
            assert history[0].from_state is None and history[0].to_state is S.PENDING
            assert history[-1].to_state is OpState(state)
            for a, b in itertools.pairwise(history):
                assert b.from_state is a.to_state
                assert b.from_state is not None
                assert is_legal(b.from_state, b.to_state) or b.from_state is b.to_state
        dlq = {op.id for op in self.run(self.journal.list_dead_letters(limit=1000)).items}
        assert dlq == {
            m.id for m in self.model.values() if m.state is S.DEAD_LETTERED and not m.discarded
        }


JournalMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_journal_state_machine = JournalMachine.TestCase
