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
    """Forever: once ``wake`` is set, ``send`` what came, at least ``hold()`` after the last
    round; ``send`` takes what it sends before its first ``await``."""
    loop, began = asyncio.get_running_loop(), 0.0
    while True:
        await wake.wait()
        if (wait := began + hold() - loop.time()) > 0:
            await asyncio.sleep(wait)  # busy: what comes meanwhile goes with it
        wake.clear()  # after the wait: what came during it goes now, not in an empty round
        began = loop.time()
        await send()
