"""bench/profile.py: shares of py-spy samples, idle waits left out."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.profile import summarize, where


def test_module_names_from_paths() -> None:
    """Frames are named by module, whichever checkout or venv they come from."""
    assert where("/work/wt/x/lifecycled/engine/submit.py") == "lifecycled.engine.submit"
    assert where("/v/lib/python3.11/site-packages/aiohttp/web.py") == "aiohttp.web"
    assert where("/root/.pyenv/versions/3.11.7/lib/python3.11/json/decoder.py") == "json.decoder"


def test_shares_are_inclusive_and_self_and_idle_waits_are_left_out(tmp_path: Path) -> None:
    """A function counts once per sample it is on; a sample blocked in ``.get(`` is idle."""
    src = tmp_path / "lifecycled" / "engine" / "demo.py"
    src.parent.mkdir(parents=True)
    src.write_text("def outer():\n    inner()\n    inner()\ndef waiter():\n    q.get()\n")
    outer, inner, wait = (
        f"{name} ({src}:{line})" for name, line in (("outer", 2), ("inner", 3), ("waiter", 5))
    )
    profile = summarize(
        [f"{outer};{inner} 3", f"{outer} 1", f"{outer};{outer};{inner} 1", f"{wait} 5", ""]
    )
    assert (profile.samples, profile.idle) == (5, 5)
    shares = {s.name: (s.inclusive, s.self_) for s in profile.functions}
    assert shares["lifecycled.engine.demo:outer"] == pytest.approx((100.0, 20.0))
    assert shares["lifecycled.engine.demo:inner"] == pytest.approx((80.0, 80.0))
    assert "lifecycled.engine.demo:waiter" not in shares
    assert profile.components == (("lifecycled.engine", 100.0),)
