"""The demo's story: simulator + daemon, a mixed batch, SIGKILL mid-flight, Recover, checks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.live import Live

from lifecycled.demo.procs import Child, free_port, start_simulator, wait_ready
from lifecycled.demo.view import Planned, ops_table, screen, summary_table
from lifecycled.domain.op import Op
from lifecycled.domain.states import OpState
from lifecycled.journal import Journal

TOKEN = "root@pam!lifecycled=demo-not-a-secret"  # noqa: S105 - the demo simulator's own token
TOKEN_USER = "root@pam!lifecycled"  # noqa: S105 - a user name, not a secret
TASK_SECONDS = 2.5
TERMINAL = {"succeeded", "failed", "dead_lettered", "cancelled"}


class Demo:
    """Runs the story once; :meth:`run` returns the process exit code."""

    def __init__(self, console: Console, workdir: Path, *, keep: bool = False) -> None:
        self.console = console
        self.keep = keep
        self.dir = workdir
        self.db = workdir / "journal.sqlite3"
        self.events: list[str] = []
        self.planned: list[Planned] = []
        self.api = ""
        self.sim_url = ""
        self.sim: Child | None = None
        self.daemon: Child | None = None
        self.session: aiohttp.ClientSession | None = None
        self.kills = 0

    def say(self, text: str) -> None:
        self.events.append(f"{time.strftime('%H:%M:%S')}  {text}")

    # --- processes ----------------------------------------------------------------------

    async def start_sim(self) -> None:
        self.sim, self.sim_url = await start_simulator(
            self.dir,
            nodes="pve1,pve2",
            guests=24,
            token=TOKEN,
            task_seconds=TASK_SECONDS,
            extra=["--lock-timeout", "1"],
        )
        self.say(f"simulator serving a 2-node cluster with 24 guests at {self.sim_url}")

    async def start_daemon(self) -> None:
        token_file = self.dir / "pve.token"
        if not token_file.exists():
            fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(TOKEN + "\n")
        port = free_port()
        self.api = f"http://127.0.0.1:{port}"
        self.daemon = Child(
            "daemon",
            [
                "run",
                "--db",
                str(self.db),
                "--listen",
                f"127.0.0.1:{port}",
                "--node",
                "pve1,pve2",  # one daemon serving both nodes of the cluster (SPEC §7)
                "--pve-url",
                self.sim_url,
                "--pve-token-file",
                str(token_file),
                "--workers",
                "4",
                "--node-cap",
                "6",
                "--max-retries",
                "3",
                "--retry-backoff",
                "1s",
                "--max-backoff",
                "2s",
                "--poll-interval",
                "1s",
                "--stale-after",
                "2m",
                "--no-reconcile-on-start",
                "--log-format",
                "json",
            ],
            self.dir / "daemon.log",
        )
        await self.daemon.start()
        assert self.session is not None
        await wait_ready(self.session, f"{self.api}/readyz", self.daemon, within=30)

    # --- Proxmox-side helpers (through the simulator's API and control endpoint) ---------

    async def pve_get(self, path: str) -> Any:
        assert self.session is not None
        headers = {"Authorization": f"PVEAPIToken={TOKEN}"}
        async with self.session.get(f"{self.sim_url}/api2/json{path}", headers=headers) as resp:
            resp.raise_for_status()
            return (await resp.json())["data"]

    async def control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        assert self.session is not None
        async with self.session.request(method, f"{self.sim_url}/_sim{path}", json=body) as resp:
            resp.raise_for_status()
            return await resp.json()

    # --- the batch ------------------------------------------------------------------------

    async def plan_batch(self) -> None:
        """Pick guests from what the cluster really holds and plan one op per story point."""
        res = [r for r in await self.pve_get("/cluster/resources?type=vm") if not r.get("hastate")]
        # /cluster/resources finds the guests; its status lags (§13.10): take the nodes' live lists.
        live: dict[int, str] = {}
        for node, kind in sorted({(str(r["node"]), str(r["type"])) for r in res}):
            for item in await self.pve_get(f"/nodes/{node}/{kind}"):
                live[int(item["vmid"])] = str(item.get("qmpstatus") or item["status"])
        for r in res:
            r["status"] = live.get(int(r["vmid"]), "unknown")
        usable = [r for r in res if not r.get("template")]
        template = next((r for r in res if r.get("template")), None)
        pool: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in sorted(usable, key=lambda r: int(r["vmid"])):
            config = await self.pve_get(f"/nodes/{r['node']}/{r['type']}/{r['vmid']}/config")
            if str(config.get("protection", "0")) == "1":
                continue
            r["config"] = config
            pool.setdefault((r["type"], r["status"]), []).append(r)

        def take(kind: str, status: str) -> dict[str, Any]:
            items = pool.get((kind, status)) or []
            if not items:
                raise RuntimeError(f"the simulator has no spare {status} {kind} guest for the demo")
            return items.pop(0)

        run = "demo-" + str(int(time.time()))

        def plan(
            label: str, action: str, g: dict[str, Any], expect: str, note: str, **params: Any
        ) -> None:
            body = {
                "action": action,
                "vmid": int(g["vmid"]),
                "kind": g["type"],
                "node": g["node"],
                "params": params,
                "idempotency_key": f"{run}-{len(self.planned) + 1}",
            }
            self.planned.append(Planned(label=label, body=body, expect=expect, note=note))

        plan("start", "start", take("qemu", "stopped"), "succeeded", "convergent: start → running")
        plan("start", "start", take("lxc", "stopped"), "succeeded", "container start")
        plan("shutdown", "shutdown", take("qemu", "running"), "succeeded", "ACPI shutdown")
        plan("shutdown", "shutdown", take("lxc", "running"), "succeeded", "container shutdown")
        plan("stop", "stop", take("qemu", "running"), "succeeded", "hard stop (destructive)")
        plan("reboot", "reboot", take("qemu", "running"), "succeeded", "one-shot: never sent twice")
        grow = take("qemu", "stopped")
        plan(
            "resize",
            "resize",
            grow,
            "succeeded",
            "grow scsi0 to an absolute size",
            disk="scsi0",
            size=_grown(grow["config"].get("scsi0", "")),
        )
        plan(
            "configure",
            "configure",
            take("qemu", "stopped"),
            "succeeded",
            "cores=4 memory=4096",
            cores=4,
            memory=4096,
        )
        mig = take("qemu", "stopped")
        plan(
            "migrate",
            "migrate",
            mig,
            "succeeded",
            "offline migrate to the other node",
            target="pve2" if mig["node"] == "pve1" else "pve1",
        )
        plan(
            "terminate", "terminate", take("qemu", "stopped"), "succeeded", "destroy (destructive)"
        )
        locked = take("qemu", "stopped")
        plan(
            "start (locked)",
            "start",
            locked,
            "succeeded",
            "backup lock held 4 s: waits, then starts",
        )
        if template is not None:
            plan("start template", "start", template, "failed", "permanent: templates cannot start")
        flaky = take("lxc", "running")
        plan("reboot (5xx)", "reboot", flaky, "dead_lettered", "Proxmox answers 500 every time")
        await self.control(
            "POST", f"/guests/{locked['vmid']}/lock", {"lock": "backup", "seconds": 4}
        )
        await self.control(
            "POST",
            "/faults",
            {
                "method": "POST",
                "path": f"/lxc/{flaky['vmid']}/status/reboot$",
                "count": None,
                "status": 500,
                "reason": "proxy loop detected",
            },
        )
        self.say(
            f"planned {len(self.planned)} ops; a backup lock on {locked['vmid']}, "
            f"a persistent 500 on {flaky['vmid']}'s reboot"
        )

    async def manage_all(self) -> None:
        """lifecycled only acts on guests it manages: take the batch's guests under it."""
        assert self.session is not None
        vmids = sorted({int(str(p.body["vmid"])) for p in self.planned})
        for vmid in vmids:
            async with self.session.post(f"{self.api}/v1/guests/{vmid}/manage") as resp:
                if resp.status != 200:
                    raise RuntimeError(f"manage {vmid} refused: {resp.status} {await resp.text()}")
        self.say(f"took {len(vmids)} guests under management (native), fingerprints recorded")

    async def submit_all(self) -> None:
        assert self.session is not None
        await self.manage_all()
        for p in self.planned:
            async with self.session.post(f"{self.api}/v1/ops", json=p.body) as resp:
                if resp.status not in (200, 202):
                    raise RuntimeError(f"submission refused: {resp.status} {await resp.text()}")
        self.say(f"submitted {len(self.planned)} ops over HTTP with idempotency keys")

    # --- watching -------------------------------------------------------------------------

    async def snapshot(self) -> tuple[dict[str, Op], dict[int, int]]:
        """Ops by key, read straight from the journal file (works while the daemon is dead)."""
        async with await Journal.open(self.db, create=False, migrate=False) as journal:
            ops: dict[str, Op] = {}
            tasks: dict[int, int] = {}
            for p in self.planned:
                op = await journal.by_key(str(p.body["idempotency_key"]))
                if op is not None:
                    ops[op.idempotency_key] = op
                    tasks[op.id] = len({h.upid for h in await journal.history(op.id) if h.upid})
            return ops, tasks

    async def watch(self, live: Live, phase: str, until: Any, within: float) -> dict[str, Op]:
        deadline = time.monotonic() + within
        while True:
            ops, tasks = await self.snapshot()
            live.update(screen(phase, self.events, ops_table("ops", self.planned, ops, tasks)))
            if until(ops) or time.monotonic() > deadline:
                return ops
            await asyncio.sleep(0.25)

    # --- the story --------------------------------------------------------------------------

    async def run(self) -> int:
        async with aiohttp.ClientSession() as self.session:
            try:
                return await self._story()
            finally:
                if self.daemon is not None:
                    await self.daemon.stop()
                if self.sim is not None:
                    await self.sim.stop()

    async def _story(self) -> int:
        await self.start_sim()
        await self.start_daemon()
        self.say(f"daemon ready at {self.api} (pid {self.daemon.pid if self.daemon else '?'})")
        await self.plan_batch()
        with Live(console=self.console, refresh_per_second=8, transient=False) as live:
            await self.submit_all()
            in_flight = await self.watch(
                live,
                "1/3  dispatching: journal first, then Proxmox",
                lambda ops: sum(o.state is OpState.RUNNING for o in ops.values()) >= 4,
                within=15,
            )
            running = sum(o.state is OpState.RUNNING for o in in_flight.values())
            assert self.daemon is not None
            self.daemon.kill()
            self.kills += 1
            await self.daemon.proc.wait() if self.daemon.proc else None
            self.say(f"SIGKILL sent to the daemon with {running} tasks running on Proxmox")
            await self.watch(
                live,
                "2/3  daemon dead: tasks keep running on Proxmox",
                lambda ops: False,
                within=TASK_SECONDS,
            )
            await self.start_daemon()
            status = await self.get_json(f"{self.api}/v1/status")
            rec = status.get("recover") or {}
            self.say(
                "restarted; Recover: "
                + ", ".join(f"{k} {v}" for k, v in rec.items() if v and k != "duration_seconds")
            )
            final = await self.watch(
                live,
                "3/3  recovered: finishing the batch",
                lambda ops: (
                    len(ops) == len(self.planned)
                    and all(str(o.state) in TERMINAL for o in ops.values())
                ),
                within=45,
            )
        return await self.verify(final, rec)

    async def get_json(self, url: str) -> dict[str, Any]:
        assert self.session is not None
        async with self.session.get(url) as resp:
            data: dict[str, Any] = await resp.json()
            return data

    async def verify(self, ops: dict[str, Op], recover: dict[str, Any]) -> int:
        assert self.session is not None
        first = self.planned[0]
        async with self.session.post(f"{self.api}/v1/ops", json=first.body) as resp:
            dedup = resp.status == 200 and (await resp.json()).get("deduplicated") is True
        requests = await self.control("GET", "/requests")
        items = requests.get("items", requests) if isinstance(requests, dict) else requests
        created = Counter(r["upid"] for r in items if r.get("upid"))
        journaled: set[str] = set()
        async with await Journal.open(self.db, create=False, migrate=False) as journal:
            for op in ops.values():
                journaled |= {h.upid for h in await journal.history(op.id) if h.upid}
        ours = {u for u in created if f":{TOKEN_USER}:" in u}
        lost = sorted(ours - journaled)
        one_shot_dupes = [
            op.id
            for op in ops.values()
            if op.action in ("reboot", "reset")
            and len(
                {
                    u
                    for u in journaled
                    if f":{op.guest.vmid}:" in u and ("reboot" in u or "reset" in u)
                }
            )
            > 1
        ]
        wrong = [
            (p.label, str(ops[str(p.body["idempotency_key"])].state), p.expect)
            for p in self.planned
            if str(p.body["idempotency_key"]) in ops
            and str(ops[str(p.body["idempotency_key"])].state) != p.expect
        ]
        rows = [
            (
                "every op reached a terminal state",
                f"{sum(str(o.state) in TERMINAL for o in ops.values())}/{len(self.planned)}",
                len(ops) == len(self.planned)
                and all(str(o.state) in TERMINAL for o in ops.values()),
            ),
            (
                "each op ended as expected",
                "all as planned"
                if not wrong
                else "; ".join(f"{label}: {got} (wanted {want})" for label, got, want in wrong),
                not wrong,
            ),
            (
                "daemon SIGKILLed mid-flight, then Recover",
                f"{self.kills} kill; recover examined {recover.get('examined', 0)}",
                self.kills == 1 and recover.get("examined", 0) > 0,
            ),
            (
                "every Proxmox task is in the journal (none lost)",
                f"{len(ours)} tasks, {len(lost)} unjournaled",
                not lost,
            ),
            (
                "one-shot ops dispatched at most once",
                f"{len(one_shot_dupes)} duplicated",
                not one_shot_dupes,
            ),
            (
                "resubmitting a key runs nothing",
                "200 deduplicated" if dedup else "not deduplicated",
                dedup,
            ),
        ]
        self.console.print(summary_table(rows))
        if self.keep:
            self.console.print(
                f"journal: {self.db}  ·  logs: {self.dir}/daemon.log, {self.dir}/sim.log"
            )
        else:
            self.console.print(
                "the journal and logs were in a temporary folder; keep them with --workdir DIR"
            )
        return 0 if all(ok for _, _, ok in rows) else 1


def _grown(disk: str) -> str:
    for part in disk.split(","):
        key, _, value = part.partition("=")
        if key == "size" and value.endswith("G"):
            with contextlib.suppress(ValueError):
                return f"{int(float(value[:-1])) + 8}G"
    return "40G"


async def run_demo(console: Console, workdir: Path | None = None) -> int:
    """Run the demo in ``workdir`` (a fresh temporary folder by default)."""
    if workdir is not None:
        await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
        return await Demo(console, workdir, keep=True).run()
    with tempfile.TemporaryDirectory(prefix="lifecycled-demo-") as tmp:
        return await Demo(console, Path(tmp)).run()
