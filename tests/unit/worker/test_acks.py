"""Jobs' entries acknowledged: at once when idle, together when busy."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio import Redis

from echotune.common import job_queue
from echotune.common.keys import JOBS_GROUP, Keys
from echotune.worker import acks
from echotune.worker.acks import JobAcks
from tests.support.waiting import running, until


class Jobs:
    def __init__(self, redis: Redis) -> None:
        self.redis, self.keys = redis, Keys(f"t{uuid.uuid4().hex[:8]}")
        self.hold_s = 0.0
        self.acks = JobAcks(redis, self.keys, lambda: self.hold_s)

    async def delivered(self, n: int) -> list[str]:
        """``n`` new entries, read by a consumer (pending until acknowledged)."""
        await job_queue.ensure_group(self.redis, self.keys)
        for _ in range(n):
            await self.redis.xadd(self.keys.jobs, {"job": "{}"})
        [[_, entries]] = await self.redis.xreadgroup(JOBS_GROUP, "w1", {self.keys.jobs: ">"})
        return [entry_id for entry_id, _ in entries]

    async def pending(self) -> int:
        return int((await self.redis.xpending(self.keys.jobs, JOBS_GROUP))["pending"])

    async def none_pending(self) -> bool:
        return not await self.pending()


@pytest.fixture
def jobs(redis: Redis) -> Jobs:
    return Jobs(redis)


async def test_idle_an_entry_is_acknowledged_at_once(jobs: Jobs) -> None:
    [entry] = await jobs.delivered(1)
    await jobs.acks.ack(entry)
    assert await jobs.pending() == 0


async def test_busy_entries_wait_and_go_in_one_acknowledgement(jobs: Jobs) -> None:
    jobs.hold_s = 60
    for entry in await jobs.delivered(3):
        await jobs.acks.ack(entry)
    assert await jobs.pending() == 3, "acknowledged while busy"
    await jobs.acks.flush()
    assert await jobs.pending() == 0


async def test_waiting_entries_are_acknowledged_within_the_hold(jobs: Jobs) -> None:
    jobs.hold_s = 0.05
    entries = await jobs.delivered(2)
    async with running(jobs.acks.run()):
        for entry in entries:
            await jobs.acks.ack(entry)
        await until(jobs.none_pending, "the waiting entries acknowledged")


async def test_a_flush_cancelled_mid_send_leaves_its_entries_to_the_last_one(
    jobs: Jobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs.hold_s = 60
    entries, sending = await jobs.delivered(2), asyncio.Event()

    async def stuck(*_: object) -> int:
        sending.set()
        await asyncio.Event().wait()
        return 0

    for entry in entries:
        await jobs.acks.ack(entry)
    monkeypatch.setattr(acks.job_queue, "ack", stuck)
    flush = asyncio.create_task(jobs.acks.flush())
    await asyncio.wait_for(sending.wait(), 5)
    flush.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flush
    monkeypatch.undo()
    await jobs.acks.flush()
    assert await jobs.pending() == 0


async def test_an_acknowledgement_redis_refuses_is_logged(
    jobs: Jobs, caplog: pytest.LogCaptureFixture
) -> None:
    await jobs.redis.set(jobs.keys.jobs, "not a stream")
    await jobs.acks.ack("1-1")
    assert "could not acknowledge 1 jobs" in caplog.text
