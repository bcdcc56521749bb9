"""A crash campaign: a mixed workload against the real daemon, which is SIGKILLed at random
moments and restarted, while faults are injected into the simulator; afterwards nothing may
be lost, no one-shot op may have run twice, every convergent op that succeeded must hold in
the simulator, and the journal file must be sound.

Shared by ``tests/e2e/test_crash.py`` (a short campaign inside ``make test``) and
``make chaos``, which runs this file::

    python tests/e2e/chaos.py --rounds 5 --kills 42     # 210 kills (the default)

Each round has its own simulator (two nodes) and journal: every plain guest is managed and
gets one op over the HTTP API (all action kinds: power, one-shot reboot/reset,
suspend/resume, resize, configure, migrate, terminate, create, clone), then the daemon is
started and SIGKILLed ``kills`` times, with a random simulator fault armed now and then
(5xx, 595, a dropped connection or a 596 after the task started, a failing task, slow
answers, an unreadable task list). Faults are cleared, the daemon runs until every op is
terminal, and the checks run on the journal, the simulator's request log and its state.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parent))

from crash_support import TOKEN_USER, Daemon, Sim, http_json, wait_for

from lifecycled.domain.actions import Action, GuestView, spec_for
from lifecycled.domain.op import GuestKind, Op
from lifecycled.journal import Journal

ONE_SHOT = frozenset({"reboot", "reset"})
#: Worker types of the one-shot actions (a second task of one of these for a guest is a
#: one-shot op dispatched twice: each guest gets at most one op per round).
ONE_SHOT_WORKERS = frozenset({"qmreboot", "qmreset", "vzreboot"})

FAULTS: tuple[dict[str, Any], ...] = (
    {
        "method": "POST",
        "path": "/status/",
        "count": 1,
        "status": 500,
        "reason": "got no worker upid - closed",
    },
    {"method": "POST", "path": ".*", "count": 2, "status": 595, "reason": "No route to host"},
    {"method": "POST", "path": "/status/", "count": 1, "drop": True},
    {
        "method": "POST",
        "path": ".*",
        "count": 1,
        "status": 596,
        "execute": True,
        "reason": "Connection timed out",
    },
    {
        "method": "POST",
        "path": "/status/(start|stop|shutdown)",
        "count": 1,
        "exitstatus": "command failed: exit code 1",
        "effect": False,
    },
    {"method": "GET", "path": "/tasks", "count": 3, "status": 595, "reason": "No route to host"},
    {"method": "*", "path": ".*", "count": 4, "delay": 0.4},
    {
        "method": "GET",
        "path": "/status/current",
        "count": 2,
        "status": 500,
        "reason": "proxy loop detected",
    },
)


@attrs.frozen(kw_only=True)
class Planned:
    """One op of a round's workload, as submitted over HTTP."""

    key: str
    action: str
    vmid: int
    kind: str
    node: str
    params: dict[str, Any]


@attrs.frozen(kw_only=True)
class RoundResult:
    ops: int
    refused: int
    kills: int
    faults: int
    tasks: int
    lost: list[str]
    not_terminal: list[int]
    duplicated: list[str]
    unjournaled: list[str]
    wrong_targets: list[str]
    integrity: list[str]
    states: dict[str, int]
    seconds: float

    @property
    def ok(self) -> bool:
        return (
            not self.lost
            and not self.not_terminal
            and not self.duplicated
            and not self.unjournaled
            and not self.wrong_targets
            and self.integrity == ["ok"]
        )

    def problems(self) -> str:
        return "; ".join(
            f"{name}: {value}"
            for name, value in (
                ("lost", self.lost),
                ("not terminal", self.not_terminal),
                ("one-shot ops dispatched twice", self.duplicated),
                ("tasks never journaled", self.unjournaled),
                ("succeeded but Proxmox disagrees", self.wrong_targets),
                ("integrity_check", [] if self.integrity == ["ok"] else self.integrity),
            )
            if value
        )


# --- the workload -------------------------------------------------------------------------------


def _plain_guests(state: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        g
        for g in state["guests"]
        if not g["template"]
        and g["ha"] is None
        and not g["lock"]
        and str(g["config"].get("protection", 0)) != "1"
    ]


def plan_workload(sim: Sim, rng: random.Random, round_no: int) -> list[Planned]:
    """One op per plain guest, every action kind, plus a few creates and clones."""
    state = sim.control("/state")
    nodes = [n["name"] for n in state["nodes"]]
    plan: list[Planned] = []
    clones = 0
    for g in _plain_guests(state):
        vmid, kind, node = int(g["vmid"]), g["kind"], g["node"]
        qemu = kind == "qemu"
        other = next(n for n in nodes if n != node)
        running = g["status"] == "running"
        if running and g.get("qmpstatus") in ("paused", "suspended"):
            choices = ["resume"]
        elif running:
            choices = ["stop", "reboot", "configure", "resize"]
            choices += ["shutdown"] if g.get("acpi", True) else []
            choices += ["reset", "suspend", "migrate"] if qemu else []
        else:
            choices = ["start", "start", "configure", "resize", "terminate"]
            choices += ["migrate", "clone"] if qemu else []
        action = rng.choice(choices)
        params: dict[str, Any] = {}
        target_vmid = vmid
        if action == "configure":
            params = {"cores": rng.randint(2, 8)}
        elif action == "resize":
            params = {"disk": "scsi0" if qemu else "rootfs", "size": "100G"}
        elif action == "migrate":
            params = {"target": other, **({"online": 1} if running else {})}
        elif action == "clone":
            clones += 1
            target_vmid = 9500 + clones
            params = {"source_vmid": vmid, "name": f"chaos-clone-{target_vmid}"}
        plan.append(
            Planned(
                key=f"chaos-{round_no}-{len(plan)}",
                action=action,
                vmid=target_vmid,
                kind=kind,
                node=node,
                params=params,
            )
        )
    for i in range(3):
        vmid = 9000 + i
        plan.append(
            Planned(
                key=f"chaos-{round_no}-{len(plan)}",
                action="create",
                vmid=vmid,
                kind="qemu",
                node=nodes[i % len(nodes)],
                params={"name": f"chaos-{vmid}", "memory": 512, "cores": 1},
            )
        )
    return plan


def manage_all(daemon: Daemon, sim: Sim) -> None:
    """Take every plain guest under management (lifecycled acts on managed guests only)."""
    for g in _plain_guests(sim.control("/state")):
        http_json(f"{daemon.url}/v1/guests/{g['vmid']}/manage", "POST", {})


def submit(daemon: Daemon, wave: list[Planned]) -> tuple[list[Planned], int]:
    """POST every op of ``wave``; the accepted ones and how many were refused."""
    accepted: list[Planned] = []
    refused = 0
    for item in wave:
        body = {
            "action": item.action,
            "vmid": item.vmid,
            "kind": item.kind,
            "node": item.node,
            "params": item.params,
            "idempotency_key": item.key,
        }
        try:
            http_json(f"{daemon.url}/v1/ops", "POST", body)
        except OSError:  # HTTPError (a 4xx refusal) is an OSError
            refused += 1
            continue
        accepted.append(item)
    return accepted, refused


# --- reading the outcome -------------------------------------------------------------------------


async def _read_journal(db: Path) -> tuple[list[Op], dict[int, set[str]], list[str]]:
    async with await Journal.open(db, create=False) as journal:
        ops: list[Op] = []
        cursor: int | None = None
        while True:
            page = await journal.list_ops(limit=500, cursor=cursor)
            ops += page.items
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        upids = {op.id: {h.upid for h in await journal.history(op.id) if h.upid} for op in ops}
        check = await journal.integrity_check()
    return ops, upids, check


def read_journal(db: Path) -> tuple[list[Op], dict[int, set[str]], list[str]]:
    return asyncio.run(_read_journal(db))


def _all_terminal(db: Path) -> bool:
    ops, _, _ = read_journal(db)
    return all(op.state.is_terminal for op in ops)


def view_of(guest: dict[str, Any] | None) -> GuestView:
    """What a Proxmox read would show of a simulator guest (pending config merged)."""
    if guest is None:
        return GuestView.absent()
    config = dict(guest["config"])
    config.update(guest.get("pending") or {})
    for key in guest.get("pending_delete") or ():
        config.pop(key, None)
    return GuestView(
        exists=True,
        node=guest["node"],
        status=guest["status"],
        qmpstatus=guest.get("qmpstatus"),
        lock=guest.get("lock"),
        ha_managed=guest.get("ha") is not None,
        template=bool(guest.get("template")),
        config=config,
        digest=guest.get("digest"),
    )


# --- one round -----------------------------------------------------------------------------------


def run_round(
    work: Path,
    *,
    round_no: int,
    kills: int,
    seed: int,
    guests: int = 48,
    waves: int = 4,
    faults: bool = True,
) -> RoundResult:
    """One round of the campaign in ``work`` (see the module docstring).

    The workload goes in ``waves`` submitted between kills (so that ops are in flight at
    most of the kills), each by a daemon allowed to get ready first.
    """
    started = time.monotonic()
    rng = random.Random(seed)
    work.mkdir(parents=True, exist_ok=True)
    sim = Sim(work, guests=guests, task_seconds=1.0, nodes="pve1,pve2")
    db = work / "journal.sqlite3"
    # The campaign measures crash safety, not the per-peer write limit.
    daemon = Daemon(work, sim, db, extra=["--write-rate", "100000", "--write-burst", "1000000"])
    armed = 0
    submitted: list[Planned] = []
    refused = 0
    try:
        plan = plan_workload(sim, rng, round_no)
        rng.shuffle(plan)
        parts = [plan[i::waves] for i in range(waves)]
        every = max(1, kills // waves)
        daemon.start()
        manage_all(daemon, sim)
        for k in range(kills):
            wave = parts[k // every] if k % every == 0 and k // every < len(parts) else None
            if wave is not None:
                if daemon.proc is None or daemon.proc.poll() is not None:
                    daemon.start()
                accepted, n = submit(daemon, wave)
                submitted += accepted
                refused += n
            elif daemon.proc is None or daemon.proc.poll() is not None:
                daemon.start(wait_ready=False)
            time.sleep(rng.uniform(0.5, 2.5))
            if faults and rng.random() < 0.5:
                sim.control("/faults", "POST", dict(rng.choice(FAULTS)))
                armed += 1
            daemon.kill()
        for wave in parts[(kills + every - 1) // every :]:
            daemon.start()
            accepted, n = submit(daemon, wave)
            submitted += accepted
            refused += n
        sim.control("/faults", "DELETE")
        if daemon.proc is None or daemon.proc.poll() is not None:
            daemon.start()
        wait_for(lambda: _all_terminal(db), 180, "all ops terminal", daemon.proc, daemon.log)
        stopped = daemon.stop()
        assert stopped == 0, f"daemon exited {stopped} on SIGTERM"
        requests = sim.control("/requests")
        state = sim.control("/state")
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.stop()
        sim.stop()
    ops, upids, check = read_journal(db)
    return _judge(
        submitted=submitted,
        refused=refused,
        ops=ops,
        upids=upids,
        check=check,
        requests=requests["items"] if isinstance(requests, dict) else requests,
        state=state,
        kills=kills,
        armed=armed,
        seconds=time.monotonic() - started,
    )


def _judge(
    *,
    submitted: list[Planned],
    refused: int,
    ops: list[Op],
    upids: dict[int, set[str]],
    check: list[str],
    requests: list[dict[str, Any]],
    state: dict[str, Any],
    kills: int,
    armed: int,
    seconds: float,
) -> RoundResult:
    by_key = {op.idempotency_key: op for op in ops}
    lost = [item.key for item in submitted if item.key not in by_key]
    created = [r["upid"] for r in requests if r.get("upid") and f":{TOKEN_USER}:" in r["upid"]]
    journaled = set().union(*upids.values()) if upids else set()
    # A one-shot op runs at most one task: count its worker type per guest.
    per_guest: Counter[tuple[str, str]] = Counter()
    for upid in set(created):
        parts = upid.split(":")
        if parts[5] in ONE_SHOT_WORKERS:
            per_guest[(parts[6], parts[5])] += 1
    duplicated = [f"{w} ×{n} on {vmid}" for (vmid, w), n in per_guest.items() if n > 1]
    guests = {int(g["vmid"]): g for g in state["guests"]}
    wrong = []
    for op in ops:
        if op.state.value != "succeeded" or op.action in ONE_SHOT:
            continue
        spec = spec_for(GuestKind(op.guest.kind), Action(op.action))
        if not spec.convergent:
            continue
        if not spec.holds(view_of(guests.get(op.guest.vmid)), op.params):
            wrong.append(f"op {op.id} {op.action} {op.guest.vmid}")
    return RoundResult(
        ops=len(ops),
        refused=refused,
        kills=kills,
        faults=armed,
        tasks=len(set(created)),
        lost=lost,
        not_terminal=[op.id for op in ops if not op.state.is_terminal],
        duplicated=duplicated,
        unjournaled=sorted(set(created) - journaled),
        wrong_targets=wrong,
        integrity=check,
        states=dict(Counter(op.state.value for op in ops)),
        seconds=seconds,
    )


def summary(results: list[RoundResult]) -> str:
    states: Counter[str] = Counter()
    for r in results:
        states.update(r.states)
    return (
        f"chaos campaign: {len(results)} rounds, {sum(r.ops for r in results)} ops, "
        f"{sum(r.kills for r in results)} kills, {sum(r.faults for r in results)} faults, "
        f"{sum(r.tasks for r in results)} tasks, "
        f"{sum(len(r.lost) for r in results)} lost, "
        f"{sum(len(r.duplicated) for r in results)} duplicated, "
        f"{sum(len(r.unjournaled) for r in results)} unjournaled, "
        f"{sum(len(r.wrong_targets) for r in results)} wrong targets, "
        f"integrity {'ok' if all(r.integrity == ['ok'] for r in results) else 'FAILED'}; "
        f"{dict(states)}; {sum(r.seconds for r in results):.0f} s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--kills", type=int, default=42, help="SIGKILLs per round")
    parser.add_argument("--guests", type=int, default=48)
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the files here")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="lifecycled-chaos-") as tmp:
        base = args.workdir or Path(tmp)
        for n in range(args.rounds):
            result = run_round(
                base / f"round-{n}",
                round_no=n,
                kills=args.kills,
                seed=args.seed + n,
                guests=args.guests,
            )
            print(
                f"round {n}: {result.ops} ops, {result.kills} kills, {result.faults} faults, "
                f"{result.tasks} tasks, {result.states}, {result.seconds:.0f} s"
                + ("" if result.ok else f" — PROBLEMS: {result.problems()}"),
                flush=True,
            )
            results.append(result)
    print(summary(results))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
