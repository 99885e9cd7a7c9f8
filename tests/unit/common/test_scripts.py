"""Lua scripts called by SHA: pipelined, reloaded after NOSCRIPT, on a cluster too."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from deploy.local.servers import RedisClusterServers
from echotune.common.redis import create_redis
from echotune.common.scripts import Script, execute


@pytest.fixture
async def cluster_redis(redis_cluster: RedisClusterServers) -> AsyncIterator[Redis]:
    client = create_redis(redis_cluster.url)
    yield client
    await client.aclose()


@pytest.mark.cluster
async def test_scripts_in_a_pipeline_spanning_nodes_are_reloaded_after_noscript(
    cluster_redis: Redis,
) -> None:
    """A cluster pipeline refuses ``pipe.evalsha`` and keeps its commands elsewhere: the scripts
    of a pipeline spanning every node are queued, run, and reloaded after NOSCRIPT anyway."""
    incr = Script(f"-- {uuid.uuid4().hex}\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])")
    tag = uuid.uuid4().hex
    keys = [f"t:{{{tag}-{n}}}:n" for n in range(12)]
    assert len({key_slot(k.encode()) for k in keys}) == 12
    for round_ in (1, 2):  # the first round finds no script loaded anywhere
        async with cluster_redis.pipeline(transaction=False) as pipe:
            for key in keys:
                incr.queue(pipe, [key], [1])
            pipe.get(keys[0])
            replies = await execute(cluster_redis, pipe, [incr] * len(keys) + [None])
        assert replies[:-1] == [round_] * len(keys)


async def test_a_script_run_again_after_noscript_gets_its_bytes_arguments_as_sent(
    redis: Redis,
) -> None:
    """A bytes argument was sent again as its Python repr (``"b'...'"``) after NOSCRIPT."""
    length = Script(f"-- {uuid.uuid4().hex}\nreturn string.len(ARGV[1])")  # never loaded
    async with redis.pipeline(transaction=False) as pipe:
        length.queue(pipe, ["t:length"], [b"\xff\x00ab"])
        assert await execute(redis, pipe, [length]) == [4]
