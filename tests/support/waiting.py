"""Waiting in tests for a state reached by background work (polled, bounded)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def until(reached: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 5) -> None:
    """Return once ``reached()`` is true; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not await reached():
        assert time.monotonic() < deadline, f"{what} within {timeout_s:g} s"
        await asyncio.sleep(0.01)
