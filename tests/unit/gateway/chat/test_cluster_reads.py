"""The relay on a Redis Cluster: per-node reads, regrouped on resharding and failover."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest
from redis.asyncio import Redis

from deploy.local.servers import RedisClusterServers
from echotune.common.keys import Keys
from echotune.common.redis import create_redis
from echotune.gateway.chat.cluster_reads import STOP_S, NodeReads
from echotune.gateway.chat.relay import Entry, StreamRelay, Subscription

pytestmark = pytest.mark.cluster


@pytest.fixture
async def cluster_redis(redis_cluster: RedisClusterServers) -> AsyncIterator[Redis]:
    client = create_redis(redis_cluster.url)
    yield client
    await client.aclose()


@pytest.fixture
async def relay(redis_cluster: RedisClusterServers) -> AsyncIterator[StreamRelay]:
    running = StreamRelay(
        redis_cluster.url, Keys(f"t{uuid.uuid4().hex[:8]}"), block_ms=5000, batch=4
    )
    await running.start()
    yield running
    await running.stop()


async def take(sub: Subscription, n: int, timeout: float = 10.0) -> list[Entry]:
    async with asyncio.timeout(timeout):
        return [await sub.queue.get() for _ in range(n)]


async def add(redis: Redis, relay: StreamRelay, rid: str, data: str) -> str:
    key = relay._keys.events(rid)
    return str(await redis.xadd(key, {"type": "delta", "data": data}))


async def test_streams_on_every_node_are_relayed(
    relay: StreamRelay, cluster_redis: Redis, redis_cluster: RedisClusterServers
) -> None:
    """One XREAD over streams of different slots is refused (CROSSSLOT): nothing was relayed."""
    by_primary: dict[int, list[str]] = {}
    while len(by_primary) < 3 or min(map(len, by_primary.values())) < 4:
        rid = f"r-{uuid.uuid4().hex[:8]}"  # 12 random ids missed a primary 1 run in 40
        by_primary.setdefault(redis_cluster.primary_of(relay._keys.events(rid)).port, []).append(
            rid
        )
    rids = [rid for on_one in by_primary.values() for rid in on_one[:4]]
    for rid in rids[:6]:
        await add(cluster_redis, relay, rid, "before")
    subs = [relay.subscribe(rid, "0-0") for rid in rids]
    for rid in rids:
        await add(cluster_redis, relay, rid, f"{rid}-1")
    for n in range(10):  # more than a batch (4): read on without a further change
        for rid in rids:
            await add(cluster_redis, relay, rid, f"{rid}-{n + 2}")
    for rid, sub in zip(rids, subs, strict=True):
        expected = (["before"] if rid in rids[:6] else []) + [f"{rid}-{n}" for n in range(1, 12)]
        got = await take(sub, len(expected))
        assert [e.data for e in got] == expected
        assert sub.queue.empty()


async def test_a_reader_joining_behind_another_gets_every_entry(
    relay: StreamRelay, cluster_redis: Redis
) -> None:
    rid = f"r-{uuid.uuid4().hex}"
    ids = [await add(cluster_redis, relay, rid, str(n)) for n in range(5)]
    first = relay.subscribe(rid, ids[-1])
    await add(cluster_redis, relay, rid, "5")
    assert [e.data for e in await take(first, 1)] == ["5"]
    second = relay.subscribe(rid, "0-0")
    await add(cluster_redis, relay, rid, "6")
    assert [e.data for e in await take(second, 7)] == [str(n) for n in range(7)]
    assert [e.data for e in await take(first, 1)] == ["6"]


async def test_a_stream_whose_slot_moves_is_read_on_its_new_node(
    relay: StreamRelay, cluster_redis: Redis, redis_cluster: RedisClusterServers
) -> None:
    """Resharding: while the slot migrates (ASK), then once it moved (MOVED)."""
    rid = f"m-{uuid.uuid4().hex}"
    key = relay._keys.events(rid)
    sub = relay.subscribe(rid, "0-0")
    await add(cluster_redis, relay, rid, "0")
    assert [e.data for e in await take(sub, 1)] == ["0"]
    source = redis_cluster.primary_of(key)
    target = next(
        n for n in redis_cluster.nodes if n is not source and redis_cluster.role(n) == "master"
    )
    _, slot = await asyncio.to_thread(redis_cluster.move_slot_begin, key, target)
    try:
        await add(cluster_redis, relay, rid, "1")  # the client follows ASK to the target
        assert [e.data for e in await take(sub, 1)] == ["1"]
    finally:
        await asyncio.to_thread(redis_cluster.move_slot_end, slot, target)
    await add(cluster_redis, relay, rid, "2")
    (last,) = await take(sub, 1)
    assert last.data == "2"
    relay.unsubscribe(sub)  # a reader that comes back finds the slot moved (MOVED)
    await add(cluster_redis, relay, rid, "2b")
    sub = relay.subscribe(rid, last.id)
    assert [e.data for e in await take(sub, 1)] == ["2b"]
    await asyncio.to_thread(redis_cluster.move_slot_begin, key, source)
    await asyncio.to_thread(redis_cluster.move_slot_end, slot, source)
    await add(cluster_redis, relay, rid, "3")
    assert [e.data for e in await take(sub, 1)] == ["3"]


async def test_a_stream_is_still_read_after_its_primary_fails_over(
    relay: StreamRelay, cluster_redis: Redis, redis_cluster: RedisClusterServers
) -> None:
    rid = f"f-{uuid.uuid4().hex}"
    key = relay._keys.events(rid)
    sub = relay.subscribe(rid, "0-0")
    await add(cluster_redis, relay, rid, "0")
    assert [e.data for e in await take(sub, 1)] == ["0"]
    try:
        await asyncio.to_thread(redis_cluster.kill_primary, key)
        await add(cluster_redis, relay, rid, "1")  # on the promoted replica
        assert [e.data for e in await take(sub, 1, timeout=30)] == ["1"]
    finally:
        await asyncio.to_thread(redis_cluster.restore)


async def test_a_node_whose_reads_swallow_their_cancel_still_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """redis-py's connect under ``asyncio.wait_for`` can turn a cancel into a ``TimeoutError``
    on Python 3.11: the reads took it for a failed read and went on, and the stop awaited them
    for ever (a cluster test's teardown hung past its 120 s timeout, fresh-clone CI44)."""
    reading = asyncio.Event()

    async def reads_that_swallow_a_cancel(self: NodeReads) -> None:
        while self.keys:
            reading.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.01)

    monkeypatch.setattr(NodeReads, "_run", reads_that_swallow_a_cancel)
    node = NodeReads(SimpleNamespace(), "127.0.0.1", 1)  # type: ignore[arg-type]
    node.watch("k")
    await reading.wait()
    async with asyncio.timeout(STOP_S + 5):
        await node.stop()
