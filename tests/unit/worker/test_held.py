"""A held job's entry is kept fresh; its run stops early only when another worker took the
entry over (a vanished entry is no takeover: the run goes on and ends the answer)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

from faststream.redis import RedisBroker
from redis.asyncio import Redis

from echotune.common import job_queue
from echotune.common.keys import JOBS_GROUP, Keys
from echotune.worker.app import create_app
from echotune.worker.resources import Worker, open_worker
from echotune.worker.settings import WorkerSettings
from tests.support.streams import wait_for_final
from tests.unit.worker.test_handlers import long_job, opened
from tests.unit.worker.test_shutdown import first

PACED = {"name": "demo", "kind": "demo", "models": ["demo-1"], "token_pace_ms": 40}


async def delivered(redis: Redis, keys: Keys, consumer: str) -> str:
    """A job entry added and delivered to ``consumer``: its id."""
    await job_queue.ensure_group(redis, keys)
    await redis.xadd(keys.jobs, {"job": "{}"})
    reply = await redis.xreadgroup(JOBS_GROUP, consumer, {keys.jobs: ">"}, count=1)
    return str(reply[0][1][0][0])


async def test_only_an_entry_pending_with_another_worker_is_taken_over(redis: Redis) -> None:
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    mine, reclaimed, acknowledged = [await delivered(redis, keys, "a") for _ in range(3)]
    await redis.xclaim(keys.jobs, JOBS_GROUP, "b", 0, [reclaimed], justid=True)
    await redis.xack(keys.jobs, JOBS_GROUP, acknowledged)  # e.g. by a duplicate's take
    entries = [mine, reclaimed, acknowledged]
    assert await job_queue.refresh_held(redis, keys, "a", entries) == [reclaimed]


@contextlib.asynccontextmanager
async def started_worker(redis_url: str) -> AsyncIterator[tuple[Worker, RedisBroker]]:
    """A worker refreshing its entries every 0.3 s, answering at 40 ms a token."""
    settings = WorkerSettings(
        redis_url=redis_url,
        mongodb_url="mongodb://127.0.0.1:1/none",
        namespace=f"t{uuid.uuid4().hex[:10]}",
        providers=[PACED],
        default_provider="demo",
        context_timeout_s=0.05,
        profile_timeout_s=0.05,
        reclaim_idle_s=0.9,
    )
    broker = create_app(settings).broker
    async with open_worker(settings, broker) as running:
        broker.context.set_global("worker", running)
        await broker.start()
        try:
            yield running, broker
        finally:
            await broker.stop()


async def test_an_answer_whose_jobs_entry_vanished_is_still_ended(
    redis_server_url: str, redis: Redis
) -> None:
    """The jobs stream's node lost its data (a cluster shard restarted empty) and the group was
    created again: the run took that for a takeover and stopped with no final, so the client
    waited for the gateway's own deadline (630 s by default)."""
    async with started_worker(redis_server_url) as (running, broker):
        keys = running.settings.keys
        rid = await opened(running)
        await broker.publish(long_job(rid, deadline_s=60), stream=keys.jobs)
        await first(redis, keys.events(rid), "delta")
        await redis.delete(keys.jobs)
        await job_queue.ensure_group(redis, keys)
        final = await wait_for_final(redis, running.settings.namespace, rid, timeout=20)
    assert final["type"] == "done", final
