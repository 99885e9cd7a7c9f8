"""Client factories: one Redis or a cluster, by URL; a cluster broker hears every node."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
from redis.asyncio import Redis
from redis.exceptions import TimeoutError as RedisTimeoutError

from deploy.local.servers import RedisClusterServers
from echotune.common.keys import Keys
from echotune.common.messages import StartEvent
from echotune.common.redis import ClusterAddress, cluster_address, create_broker, create_redis
from echotune.common.request_stream import RequestStreams
from tests.support.flaky_proxy import reply_dropping_proxy


@pytest.fixture
async def cluster_redis(redis_cluster: RedisClusterServers) -> AsyncIterator[Redis]:
    client = create_redis(redis_cluster.url)
    yield client
    await client.aclose()


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


@pytest.mark.cluster
async def test_a_cancel_announced_from_a_script_reaches_a_cluster_broker_subscriber(
    redis_cluster: RedisClusterServers, cluster_redis: Redis
) -> None:
    """PUBLISH inside the cancel script goes to every node: a worker subscribed through any
    node hears it."""
    namespace = f"t{uuid.uuid4().hex[:8]}"
    keys = Keys(namespace)
    streams = RequestStreams(
        cluster_redis, keys, request_ttl_s=60, final_ttl_s=60, reader_ttl_ms=5000
    )
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


@pytest.mark.single_node
async def test_a_burst_of_broker_commands_waits_for_a_connection_instead_of_failing(
    redis_server_url: str,
) -> None:
    """redis-py's default pool refused the 101st concurrent command (MaxConnectionsError): a
    burst of chat starts on one gateway (each publishes its job) answered 500."""
    broker = create_broker(redis_server_url)
    client = await broker.connect()
    try:
        waits = [client.blpop([f"absent-{uuid.uuid4().hex}"], timeout=0.2) for _ in range(150)]
        assert await asyncio.gather(*waits) == [None] * 150
    finally:
        await broker.stop()


@pytest.mark.single_node(reason="a cluster client's nodes keep redis-py's connection class")
async def test_a_command_is_sent_without_a_task_of_its_own(redis_server_url: str) -> None:
    """redis-py sends through ``asyncio.wait_for`` when a socket timeout is set: one task per
    command, ~15 % of a round trip's client CPU (issue 15)."""
    client = create_redis(redis_server_url, max_connections=1)
    loop = asyncio.get_running_loop()
    made: list[object] = []

    def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        made.append(coro)
        return asyncio.Task(coro, loop=loop, **kwargs)

    try:
        await client.ping()
        loop.set_task_factory(counting)
        try:
            for _ in range(20):
                await client.get(f"absent-{uuid.uuid4().hex}")
        finally:
            loop.set_task_factory(None)
    finally:
        await client.aclose()
    assert made == []


@pytest.mark.single_node(reason="the proxy stands in front of one Redis")
async def test_a_send_the_server_does_not_take_times_out(redis_server_url: str) -> None:
    """Large sends wait for the socket as long as Redis reads; one it stops reading fails
    with redis-py's timeout (what callers catch) instead of hanging."""
    async with reply_dropping_proxy(redis_server_url) as proxy:
        client = create_redis(proxy.url, max_connections=1, socket_timeout=0.2)
        try:
            key, value = f"t:{uuid.uuid4().hex}", b"v" * (16 << 20)
            await client.set(key, value)
            assert await client.strlen(key) == len(value)
            proxy.stop_reading()
            async with asyncio.timeout(10):
                with pytest.raises(RedisTimeoutError):
                    await client.set(key, value * 4)
        finally:
            await client.aclose()


@pytest.mark.single_node(reason="a cluster client resolves what it tells Redis once per client")
async def test_a_new_connection_does_not_read_the_installed_package_metadata(
    redis_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each new connection looked redis-py's version up in the installed package's metadata
    (~340 µs of CPU), paid whenever a burst of commands grew a pool (issue 15)."""
    lookups: list[str] = []

    def version() -> str:
        lookups.append("redis")
        return redis.__version__

    monkeypatch.setattr(redis.utils, "get_lib_version", version)
    client = create_redis(redis_server_url)
    broker = create_broker(redis_server_url)
    broker_client = await broker.connect()
    try:
        for pool_of in (client, broker_client):  # concurrent: a connection each
            waits = [pool_of.blpop([f"absent-{uuid.uuid4().hex}"], timeout=0.05) for _ in range(4)]
            assert await asyncio.gather(*waits) == [None] * 4
        assert len(client.connection_pool._available_connections) == 4  # type: ignore[attr-defined]
        assert lookups == []
    finally:
        await client.aclose()
        await broker.stop()
