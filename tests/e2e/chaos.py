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

Kills are timed to in-flight work: the workload is fed in small waves whenever nothing is
pending, each kill waits until the daemon's API lists an op ``dispatching`` or ``running``,
and every fifth kill lands between a write and the journaling of its UPID (the write is
answered 596 after its task started and the task list the engine then searches is held
back). Each restart's Recover logs ``recover.finished`` with what it examined, adopted,
resumed, ...; the round sums those events from the daemon's log, so a campaign shows (and
``tests/e2e/test_crash.py`` asserts) that recovery was really exercised.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parent))

from crash_support import TOKEN_USER, Daemon, Sim, healthy, http_json, wait_for

from lifecycled.domain.actions import Action, GuestView, spec_for
from lifecycled.domain.op import GuestKind, Op
from lifecycled.engine.recover import RESULTS
from lifecycled.journal import Journal

ONE_SHOT = frozenset({"reboot", "reset"})
#: The result keys of a ``recover.finished`` event (lifecycled.engine.recover.RESULTS).
RECOVER_RESULTS = RESULTS
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
    #: Kills that landed while the daemon's API listed ops dispatching or running.
    busy_kills: int = 0
    #: Kills aimed between a POST and its UPID whose POST did run.
    aimed_kills: int = 0
    #: Recover passes the daemon finished (its ``recover.finished`` log events) ...
    recover_passes: int = 0
    #: ... those that examined at least one op ...
    recover_working: int = 0
    #: ... and their results summed (examined, adopted, resumed, failed, ...).
    recover: dict[str, int] = attrs.field(factory=dict)

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


#: Every this many kills (from the 3rd on) is aimed at the window between a POST and its
#: UPID being journaled (see :func:`_kill_between_post_and_upid`).
ADOPT_EVERY = 5
#: The next write answered 596 after its task started, for those kills (one fault per
#: write method: POST for most actions, PUT for resize and LXC configure, DELETE to destroy).
LOST_ANSWERS: tuple[dict[str, Any], ...] = tuple(
    {
        "method": method,
        "path": ".*",
        "count": 1,
        "status": 596,
        "execute": True,
        "reason": "Connection timed out",
    }
    for method in ("POST", "PUT", "DELETE")
)
#: ... and the task list that the ambiguity search then reads, held back until the kill.
SLOW_TASK_LIST: dict[str, Any] = {"method": "GET", "path": "/tasks$", "count": None, "delay": 5.0}


def _ops_in(daemon: Daemon, state: str) -> int | None:
    """How many ops the daemon's API lists in ``state`` (up to 100); None when it does not answer."""
    try:
        page = http_json(f"{daemon.url}/v1/ops?state={state}&limit=100")
    except OSError:
        return None
    return len(page["items"])


def _in_flight(daemon: Daemon) -> int | None:
    counts = [_ops_in(daemon, s) for s in ("dispatching", "running")]
    return None if None in counts else sum(c or 0 for c in counts)


def _wait_in_flight(daemon: Daemon, within: float) -> int:
    """Wait until the daemon has ops dispatching or running; how many (0 on timeout)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        n = _in_flight(daemon)
        if n:
            return n
        if daemon.proc is not None and daemon.proc.poll() is not None:
            return 0
        time.sleep(0.05)
    return 0


def _kill_between_post_and_upid(daemon: Daemon, sim: Sim, feed: Callable[[], None]) -> bool:
    """Arm a 596-after-the-task-started answer to the next write and hold back the task list
    that the engine then searches; ``feed`` submits work; SIGKILL once the write has run:
    its op is left ``dispatching`` without a UPID while its task exists, and the next
    Recover has to find and adopt it. False when no write came within a few seconds (the
    daemon is killed anyway)."""
    sim.control("/faults", "DELETE")  # nothing else may answer that write
    lost = {sim.control("/faults", "POST", f)["fault"]["id"] for f in LOST_ANSWERS}
    sim.control("/faults", "POST", SLOW_TASK_LIST)
    feed()
    deadline = time.monotonic() + 4
    hit = False
    while time.monotonic() < deadline and not hit:
        hit = len(lost & {f["id"] for f in sim.control("/faults")["faults"]}) < len(lost)
        time.sleep(0.05)
    if hit:
        time.sleep(0.4)  # the 596 reaches the engine, which starts its (slow) search
    daemon.kill()
    sim.control("/faults", "DELETE")
    return hit


def recover_reports(log: Path) -> list[dict[str, Any]]:
    """Every ``recover.finished`` event the daemon logged (JSON lines), in order."""
    reports = []
    for line in log.read_text(errors="replace").splitlines():
        if '"recover.finished"' not in line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "recover.finished":
            reports.append(event)
    return reports


def run_round(
    work: Path,
    *,
    round_no: int,
    kills: int,
    seed: int,
    guests: int = 48,
    waves: int | None = None,
    faults: bool = True,
) -> RoundResult:
    """One round of the campaign in ``work`` (see the module docstring).

    The workload goes in ``waves`` (default: one per kill), the next one submitted whenever
    nothing is pending, so that ops are in flight at most kills. Each kill waits
    (a few seconds at most) until the daemon has an op dispatching or running, then lands
    at a random moment; every :data:`ADOPT_EVERY`-th kill is aimed between a POST and its
    UPID (see :func:`_kill_between_post_and_upid`).
    """
    started = time.monotonic()
    rng = random.Random(seed)
    work.mkdir(parents=True, exist_ok=True)
    sim = Sim(work, guests=guests, task_seconds=1.0, nodes="pve1,pve2")
    db = work / "journal.sqlite3"
    # The campaign measures crash safety, not the per-peer write limit.
    daemon = Daemon(work, sim, db, extra=["--write-rate", "100000", "--write-burst", "1000000"])
    armed = 0
    busy_kills = 0
    aimed = 0
    submitted: list[Planned] = []
    refused = 0

    def submit_next() -> None:
        nonlocal refused
        if daemon.proc is None or daemon.proc.poll() is not None:
            daemon.start()
        else:
            wait_for(lambda: healthy(f"{daemon.url}/readyz"), 30, "daemon ready", daemon.proc)
        accepted, n = submit(daemon, parts.pop(0))
        submitted.extend(accepted)
        refused += n

    try:
        plan = plan_workload(sim, rng, round_no)
        rng.shuffle(plan)
        n_waves = waves or max(4, kills)
        parts = [p for p in (plan[i::n_waves] for i in range(n_waves)) if p]
        daemon.start()
        manage_all(daemon, sim)
        for k in range(kills):
            if daemon.proc is None or daemon.proc.poll() is not None:
                daemon.start(wait_ready=False)
            if faults and k % ADOPT_EVERY == 2 and parts:
                if daemon.proc is None or daemon.proc.poll() is not None:
                    daemon.start()
                wait_for(lambda: healthy(f"{daemon.url}/readyz"), 30, "ready", daemon.proc)
                hit = _kill_between_post_and_upid(daemon, sim, submit_next)
                aimed += hit
                busy_kills += hit
                armed += 1
                continue
            if parts and not _ops_in(daemon, "pending"):
                submit_next()
            busy = _wait_in_flight(daemon, 3.0)
            time.sleep(rng.uniform(0.0, 0.5))
            if faults and rng.random() < 0.5:
                sim.control("/faults", "POST", dict(rng.choice(FAULTS)))
                armed += 1
            busy_kills += busy > 0
            daemon.kill()
        while parts:
            submit_next()
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
        recovers=recover_reports(daemon.log),
        busy_kills=busy_kills,
        aimed=aimed,
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
    recovers: list[dict[str, Any]],
    busy_kills: int,
    aimed: int,
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
        busy_kills=busy_kills,
        aimed_kills=aimed,
        recover_passes=len(recovers),
        recover_working=sum(1 for r in recovers if r.get("examined", 0) > 0),
        recover=dict(
            sum(
                (Counter({k: int(r.get(k, 0)) for k in RECOVER_RESULTS}) for r in recovers),
                Counter(),
            )
        ),
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
        f"{dict(states)}; {recovery(results)}; {sum(r.seconds for r in results):.0f} s"
    )


def recovery(results: list[RoundResult]) -> str:
    """What the kills made Recover do: the proof that the campaign exercised recovery."""
    totals: Counter[str] = Counter()
    for r in results:
        totals.update(r.recover)
    return (
        f"{sum(r.busy_kills for r in results)} kills with ops in flight "
        f"({sum(r.aimed_kills for r in results)} between a POST and its UPID), "
        f"{sum(r.recover_passes for r in results)} Recover passes "
        f"({sum(r.recover_working for r in results)} with work) examined "
        f"{totals['examined']} ops: "
        + ", ".join(f"{k} {totals[k]}" for k in RECOVER_RESULTS if k != "examined" and totals[k])
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
                f"{result.tasks} tasks, {result.states}, {recovery([result])}, "
                f"{result.seconds:.0f} s"
                + ("" if result.ok else f" — PROBLEMS: {result.problems()}"),
                flush=True,
            )
            results.append(result)
    print(summary(results))
    if not any(r.recover.get("adopted") for r in results):
        print("Recover adopted no task in the whole campaign: recovery was not exercised")
        return 1
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
