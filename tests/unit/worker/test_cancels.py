"""Cancel announcements on a Redis Cluster: heard through any node, and after it is gone."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from deploy.local.servers import RedisClusterServers
from echotune.common.keys import Keys
from echotune.common.messages import StartEvent
from echotune.common.redis import create_redis
from echotune.common.request_stream import RequestStreams
from echotune.worker.cancels import ClusterCancels

pytestmark = pytest.mark.cluster


@pytest.fixture
async def cluster_redis(redis_cluster: RedisClusterServers) -> AsyncIterator[Redis]:
    client = create_redis(redis_cluster.url)
    yield client
    await client.aclose()


async def announce_until_heard(
    streams: RequestStreams, heard: asyncio.Queue[str], timeout: float
) -> None:
    """Cancel a new request (again and again: nobody keeps an announcement) until heard."""
    rid = f"c-{uuid.uuid4().hex[:8]}"
    await streams.open(rid, "fp", "u", StartEvent(request_id=rid, provider="d", model="m"))
    async with asyncio.timeout(timeout):
        while True:
            assert (await streams.cancel(rid, "u")).state == "cancelling"
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    while await heard.get() != rid:
                        pass
                    return


async def test_cancels_are_heard_again_once_the_listeners_node_is_gone(
    redis_cluster: RedisClusterServers, cluster_redis: Redis
) -> None:
    """FastStream's cluster subscriber retried its dead node forever (25 refused connections
    in 60 s, no cancel heard): the worker's cancels waited for its flag sweep."""
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    streams = RequestStreams(
        cluster_redis, keys, request_ttl_s=60, final_ttl_s=60, reader_ttl_ms=5000
    )
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = ClusterCancels(redis_cluster.url, keys.cancel_channel, heard.put_nowait)
    running = asyncio.create_task(listener.run())
    try:
        async with asyncio.timeout(10):
            await listener.subscribed.wait()
        await announce_until_heard(streams, heard, 10)
        assert listener.node is not None
        (node,) = [n for n in redis_cluster.nodes if n.port == listener.node[1]]
        node.kill()
        await asyncio.to_thread(redis_cluster.wait_until_healthy)
        await announce_until_heard(streams, heard, 30)
        assert listener.node is not None
        assert listener.node[1] != node.port
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await asyncio.to_thread(redis_cluster.restore)
