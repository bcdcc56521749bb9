"""Where the daemon's CPU goes: py-spy on the daemon during HTTP submissions and during the
full lifecycle against the simulator (the two paths of issue 15's CPU figures).

``bench/.venv/bin/python -m bench.profile`` (``make bench-profile``) runs both scenarios once
with ``py-spy record`` attached to the daemon's pid (all threads, idle ones left out) and
writes, per scenario, the raw stacks to ``bench/.work/profile/`` and a summary —
inclusive and self share of samples per function, and self share per component — to
``bench/results/profile-<commit>-<scenario>.txt``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import attrs

#: ``function (path)``: a frame as ``py-spy record --format raw --nolineno --full-filenames``
#: writes it.
_FRAME = re.compile(r"^(?P<func>.*) \((?P<path>[^()]*)\)$")


@contextlib.asynccontextmanager
async def spy(pid: int, out: Path, rate: int = 100) -> AsyncIterator[None]:
    """Record ``pid`` with py-spy (raw collapsed stacks into ``out``) while the body runs."""
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
        "--nolineno",
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
    samples: int
    functions: tuple[Share, ...]
    components: tuple[tuple[str, float], ...]


def _frames(stack: str) -> list[tuple[str, str]]:
    found = []
    for raw in stack.split(";"):
        m = _FRAME.match(raw)
        if m is None:
            found.append((raw, "?"))
        else:
            found.append((m["func"], where(m["path"])))
    return found


def summarize(lines: Iterable[str]) -> Profile:
    """Shares of samples from py-spy's raw output (``frame;frame;…;leaf count`` per line)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    comp: Counter[str] = Counter()
    total = 0
    for line in lines:
        line = line.strip()
        if not line:
            continue
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = _frames(stack)
        total += count
        for name in {f"{module}:{func}" for func, module in frames}:
            inclusive[name] += count
        func, module = frames[-1]
        own[f"{module}:{func}"] += count
        comp[component(module)] += count
    if total == 0:
        return Profile(samples=0, functions=(), components=())
    shares = tuple(
        Share(name=name, inclusive=100 * n / total, self_=100 * own[name] / total)
        for name, n in inclusive.most_common()
    )
    return Profile(
        samples=total,
        functions=shares,
        components=tuple((name, 100 * n / total) for name, n in comp.most_common()),
    )


def render(profile: Profile, title: str, top: int = 40) -> str:
    """The summary: components by self time; lifecycled functions and the top self times."""
    out = [f"# {title}: {profile.samples} samples", "", "## self time by component", ""]
    out += [f"{pct:6.1f} %  {name}" for name, pct in profile.components]
    out += ["", "## lifecycled functions, inclusive (self)", ""]
    ours = [s for s in profile.functions if s.name.startswith("lifecycled.")]
    out += [f"{s.inclusive:6.1f} % ({s.self_:5.1f} %)  {s.name}" for s in ours[:top]]
    out += ["", "## top self time, any module", ""]
    by_self = sorted(profile.functions, key=lambda s: s.self_, reverse=True)
    out += [f"{s.self_:6.1f} %  {s.name}" for s in by_self[:top] if s.self_ > 0]
    return "\n".join(out) + "\n"


async def _run(label: str, work: Path, results: Path) -> None:
    from bench import daemon_bench

    raw = work / "profile"
    http_raw, life_raw = raw / f"{label}-http.txt", raw / f"{label}-lifecycle.txt"
    print("profiling HTTP submissions …", file=sys.stderr, flush=True)
    await daemon_bench.http_submissions(work / "p-http", runs=1, n=4_000, profile=http_raw)
    print("profiling the full lifecycle …", file=sys.stderr, flush=True)
    await daemon_bench.lifecycle(work / "p-life", runs=1, n=1_500, profile=life_raw)
    results.mkdir(parents=True, exist_ok=True)
    for scenario, path in (("http", http_raw), ("lifecycle", life_raw)):
        summary = summarize(path.read_text().splitlines())
        text = render(summary, f"daemon profile, {scenario} ({label})")
        (results / f"profile-{label}-{scenario}.txt").write_text(text)
        print(text)


def main() -> int:
    from bench.common import ROOT, measured

    label = measured()["commit"].split("+", 1)[0]
    work = ROOT / "bench" / ".work"
    asyncio.run(_run(label, work, ROOT / "bench" / "results"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
