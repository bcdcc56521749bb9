"""The journal's filesystem runs full: submissions get 503 with Retry-After, the daemon stays
up, nothing is corrupted, and writing resumes once there is space again.

Two ways to run out: the journal on a small tmpfs mounted for the test and filled up (needs
root; skipped where mounting is not allowed), and the daemon's file-size limit lowered from
outside (``prlimit``: every write past the first byte of a file fails with EFBIG, which
SQLite reports as an I/O error) — which works unprivileged, on any Linux CI runner. Both are
"the journal cannot write right now" for lifecycled.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import resource
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from crash_support import Daemon, Sim, healthy, http_json, wait_for

from lifecycled.journal import Journal

pytestmark = pytest.mark.timeout(120)


def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    req = urllib.request.Request(  # noqa: S310 - loopback test URL
        url, data=json.dumps(body).encode(), method="POST"
    )
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback test URL
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read() or b"null")


@contextlib.contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[bool]:
    path.mkdir()
    mounted = (
        os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def _fill(folder: Path) -> Path:
    """Write a file until the filesystem is full; the file (delete it to free the space)."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_CREAT | os.O_WRONLY, 0o600)
    chunk = b"\0" * 65536
    try:
        while _write(fd, chunk):
            pass
    finally:
        os.close(fd)
    return filler


def _write(fd: int, chunk: bytes) -> bool:
    """Write ``chunk``; False once the filesystem is full."""
    try:
        os.write(fd, chunk)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        return False
    return True


def _limit_writes(pid: int, limit: int) -> None:
    _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, hard))


@pytest.mark.parametrize("mechanism", ["tmpfs", "fsize"])
def test_a_full_journal_filesystem_answers_503_and_recovers(tmp_path: Path, mechanism: str) -> None:
    """Out of space: every submission is a 503 with Retry-After (nothing half-written), the
    daemon keeps serving; with space back, submissions are accepted again; the file is sound."""
    with _tmpfs(tmp_path / "fs", "2m") as can_mount:
        mounted = mechanism == "tmpfs"
        if mounted and not can_mount:
            pytest.skip("cannot mount a tmpfs here (not root); the fsize variant covers it")
        sim = Sim(tmp_path, guests=8, task_seconds=0.2)
        db = (tmp_path / "fs" if mounted else tmp_path) / "journal.sqlite3"
        daemon = Daemon(tmp_path, sim, db)
        try:
            daemon.start()
            assert daemon.proc is not None
            guests = [g for g in sim.api("/cluster/resources?type=vm") if not g.get("template")]
            for g in guests:
                http_json(f"{daemon.url}/v1/guests/{g['vmid']}/manage", "POST", {})
            vmid, kind, node = guests[0]["vmid"], guests[0]["type"], guests[0]["node"]

            def body(key: str) -> dict[str, Any]:
                return {"action": "start", "vmid": vmid, "kind": kind, "node": node,
                        "idempotency_key": key}  # fmt: skip

            status, _, _ = _post(f"{daemon.url}/v1/ops", body("before"))
            assert status == 202
            restore: Callable[[], None]
            if mounted:
                filler = _fill(tmp_path / "fs")
                restore = filler.unlink
            else:
                _limit_writes(daemon.proc.pid, 1)
                pid = daemon.proc.pid
                restore = lambda: _limit_writes(pid, resource.RLIM_INFINITY)  # noqa: E731

            answers = [_post(f"{daemon.url}/v1/ops", body(f"full-{i}")) for i in range(40)]
            refused = [a for a in answers if a[0] == 503]
            accepted = [a for a in answers if a[0] == 202]
            # A commit may still fit in space SQLite already holds; then the disk is full.
            assert len(refused) >= 30, [a[0] for a in answers]
            assert {a[0] for a in answers} <= {202, 503}
            for _, headers, payload in refused:
                assert int(headers["Retry-After"]) > 0
                assert payload["error"]["code"] == "journal_unavailable"
            time.sleep(1.0)
            assert daemon.proc.poll() is None, "the daemon died on a full disk"
            assert healthy(f"{daemon.url}/healthz")

            restore()
            wait_for(
                lambda: _post(f"{daemon.url}/v1/ops", body("after"))[0] in (200, 202),
                20,
                "submissions accepted again",
                daemon.proc,
                daemon.log,
            )
            assert daemon.proc.poll() is None
            assert daemon.stop() == 0
        finally:
            if daemon.proc is not None and daemon.proc.poll() is None:
                daemon.stop()
            sim.stop()

        async def read() -> tuple[list[str], set[str]]:
            async with await Journal.open(db, create=False) as journal:
                keys = {op.idempotency_key for op in (await journal.list_ops(limit=500)).items}
                return await journal.integrity_check(), keys

        check, keys = asyncio.run(read())
    assert check == ["ok"]
    refused_keys = {f"full-{i}" for i, a in enumerate(answers) if a[0] == 503}
    accepted_keys = {f"full-{i}" for i, a in enumerate(answers) if a[0] == 202}
    assert accepted_keys | {"before", "after"} <= keys
    assert not refused_keys & keys, "a refused submission was written after all"
    assert len(accepted) == len(accepted_keys)
