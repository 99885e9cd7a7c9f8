"""Waiting in tests for a state reached by background work (polled, bounded)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any


async def until(reached: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 5) -> None:
    """Return once ``reached()`` is true; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not await reached():
        assert time.monotonic() < deadline, f"{what} within {timeout_s:g} s"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(work: Coroutine[Any, Any, None]) -> AsyncIterator[asyncio.Task[None]]:
    """``work`` in a task for the block, cancelled after it."""
    task = asyncio.create_task(work)
    try:
        yield task
    finally:
        task.cancel()
