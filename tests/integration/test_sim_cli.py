"""``lifecycled sim`` as a subprocess (SPEC §5 CLI, §6)."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from lifecycled.sim.rawclient import RawClient

TOKEN = "root@pam!cli=cli-secret"


async def _spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lifecycled",
        "sim",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_sim_command_serves_and_stops(tmp_path: Path) -> None:
    """`lifecycled sim` prints one listening line, writes --ready-file, serves, exits 0 on SIGTERM."""
    ready = tmp_path / "sim.url"
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    proc = await _spawn(
        "--listen",
        "127.0.0.1:0",
        "--nodes",
        "pve1,pve2",
        "--guests",
        "6",
        "--token-file",
        str(token_file),
        "--task-seconds",
        "0",
        "--auth-delay",
        "0",
        "--ready-file",
        str(ready),
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line.startswith("lifecycled sim listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1].strip()
        assert not url.endswith(":0")
        assert ready.read_text().strip() == url
        async with RawClient(url, token=TOKEN) as api:
            resources = await api.get("/cluster/resources", {"type": "vm"})
            assert resources.status == 200 and len(resources.data) == 6
            upid = (await api.post("/nodes/pve1/qemu/101/status/start")).data
            assert upid.endswith(":qmstart:101:root@pam!cli:")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        out, err = await proc.communicate()
        assert out == b""  # exactly one line was printed
        assert b"cli-secret" not in err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_sim_command_bad_option(tmp_path: Path) -> None:
    """Bad options → one-line error on stderr and exit code 2."""
    proc = await _spawn("--listen", "nowhere", "--auth-delay", "0")
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert out == b""
    assert err.decode().strip().splitlines() == [
        "lifecycled: error: --listen must be HOST:PORT, got 'nowhere'"
    ]
    proc = await _spawn("--token", "not-a-token")
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert len(err.decode().strip().splitlines()) == 1


async def test_sim_command_lags_cluster_resources_by_default(tmp_path: Path) -> None:
    """Like a real node, `lifecycled sim` shows a start in /cluster/resources only at
    pvestatd's next sample (10 s by default), while status/current is live (§13.10)."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    proc = await _spawn(
        "--listen", "127.0.0.1:0", "--guests", "6", "--token-file", str(token_file),
        "--task-seconds", "0", "--auth-delay", "0",
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        url = line.rsplit(" ", 1)[1].strip()
        async with RawClient(url, token=TOKEN) as api:
            upid = (await api.post("/nodes/pve1/qemu/101/status/start")).data
            async with asyncio.timeout(5):
                while (await api.get(f"/nodes/pve1/tasks/{upid}/status")).data["status"] != (
                    "stopped"
                ):
                    await asyncio.sleep(0.02)
            live = (await api.get("/nodes/pve1/qemu/101/status/current")).data
            listed = (await api.get("/nodes/pve1/qemu")).data
            resources = (await api.get("/cluster/resources", {"type": "vm"})).data
        assert live["status"] == "running"
        assert next(g for g in listed if g["vmid"] == 101)["status"] == "running"
        assert next(r for r in resources if r["vmid"] == 101)["status"] == "stopped"
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 15)
    bad = await _spawn("--resources-lag", "-1")
    _, err = await asyncio.wait_for(bad.communicate(), 30)
    assert bad.returncode == 2 and "--resources-lag" in err.decode()


def test_other_commands_do_not_load_the_simulator() -> None:
    """Loading the CLI's commands (what `lifecycled run` does first) leaves the simulator unimported."""
    import subprocess

    probe = (
        "import sys, lifecycled.cli as cli; cli._load_commands();"
        " print(sorted(m for m in sys.modules if m.startswith('lifecycled.sim')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
