"""The worker's FastStream wiring against a real Redis."""

from __future__ import annotations

import asyncio
import uuid

from faststream.redis import TestApp

from echotune.common.consuming import StreamSubscription
from echotune.common.keys import JOBS_GROUP
from echotune.common.redis import create_broker, ensure_group
from echotune.worker.app import IDLE_BLOCK_MS, create_app
from echotune.worker.settings import WorkerSettings


async def test_the_idle_jobs_read_ends_before_the_brokers_socket_timeout(
    redis_server_url: str,
) -> None:
    """The jobs read blocked 5 s on connections that gave up reading after redis-py's default
    5 s: an idle worker's read timed out (an error after the retries), and a job delivered at
    that moment sat in its pending list until reclaimed."""
    broker = create_broker(redis_server_url)
    client = await broker.connect()
    try:
        stream = f"t:{{{uuid.uuid4().hex}}}:jobs"
        await ensure_group(client, stream, JOBS_GROUP)
        reply = await client.xreadgroup(
            JOBS_GROUP, "idle-worker", {stream: ">"}, count=1, block=IDLE_BLOCK_MS + 300
        )
        assert not reply
    finally:
        await broker.stop()


async def test_a_read_of_new_jobs_takes_no_more_than_the_pool_has_room_for(
    settings: WorkerSettings,
) -> None:
    """Opened, the worker gives its pool's room to the reads of new jobs (at most READ_MOST)."""
    app = create_app(settings.model_copy(update={"concurrency": 5}))
    (reads,) = (
        s.stream_sub
        for s in app.broker.subscribers
        if isinstance(getattr(s, "stream_sub", None), StreamSubscription)
        and s.stream_sub.min_idle_time is None
    )
    async with TestApp(app):
        worker = app.context.get("worker")
        assert reads.max_records == 5
        worker.pool._tasks.update({asyncio.Future(), asyncio.Future()})  # two jobs running
        assert reads.max_records == 3
        worker.pool._tasks.clear()
