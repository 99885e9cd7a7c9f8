"""Admission of jobs: at most ``limit`` run at once, and no job is taken before a slot is free.

FastStream's ``max_workers`` reads ahead without bound (each read message waits in a task
for a slot), so a busy worker would hoard jobs that an idle one could run. Here the handler
itself waits for a slot, which stops the subscriber from reading until one is free; the one
entry read meanwhile is held (kept fresh, see ``inflight.py``) while it waits. The job then
runs in its own task and is acknowledged when it ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from echotune.worker.inflight import InFlight

log = logging.getLogger(__name__)

END_GRACE_S = 5.0
"""On shutdown, how long cancelled jobs may take to write the end of their answers."""

Run = Callable[[], Awaitable[bool]]
"""A job's run; ``True`` when its entry may be acknowledged."""


class JobPool:
    def __init__(self, limit: int, ack: Callable[[str], Awaitable[None]]) -> None:
        """``ack``: acknowledges a job's entry (``acks.py``)."""
        self._slots = asyncio.Semaphore(limit)
        self._ack = ack
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    async def admit(self, run: Run, held: InFlight, release: Callable[[], None]) -> None:
        """Wait for a free slot, then run the job in the background; ``release`` when it ends."""
        try:
            await self._slots.acquire()
        except BaseException:
            release()
            raise
        task = asyncio.create_task(self._run(run, held, release))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, run: Run, held: InFlight, release: Callable[[], None]) -> None:
        try:
            acknowledge = await run()
        except asyncio.CancelledError:
            if held.ended:
                await asyncio.shield(self._ack(held.entry_id))
            raise
        except Exception:
            log.exception("job failed unexpectedly; left pending for another worker")
        else:
            if acknowledge:
                await self._ack(held.entry_id)
        finally:
            self._slots.release()
            release()

    async def drain(self, timeout_s: float, end_grace_s: float = END_GRACE_S) -> None:
        """Let running jobs finish for up to ``timeout_s``, then cancel what is left: each ends
        its answer, given ``end_grace_s`` to write it (Redis may be unreachable: a job still
        ending then is left behind, its entry pending for a reclaim)."""
        if not self._tasks:
            return
        _, late = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in late:
            task.cancel()
        if not late:
            return
        log.warning("cancelling %d jobs still running after the drain deadline", len(late))
        _, stuck = await asyncio.wait(late, timeout=end_grace_s)
        if stuck:
            log.error("%d jobs could not end their answers; left pending for a reclaim", len(stuck))
            for task in stuck:
                task.cancel()
