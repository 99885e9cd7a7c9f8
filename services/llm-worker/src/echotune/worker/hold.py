"""Busy, a process spaces the steps it batches (append rounds, reads, records, acks)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Hold:
    """Least time between two steps of a busy process: none below ``from_writers`` answers
    streaming in it, rising to ``most_s`` at twice as many (idle, a token goes as it comes)."""

    most_s: float = 0.0
    from_writers: int = 100

    def seconds(self, writers: int) -> float:
        over = (writers - self.from_writers) / self.from_writers
        return self.most_s * min(max(over, 0.0), 1.0)


async def held_rounds(
    wake: asyncio.Event, hold: Callable[[], float], send: Callable[[], Awaitable[None]]
) -> None:
    """Forever: once ``wake`` is set, ``send`` what came, at most ``hold()`` after the last."""
    loop, began = asyncio.get_running_loop(), 0.0
    while True:
        await wake.wait()
        wake.clear()
        if (wait := began + hold() - loop.time()) > 0:
            await asyncio.sleep(wait)  # busy: what comes meanwhile goes with it
        began = loop.time()
        await send()
