"""Writes that must survive cancellation (STYLE principle 5)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


async def durable(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion even if the caller is cancelled meanwhile.

    The write runs as its own task behind ``asyncio.shield``; when the caller is cancelled,
    it still waits for the write to finish, then re-raises the cancellation.
    """
    task = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        # Finish the write, then let the cancellation continue.
        while not task.done():
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                continue
        if not task.cancelled():
            task.exception()  # mark it retrieved; the cancellation is what the caller sees
        raise
