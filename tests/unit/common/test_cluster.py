"""Redis Cluster mode: configuration, single-slot keys, scripts in pipelines, cancels."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from deploy.local.servers import RedisClusterServers
from echotune.common.keys import Keys
from echotune.common.messages import StartEvent
from echotune.common.redis import ClusterAddress, cluster_address, create_broker, create_redis
from echotune.common.request_stream import Batch, RequestStreams
from echotune.common.scripts import Script, execute

pytestmark = pytest.mark.cluster


def slot(key: str) -> int:
    return key_slot(key.encode())


@pytest.fixture
async def cluster_redis(redis_cluster: RedisClusterServers) -> AsyncIterator[Redis]:
    client = create_redis(redis_cluster.url)
    yield client
    await client.aclose()


def streams_of(redis: Redis, namespace: str) -> RequestStreams:
    keys = Keys(namespace)
    return RequestStreams(redis, keys, request_ttl_s=60, final_ttl_s=60, reader_ttl_ms=5000)


def test_a_cluster_url_names_its_seed_nodes_and_credentials() -> None:
    assert cluster_address("redis://127.0.0.1:6379/0") is None
    assert cluster_address("redis+cluster://a:7000,b:7001") == ClusterAddress(
        (("a", 7000), ("b", 7001))
    )
    tls = cluster_address("rediss+cluster://me:s%40cret@10.0.0.1:6380/")
    assert tls == ClusterAddress((("10.0.0.1", 6380),), "me", "s@cret", ssl=True)
    assert tls.node_url("10.0.0.2", 6381) == "rediss://me:s@cret@10.0.0.2:6381/0"
    with pytest.raises(ValueError, match="host:port"):
        cluster_address("redis+cluster://nohostport")
    with pytest.raises(ValueError, match="database 0"):
        cluster_address("redis+cluster://a:7000/3")


def test_keys_used_together_share_a_slot() -> None:
    """The telemetry stream and its dead letters are written in one transaction: on a cluster
    they must share a slot (the dead-letter stream had none in common: CROSSSLOT)."""
    keys = Keys("ns")
    assert slot(keys.telemetry_dead_letters) == slot(keys.telemetry)
    assert keys.telemetry == "ns:telemetry", "the stream keeps its name across the change"
    per_request = [keys.events("r1"), keys.meta("r1"), keys.cancel_flag("r1"), keys.reader("r1")]
    assert len({slot(k) for k in per_request}) == 1
    breaker = keys.breaker("openai")
    assert len({slot(k) for k in (breaker, f"{breaker}:ok", f"{breaker}:fail")}) == 1


async def test_scripts_in_a_pipeline_spanning_nodes_are_reloaded_after_noscript(
    cluster_redis: Redis,
) -> None:
    """A cluster pipeline refuses ``pipe.evalsha`` and keeps its commands elsewhere: the scripts
    of a pipeline spanning every node are queued, run, and reloaded after NOSCRIPT anyway."""
    incr = Script(f"-- {uuid.uuid4().hex}\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])")
    tag = uuid.uuid4().hex
    keys = [f"t:{{{tag}-{n}}}:n" for n in range(12)]
    assert len({slot(k) for k in keys}) == 12
    for round_ in (1, 2):  # the first round finds no script loaded anywhere
        async with cluster_redis.pipeline(transaction=False) as pipe:
            for key in keys:
                incr.queue(pipe, [key], [1])
            pipe.get(keys[0])
            replies = await execute(cluster_redis, pipe, [incr] * len(keys) + [None])
        assert replies[:-1] == [round_] * len(keys)


async def test_appends_of_many_requests_in_one_pipeline(cluster_redis: Redis) -> None:
    """The worker's flusher appends to requests in every slot with one pipelined call."""
    namespace = f"t{uuid.uuid4().hex[:8]}"
    streams = streams_of(cluster_redis, namespace)
    await streams.load_scripts()
    rids = [f"r-{n}-{uuid.uuid4().hex[:6]}" for n in range(10)]
    start = StartEvent(request_id="x", provider="demo", model="m")
    for rid in rids:
        await streams.open(rid, "fp", "u", start)
        assert (await streams.take(rid, "w")).epoch == 1
    batches = [Batch(rid, 1, 1, [("delta", '{"delta": "a"}'), ("delta", "{}")]) for rid in rids]
    results = await streams.append_many(batches)
    assert all(r.refused is None for r in results if not isinstance(r, Exception)), results
    for rid in rids:
        assert await cluster_redis.xlen(Keys(namespace).events(rid)) == 3


async def test_a_cancel_announced_from_a_script_reaches_a_cluster_broker_subscriber(
    redis_cluster: RedisClusterServers, cluster_redis: Redis
) -> None:
    """PUBLISH inside the cancel script goes to every node: a worker subscribed through any
    node hears it."""
    namespace = f"t{uuid.uuid4().hex[:8]}"
    keys = Keys(namespace)
    streams = streams_of(cluster_redis, namespace)
    heard: asyncio.Queue[str] = asyncio.Queue()
    broker = create_broker(redis_cluster.url)

    @broker.subscriber(channel=keys.cancel_channel)
    async def on_cancel(body: str) -> None:
        await heard.put(body)

    await broker.start()
    try:
        for n in range(6):  # requests in slots of every node
            rid = f"c-{n}-{uuid.uuid4().hex[:6]}"
            start = StartEvent(request_id=rid, provider="demo", model="m")
            await streams.open(rid, "fp", "u", start)
            assert (await streams.cancel(rid, "u")).state == "cancelling"
            async with asyncio.timeout(10):
                assert await heard.get() == rid
    finally:
        await broker.stop()
