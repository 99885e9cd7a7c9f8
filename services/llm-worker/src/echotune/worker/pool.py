"""Admission of jobs: at most ``limit`` run at once, and no job is taken before a slot is free.

FastStream's ``max_workers`` reads ahead without bound (each read message waits in a task
for a slot), so a busy worker would hoard jobs that an idle one could run — and hoarded
jobs, never refreshed, get reclaimed and run twice. Here the handler itself waits for a
slot, which stops the subscriber from reading until one is free; the job then runs in its
own task and is acknowledged when it ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from faststream.redis.message import RedisStreamMessage

log = logging.getLogger(__name__)


class JobPool:
    def __init__(self, limit: int) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    async def admit(self, job: Coroutine[Any, Any, None], message: RedisStreamMessage) -> None:
        """Wait for a free slot, then run ``job`` in the background."""
        await self._slots.acquire()
        task = asyncio.create_task(self._run(job, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, job: Coroutine[Any, Any, None], message: RedisStreamMessage) -> None:
        try:
            await job
        except asyncio.CancelledError:
            await asyncio.shield(message.ack())  # its stream already ended with an error
            raise
        except Exception:
            log.exception("job failed unexpectedly; left pending for another worker")
        else:
            await message.ack()
        finally:
            self._slots.release()

    async def drain(self, timeout_s: float) -> None:
        """Let running jobs finish for up to ``timeout_s``, then cancel what is left."""
        if not self._tasks:
            return
        _, late = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in late:
            task.cancel()
        if late:
            log.warning("cancelling %d jobs still running after the drain deadline", len(late))
            await asyncio.gather(*late, return_exceptions=True)
