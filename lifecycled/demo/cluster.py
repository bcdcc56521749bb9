"""``lifecycled demo-cluster``: three real sidecars (``lifecycled run`` subprocesses), one per
node of a three-node simulator, keeping one truth per guest in its Proxmox tags (SPEC §7).

The story: guests managed at their node's sidecar (another sidecar answers 421); a migration
by API and one out of band, each enforced by the target's sidecar; a node crash with its
sidecar SIGKILLed and its guest restored on another node; a guest deleted after leaving its
node, reported LOST once; a drain respected by the other sidecars; one idempotency key sent to
two sidecars, run once. It ends with the numbers: ops, requests, duplicates, LOST reports.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console

from lifecycled.demo.procs import Child, free_port, start_simulator, wait_ready

TOKEN = "root@pam!lifecycled=demo-not-a-secret"  # noqa: S105 - the demo simulator's own token
API_TOKEN = "demo-api-token-not-a-secret"  # noqa: S105 - the demo daemons' own bearer token
NODES = ("pve1", "pve2", "pve3")
#: vmid → (node, status) of the story's guests.
GUESTS = {
    101: ("pve1", "stopped"),
    102: ("pve2", "running"),
    103: ("pve2", "running"),
    104: ("pve2", "stopped"),
    105: ("pve3", "running"),
    106: ("pve1", "running"),
}


class CheckFailed(Exception):
    """A promise of the story did not hold."""


class ClusterDemo:
    """Runs the story once; :meth:`run` returns the process exit code."""

    def __init__(self, console: Console, workdir: Path) -> None:
        self.console = console
        self.dir = workdir
        self.sim: Child | None = None
        self.sim_url = ""
        self.daemons: dict[str, Child] = {}
        self.apis: dict[str, str] = {}
        self.session: aiohttp.ClientSession | None = None
        self.started = time.monotonic()
        self.numbers: dict[str, int] = {}

    def say(self, text: str) -> None:
        self.console.print(f"[dim]{time.monotonic() - self.started:5.1f}s[/dim]  {text}")

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            raise CheckFailed(what)
        self.console.print(f"        [green]✓[/green] {what}")

    # --- processes ---------------------------------------------------------------------------

    async def start(self) -> None:
        self.sim, self.sim_url = await start_simulator(
            self.dir, nodes=",".join(NODES), guests=0, token=TOKEN, task_seconds=0.5, extra=[]
        )
        for vmid, (node, status) in GUESTS.items():
            await self.control(
                "POST", "/guests", {"vmid": vmid, "kind": "qemu", "node": node, "status": status}
            )
        self.say(f"simulator: a 3-node cluster ({', '.join(NODES)}) with {len(GUESTS)} guests")
        for node in NODES:
            await self.start_daemon(node)
        self.say("three sidecars running, one per node, each with its own journal")

    async def start_daemon(self, node: str) -> None:
        token_file = self.dir / "pve.token"
        api_tokens = self.dir / "api.tokens"
        for path, text in ((token_file, TOKEN), (api_tokens, f"demo:admin:{API_TOKEN}")):
            if not path.exists():
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as fh:
                    fh.write(text + "\n")
        port = free_port()
        self.apis[node] = f"http://127.0.0.1:{port}"
        child = Child(
            f"sidecar {node}",
            [
                "run",
                "--db",
                str(self.dir / f"{node}.sqlite3"),
                "--listen",
                f"127.0.0.1:{port}",
                "--node",
                node,
                "--pve-url",
                self.sim_url,
                "--pve-token-file",
                str(token_file),
                "--api-token-file",
                str(api_tokens),
                "--poll-interval",
                "0.3s",
                "--retry-backoff",
                "0.5s",
                "--max-backoff",
                "1s",
                "--reconcile-interval",
                "1s",
                "--startup-jitter",
                "0",
                "--log-format",
                "json",
            ],
            self.dir / f"{node}.log",
        )
        self.daemons[node] = child
        await child.start()
        assert self.session is not None
        await wait_ready(self.session, f"{self.apis[node]}/readyz", child, within=30)

    async def stop(self) -> None:
        for child in self.daemons.values():
            await child.stop()
        if self.sim is not None:
            await self.sim.stop()

    # --- talking to the sidecars and the simulator ------------------------------------------

    async def api(
        self, node: str, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, Any]:
        assert self.session is not None
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        async with self.session.request(
            method, f"{self.apis[node]}{path}", json=body, headers=headers
        ) as resp:
            return resp.status, await resp.json()

    async def control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        assert self.session is not None
        async with self.session.request(method, f"{self.sim_url}/_sim{path}", json=body) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def pve_get(self, path: str) -> Any:
        assert self.session is not None
        headers = {"Authorization": f"PVEAPIToken={TOKEN}"}
        async with self.session.get(f"{self.sim_url}/api2/json{path}", headers=headers) as resp:
            resp.raise_for_status()
            return (await resp.json())["data"]

    async def guest(self, vmid: int) -> dict[str, Any] | None:
        state = await self.control("GET", "/state")
        return next((g for g in state["guests"] if g["vmid"] == vmid), None)

    async def until(
        self, what: str, probe: Callable[[], Awaitable[bool]], within: float = 20.0
    ) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if await probe():
                self.check(True, what)
                return
            await asyncio.sleep(0.2)
        raise CheckFailed(f"not within {within:g}s: {what}")

    async def op(self, node: str, body: dict[str, Any]) -> dict[str, Any]:
        """Submit and wait for the op's terminal state."""
        status, answer = await self.api(node, "POST", "/v1/ops", body)
        if status not in (200, 202):
            raise CheckFailed(f"{body['action']} {body['vmid']} at {node}: {status} {answer}")
        for _ in range(150):
            _, op = await self.api(node, "GET", f"/v1/ops/{answer['id']}")
            if op["state"] in ("succeeded", "failed", "dead_lettered", "cancelled"):
                return dict(op)
            await asyncio.sleep(0.2)
        raise CheckFailed(f"op {answer['id']} at {node} did not finish")

    # --- the story ---------------------------------------------------------------------------

    async def story(self) -> None:
        self.say("[bold]1. placement is Proxmox's[/bold]: each guest is managed at its node")
        for vmid, (node, _) in GUESTS.items():
            status, _ = await self.api(node, "POST", f"/v1/guests/{vmid}/manage")
            self.check(status == 200, f"guest {vmid} managed by the sidecar of {node}")
        status, body = await self.api("pve1", "POST", "/v1/ops", {"action": "stop", "vmid": 102})
        self.check(
            status == 421 and body["error"]["details"]["node"] == "pve2",
            "pve1's sidecar answers 421 wrong_node for 102 (on pve2); nothing written",
        )
        g = await self.guest(101)
        self.check(
            g is not None and "lcd.o.native" in g["config"].get("tags", ""),
            f"the record lives in the guest's tags: {g['config'].get('tags') if g else None}",
        )

        self.say("[bold]2. migration by API[/bold]: 101 (desired stopped) pve1 → pve2")
        op = await self.op("pve1", {"action": "migrate", "vmid": 101, "params": {"target": "pve2"}})
        self.check(op["state"] == "succeeded", "migrate succeeded")
        await self.control("POST", "/guests/101/status", {"status": "running"})
        self.say("   someone starts 101 behind lifecycled's back")

        async def stopped_101() -> bool:
            g = await self.guest(101)
            return g is not None and g["status"] == "stopped"

        await self.until(
            "pve2's sidecar took 101 over and shut it down (desired stopped)", stopped_101
        )

        self.say("[bold]3. out-of-band move[/bold]: 103 (desired running) stopped, moved to pve3")
        await self.control("POST", "/guests/103/status", {"status": "stopped"})
        await self.control("POST", "/guests/103/move", {"node": "pve3"})

        async def running_103() -> bool:
            g = await self.guest(103)
            return g is not None and g["node"] == "pve3" and g["status"] == "running"

        await self.until("pve3's sidecar started 103 on pve3", running_103)

        self.say("[bold]4. node crash[/bold]: pve3 dies with its sidecar (SIGKILL)")
        self.daemons["pve3"].kill()
        await self.control("POST", "/nodes/pve3/offline", {"offline": True, "crash": True})
        self.say("   the operator moves 105's config to pve1 (no HA: what Proxmox leaves to you)")
        await self.control("POST", "/guests/105/move", {"node": "pve1"})

        async def running_105() -> bool:
            g = await self.guest(105)
            return g is not None and g["node"] == "pve1" and g["status"] == "running"

        await self.until(
            "pve1's sidecar restored 105's desired state (running) on pve1", running_105
        )

        self.say("[bold]5. LOST once[/bold]: 104 migrates pve2 → pve1, then is deleted")
        op = await self.op("pve2", {"action": "migrate", "vmid": 104, "params": {"target": "pve1"}})
        self.check(op["state"] == "succeeded", "migrate succeeded")

        async def taken_104() -> bool:
            status, body = await self.api("pve1", "GET", "/v1/guests/104")
            return status == 200 and body["origin"] == "native" and body["node"] == "pve1"

        await self.until("pve1's sidecar holds 104", taken_104)
        await self.control("DELETE", "/guests/104")

        async def lost_104() -> bool:
            status, body = await self.api("pve1", "GET", "/v1/guests/104")
            return status == 200 and body["observed_state"] == "LOST"

        await self.until("104 marked LOST", lost_104)
        await asyncio.sleep(2.5)  # two more passes of every sidecar
        lost = 0
        for node in ("pve1", "pve2"):
            _, body = await self.api(node, "GET", "/v1/audit?decision=lost&vmid=104")
            lost += len(body["items"])
        self.numbers["LOST reports"] = lost
        self.check(lost == 1, f"reported once cluster-wide ({lost} LOST audit record)")

        self.say("[bold]6. drain[/bold]: pve2's sidecar drains pve2")
        status, _ = await self.api("pve2", "POST", "/v1/node/drain", {"reason": "maintenance"})
        self.check(status == 200, "pve2 draining")

        async def published() -> bool:
            config = await self.pve_get("/nodes/pve2/config")
            return "lifecycled-node-state: draining" in str(config.get("description", ""))

        await self.until("published in pve2's Proxmox description", published)
        status, body = await self.api(
            "pve1",
            "POST",
            "/v1/ops",
            {"action": "migrate", "vmid": 106, "params": {"target": "pve2", "online": True}},
        )
        self.check(
            status == 503 and body["error"]["code"] == "node_draining",
            "pve1's sidecar refuses a migrate into pve2 (503 node_draining)",
        )

        self.say("[bold]7. one key, one run[/bold]: reboot 102 with key order-7 at pve2")
        key = "order-7:reboot"
        op = await self.op("pve2", {"action": "reboot", "vmid": 102, "idempotency_key": key})
        self.check(op["state"] == "succeeded", "rebooted once")
        status, _ = await self.api("pve2", "POST", "/v1/node/undrain", {"reason": "done"})
        op = await self.op(
            "pve2",
            {
                "action": "migrate",
                "vmid": 102,
                "params": {"target": "pve1", "online": True, "with_local_disks": True},
            },
        )
        self.check(op["state"] == "succeeded", "102 migrated to pve1")
        status, body = await self.api(
            "pve1", "POST", "/v1/ops", {"action": "reboot", "vmid": 102, "idempotency_key": key}
        )
        self.check(
            status == 409 and body["error"]["code"] == "idempotency_key_used_elsewhere",
            "the same key resent to pve1's sidecar: 409, not run again",
        )
        requests = (await self.control("GET", "/requests"))["items"]
        reboots = [r for r in requests if r["method"] == "POST" and r["path"].endswith("/reboot")]
        self.numbers["duplicates"] = len(reboots) - 1
        self.check(len(reboots) == 1, "Proxmox saw one reboot of 102")
        ops = 0
        for node in ("pve1", "pve2"):
            _, body = await self.api(node, "GET", "/v1/ops?limit=500")
            ops += len(body["items"])
        self.numbers["ops"] = ops
        self.numbers["Proxmox requests"] = len(requests)

    async def run(self) -> int:
        async with aiohttp.ClientSession() as session:
            self.session = session
            try:
                await self.start()
                await self.story()
            except (CheckFailed, RuntimeError, aiohttp.ClientError) as exc:
                self.console.print(f"[red]demo-cluster failed:[/red] {exc}")
                self.console.print(f"logs are in {self.dir}")
                return 1
            finally:
                await self.stop()
        took = time.monotonic() - self.started
        line = ", ".join(f"{k}: {v}" for k, v in self.numbers.items())
        self.console.print(f"[bold green]all promises held[/bold green] in {took:.0f}s — {line}")
        return 0


async def run_cluster_demo(console: Console, workdir: Path | None = None) -> int:
    """The story in ``workdir`` (a temporary directory when ``None``)."""
    if workdir is not None:
        await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
        return await ClusterDemo(console, workdir).run()
    with tempfile.TemporaryDirectory(prefix="lifecycled-demo-cluster-") as tmp:
        return await ClusterDemo(console, Path(tmp)).run()


__all__ = ["ClusterDemo", "run_cluster_demo"]
