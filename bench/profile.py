"""Where the daemon's CPU goes: py-spy on the daemon during HTTP submissions and during the
full lifecycle against the simulator (the two paths of issue 15's CPU figures).

``bench/.venv/bin/python -m bench.profile`` (``make bench-profile``) runs both scenarios once
with ``py-spy record --gil`` attached to the daemon's pid (the thread holding the GIL) and
writes, per scenario, the raw stacks to ``bench/.work/profile/`` and a summary —
inclusive and self share of the busy samples per function, and self share per component —
to ``bench/results/profile-<commit>-<scenario>.txt``.

py-spy cannot always tell that a thread blocked in C is idle (the journal's and aiosqlite's
threads wait in ``SimpleQueue.get``, the loop in ``epoll``): a sample whose innermost Python
frame is on a line that blocks (``.get(``, ``.select(``, ``.poll(``, ``.wait(``,
``.acquire(``) is idle and left out. The innermost frame's line tells a wait from real work
in C (an aiosqlite worker's ``tx.get()`` vs its ``function()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import linecache
import re
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import attrs

#: ``function (path:line)``: a frame as ``py-spy record --format raw --full-filenames``
#: writes it.
_FRAME = re.compile(r"^(?P<func>.*) \((?P<path>[^()]*?)(?::(?P<line>\d+))?\)$")
#: A source line that blocks the thread (see the module docstring).
_BLOCKING = re.compile(r"\.(get|select|poll|wait|acquire)\(")


@contextlib.asynccontextmanager
async def spy(pid: int, out: Path, rate: int = 200) -> AsyncIterator[None]:
    """Record ``pid`` with py-spy (raw collapsed stacks into ``out``) while the body runs:
    the thread holding the GIL only, so a sample is Python (or C holding the GIL) at work —
    not a thread waiting for the GIL, and not SQLite, which runs without it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    py_spy = Path(sys.executable).parent / "py-spy"
    proc = await asyncio.create_subprocess_exec(
        str(py_spy),
        "record",
        "--pid",
        str(pid),
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--gil",
        "--full-filenames",
        "--output",
        str(out),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await asyncio.sleep(1.0)  # py-spy attaches
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        await asyncio.wait_for(proc.wait(), 60)


def where(path: str) -> str:
    """A frame's file as a dotted module (``lifecycled.engine.submit``, ``aiohttp.web_protocol``)."""
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "/lib/python3":
                path = path.split("/", 1)[1] if "/" in path else path
            break
    else:
        if "/lifecycled/" in path:
            path = "lifecycled/" + path.rsplit("/lifecycled/", 1)[1]
    return path.removesuffix(".py").replace("/", ".")


def component(module: str) -> str:
    """The bucket a module's self time is counted in."""
    parts = module.split(".")
    if parts[0] == "lifecycled" and len(parts) > 1:
        return f"lifecycled.{parts[1]}"
    if parts[0] in ("json", "sqlite3", "asyncio", "logging", "concurrent", "threading"):
        return parts[0]
    if parts[0] in ("aiohttp", "aiosqlite", "yarl", "multidict", "attrs", "attr"):
        return parts[0]
    return "other"


@attrs.frozen(kw_only=True)
class Share:
    name: str
    inclusive: float
    self_: float


@attrs.frozen(kw_only=True)
class Profile:
    #: Busy samples (the shares are of these) and idle ones left out.
    samples: int
    idle: int
    functions: tuple[Share, ...]
    components: tuple[tuple[str, float], ...]


def _frames(stack: str) -> list[tuple[str, str, str, int]]:
    """(function, module, path, line) per frame, outermost first."""
    found = []
    for raw in stack.split(";"):
        m = _FRAME.match(raw)
        if m is None:
            found.append((raw, "?", "", 0))
        else:
            found.append((m["func"], where(m["path"]), m["path"], int(m["line"] or 0)))
    return found


def blocking(path: str, line: int) -> bool:
    """Whether a frame's current line is a blocking wait (``queue.get()``, ``select()``)."""
    return line > 0 and _BLOCKING.search(linecache.getline(path, line)) is not None


def summarize(lines: Iterable[str]) -> Profile:
    """Shares of the busy samples from py-spy's raw output (``frame;…;leaf count`` per line)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    comp: Counter[str] = Counter()
    total = idle = 0
    for line in lines:
        line = line.strip()
        if not line:
            continue
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = _frames(stack)
        if blocking(frames[-1][2], frames[-1][3]):
            idle += count
            continue
        total += count
        for name in {f"{module}:{func}" for func, module, _, _ in frames}:
            inclusive[name] += count
        func, module, _, _ = frames[-1]
        own[f"{module}:{func}"] += count
        comp[component(module)] += count
    if total == 0:
        return Profile(samples=0, idle=idle, functions=(), components=())
    shares = tuple(
        Share(name=name, inclusive=100 * n / total, self_=100 * own[name] / total)
        for name, n in inclusive.most_common()
    )
    return Profile(
        samples=total,
        idle=idle,
        functions=shares,
        components=tuple((name, 100 * n / total) for name, n in comp.most_common()),
    )


def render(profile: Profile, title: str, top: int = 40) -> str:
    """The summary: components by self time; lifecycled functions and the top self times."""
    out = [
        f"# {title}: {profile.samples} busy samples ({profile.idle} idle left out)",
        "",
        "## self time by component",
        "",
    ]
    out += [f"{pct:6.1f} %  {name}" for name, pct in profile.components]
    out += ["", "## lifecycled functions, inclusive (self)", ""]
    ours = [s for s in profile.functions if s.name.startswith("lifecycled.")]
    out += [f"{s.inclusive:6.1f} % ({s.self_:5.1f} %)  {s.name}" for s in ours[:top]]
    out += ["", "## top self time, any module", ""]
    by_self = sorted(profile.functions, key=lambda s: s.self_, reverse=True)
    out += [f"{s.self_:6.1f} %  {s.name}" for s in by_self[:top] if s.self_ > 0]
    return "\n".join(out) + "\n"


async def _run(label: str, work: Path, results: Path, *, summarize_only: bool) -> None:
    from bench import daemon_bench

    raw = work / "profile"
    http_raw, life_raw = raw / f"{label}-http.txt", raw / f"{label}-lifecycle.txt"
    if not summarize_only:
        print("profiling HTTP submissions …", file=sys.stderr, flush=True)
        await daemon_bench.http_submissions(work / "p-http", runs=1, n=6_000, profile=http_raw)
        print("profiling the full lifecycle …", file=sys.stderr, flush=True)
        await daemon_bench.lifecycle(work / "p-life", runs=1, n=1_500, profile=life_raw)
    results.mkdir(parents=True, exist_ok=True)
    for scenario, path in (("http", http_raw), ("lifecycle", life_raw)):
        summary = summarize(path.read_text().splitlines())
        text = render(summary, f"daemon profile, {scenario} ({label})")
        (results / f"profile-{label}-{scenario}.txt").write_text(text)
        print(text)


def main(argv: list[str]) -> int:
    """``--summarize``: summarize the raw stacks of an earlier run again (no new run)."""
    import os

    from bench.common import ROOT, measured

    label = measured()["commit"].split("+", 1)[0]
    work = Path(os.environ.get("BENCH_WORK", ROOT / "bench" / ".work"))
    summarize_only = "--summarize" in argv
    asyncio.run(_run(label, work, ROOT / "bench" / "results", summarize_only=summarize_only))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
