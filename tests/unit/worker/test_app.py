"""The worker's FastStream wiring against a real Redis."""

from __future__ import annotations

import uuid

from echotune.common.keys import JOBS_GROUP
from echotune.common.redis import create_broker, ensure_group
from echotune.worker.app import IDLE_BLOCK_MS


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
