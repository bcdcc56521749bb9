"""lifecycled.eventloop: one place picks the loop a long-running process runs on."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from lifecycled.config import EventLoop, Settings
from lifecycled.eventloop import run, running_loop_name


async def _where() -> tuple[type[asyncio.AbstractEventLoop], str]:
    return type(asyncio.get_running_loop()), running_loop_name()


def test_uvloop_is_the_default_setting() -> None:
    """A daemon with no event_loop setting runs on uvloop."""
    assert Settings().event_loop is EventLoop.UVLOOP


@pytest.mark.parametrize("choice", list(EventLoop))
def test_run_runs_on_the_chosen_loop_and_closes_it(choice: EventLoop) -> None:
    """run() gives the coroutine the chosen kind of loop and says so; the loop is closed after."""
    seen: list[asyncio.AbstractEventLoop] = []

    async def main() -> tuple[type[asyncio.AbstractEventLoop], str]:
        seen.append(asyncio.get_running_loop())
        return await _where()

    kind, name = run(main(), choice)
    assert name == choice
    assert issubclass(kind, uvloop.Loop) is (choice is EventLoop.UVLOOP)
    assert seen[0].is_closed()


def test_a_setting_names_an_event_loop_or_is_refused() -> None:
    """Only the two loops are accepted (a typo is refused, not silently asyncio)."""
    assert Settings(event_loop="asyncio").event_loop is EventLoop.ASYNCIO  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="trio"):
        Settings(event_loop="trio")  # type: ignore[arg-type]
