"""The event loop a long-running process runs on: one place chooses it.

``lifecycled run`` runs on uvloop (libuv's loop, transports and timers in C) unless the
``event_loop`` setting says ``asyncio``; ``lifecycled sim`` always runs on uvloop. Measured on
this project's benchmarks (docs/BENCHMARKS.md): about 10 % less daemon CPU per op and per HTTP
submission than asyncio's own loop, with the same code — every API the daemon uses (signal
handlers, threads handing results back with ``call_soon_threadsafe``, TLS, timeouts) behaves
the same on both, and the test suite runs the daemon's subprocesses on uvloop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import uvloop

from lifecycled.config import EventLoop

_T = TypeVar("_T")


def loop_factory(choice: EventLoop) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory of ``choice``'s loops (None: asyncio's default)."""
    return uvloop.new_event_loop if choice is EventLoop.UVLOOP else None


def run(main: Coroutine[Any, Any, _T], choice: EventLoop = EventLoop.UVLOOP) -> _T:
    """``asyncio.run(main)`` on the chosen loop: the same set-up and clean-up (cancel what is
    left, shut the default executor down, close the loop)."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main)


def running_loop_name() -> str:
    """What the running loop is, as the start-up log says it (``uvloop`` or ``asyncio``)."""
    loop = asyncio.get_running_loop()
    return EventLoop.UVLOOP if isinstance(loop, uvloop.Loop) else EventLoop.ASYNCIO
