"""A worker shut down mid-answer ends the answer and acknowledges its entry, unless the job was
taken over meanwhile: the entry is then the new owner's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager

import pytest
from faststream.redis import RedisBroker
from redis.asyncio import Redis

from echotune.common import job_queue
from echotune.common.keys import JOBS_GROUP
from echotune.common.stop_reasons import CANCELLED
from echotune.worker.resources import Worker
from tests.support.flaky_proxy import reply_dropping_proxy
from tests.support.streams import wait_for_final
from tests.support.workers import demo, worker_settings
from tests.support.workers import started_worker as started
from tests.unit.worker.test_handlers import long_job, opened

SLOW = demo(4000)


def started_worker(redis_url: str) -> AbstractAsyncContextManager[tuple[Worker, RedisBroker]]:
    """Worker A, streaming slowly; its own refresh does not run during a test."""
    return started(worker_settings(redis_url, SLOW, reclaim_idle_s=60))


@pytest.fixture
async def worker(redis_server_url: str) -> AsyncIterator[tuple[Worker, RedisBroker]]:
    async with started_worker(redis_server_url) as worker:
        yield worker


async def streaming(worker: tuple[Worker, RedisBroker], redis: Redis) -> tuple[str, str]:
    """A job that worker A took and streams: its request id and entry id."""
    a, broker = worker
    rid = await opened(a)
    await broker.publish(long_job(rid, deadline_s=60), stream=a.settings.keys.jobs)
    await first(redis, a.settings.keys.events(rid), "delta")
    (entry,) = a.jobs.by_entry()
    return rid, entry


async def first(redis: Redis, stream: str, kind: str) -> dict[str, str]:
    """The first entry of type ``kind`` in ``stream``, waited for with a blocking read."""
    last = "0"
    async with asyncio.timeout(10):
        while True:
            for _, entries in await redis.xread({stream: last}, block=1000):
                for entry_id, fields in entries:
                    if fields["type"] == kind:
                        return dict(fields)
                    last = entry_id


async def test_a_worker_shut_down_mid_answer_ends_it_and_acknowledges_its_entry(
    worker: tuple[Worker, RedisBroker], redis: Redis
) -> None:
    rid, entry = await streaming(worker, redis)
    a = worker[0]
    await a.pool.drain(0.01)  # SIGTERM, drain deadline reached
    keys = a.settings.keys
    assert (await first(redis, keys.events(rid), "error"))["type"] == "error"
    assert not await redis.xpending_range(keys.jobs, JOBS_GROUP, entry, entry, 1)


async def test_a_worker_shut_down_after_a_takeover_leaves_the_new_owners_entry_pending(
    worker: tuple[Worker, RedisBroker], redis: Redis
) -> None:
    rid, entry = await streaming(worker, redis)
    a = worker[0]
    keys = a.settings.keys
    # Worker B reclaims the entry (A looked dead for reclaim_idle_s) and takes the job ...
    await redis.xclaim(keys.jobs, JOBS_GROUP, "worker-b", 0, [entry], justid=True)
    assert (await a.streams.take(rid, "worker-b")).epoch == 2
    # ... and A is shut down (drain deadline reached) before it noticed the fence.
    await a.pool.drain(0.01)
    pending = await redis.xpending_range(keys.jobs, JOBS_GROUP, entry, entry, 1)
    assert pending, "A acknowledged B's entry"
    assert pending[0]["consumer"] == "worker-b"
    assert await job_queue.refresh_held(redis, keys, "worker-b", [entry]) == []


async def test_a_worker_shut_down_while_redis_takes_nothing_still_stops(
    redis_server_url: str, redis: Redis
) -> None:
    """Its end of the answer cannot be written: the drain gives up on it after a grace (the
    entry stays pending for a reclaim) instead of waiting for Redis forever."""
    async with reply_dropping_proxy(redis_server_url) as proxy:
        async with started_worker(proxy.url) as worker:
            _, entry = await streaming(worker, redis)
            proxy.stop_reading()
            async with asyncio.timeout(10):
                await worker[0].pool.drain(0.01, end_grace_s=0.5)
        keys = worker[0].settings.keys
    assert await redis.xpending_range(keys.jobs, JOBS_GROUP, entry, entry, 1)


async def test_a_cancelled_answer_says_what_it_used(redis_server_url: str, redis: Redis) -> None:
    """A cancel's ``done`` said 0 prompt and 0 completion tokens after text was streamed,
    while its telemetry counted both."""
    async with started(worker_settings(redis_server_url, demo(20))) as (a, broker):
        rid = await opened(a)
        await broker.publish(long_job(rid, deadline_s=60), stream=a.settings.keys.jobs)
        await first(redis, a.settings.keys.events(rid), "delta")
        a.jobs.stop(rid, CANCELLED)
        final = await wait_for_final(redis, a.settings.namespace, rid)
    assert final["finish_reason"] == "cancelled"
    assert final["usage"]["prompt_tokens"] > 0
    assert final["usage"]["completion_tokens"] > 0
