"""Admission of jobs: a run waits for a free slot."""

from __future__ import annotations

import asyncio

from echotune.worker.inflight import InFlight
from echotune.worker.pool import JobPool


async def never(entry_id: str) -> None:
    raise AssertionError(f"{entry_id} acknowledged: these runs do not ask to be")


async def test_a_job_waits_for_a_free_slot() -> None:
    pool, stop, released = JobPool(1, never), asyncio.Event(), asyncio.Event()

    async def run() -> bool:
        await stop.wait()
        return False

    await pool.admit(run, InFlight("r1", "1-1"), released.set)
    second = asyncio.create_task(pool.admit(run, InFlight("r2", "2-1"), lambda: None))
    for _ in range(20):  # enough turns of the loop for an admission that does not wait
        await asyncio.sleep(0)
    assert not second.done()
    assert len(pool) == 1
    stop.set()
    await asyncio.wait_for(second, 5.0)
    await released.wait()
    await pool.drain(5.0)
