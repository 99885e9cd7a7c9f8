"""A chat's opening and its final count only once a replica holds them (``WAIT``): Redis
replicates asynchronously, and a failover that lost a started opening left an answer nobody
could end (the cluster chaos run's ``drained`` violation: resumes answered 404, no final
ever); one that lost a final left the answer to the gateway's deadline."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio import Redis

from deploy.local.servers import RedisClusterServers
from echotune.common.keys import Keys
from echotune.common.messages import DoneEvent, FinishReason, StartEvent, Timings
from echotune.common.redis import create_redis
from echotune.common.request_stream import Final, Opened, RequestStreams
from tests.support.replicas import BLOCKED_S, Pair, held_back, paused

RID = "r-open-replicated"


def streams_on(redis: Redis, wait_ms: int, max_ms: int = 3000) -> RequestStreams:
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    return RequestStreams(
        redis, keys, request_ttl_s=60, final_ttl_s=60, reader_ttl_ms=1000,
        wait_replicas=1, wait_ms=wait_ms, wait_max_ms=max_ms,
    )  # fmt: skip


def start() -> StartEvent:
    return StartEvent(request_id=RID, provider="p", model="m")


DONE = DoneEvent(
    finish_reason=FinishReason.STOP, provider="p", model="m", timings=Timings(total_ms=1)
)


@pytest.mark.parametrize("wait_ms", [3000, 50])
async def test_an_opening_is_started_only_once_a_replica_holds_it(
    replica_pair: Pair, wait_ms: int
) -> None:
    """With 50 ms, past its wait (CI, stop 48): a wait that ran out counted the write unheld
    while its replica was online, only lagging; a failover then could lose it."""
    streams = streams_on(replica_pair.redis, wait_ms=wait_ms)
    await streams.load_scripts()
    meta = streams.keys.meta(RID)
    with paused(replica_pair.replica):
        opening = await held_back(
            streams.open(RID, "fp", "u", start()), lambda: replica_pair.redis.exists(meta)
        )
    opened = await opening
    assert (opened.state, opened.unreplicated) == (Opened.STARTED, False)
    assert await replica_pair.replica_redis.exists(meta) == 1


async def test_a_final_is_written_only_once_a_replica_holds_it(replica_pair: Pair) -> None:
    streams = streams_on(replica_pair.redis, wait_ms=3000)
    await streams.load_scripts()  # not NOSCRIPT first: that WAIT would spend the whole wait
    await streams.open(RID, "fp", "u", start())
    taken = await streams.take(RID, "w")
    meta = streams.keys.meta(RID)
    with paused(replica_pair.replica):
        final = streams.append_final(RID, taken.fence, 1, DONE)
        ending = await held_back(final, lambda: replica_pair.redis.hexists(meta, "final_id"))
    assert await ending is Final.WRITTEN
    assert await replica_pair.replica_redis.hexists(meta, "final_id")


async def test_a_final_written_again_waits_for_the_replica_too(replica_pair: Pair) -> None:
    """The retry of a final whose reply was lost finds it written: it writes again, or its
    ``WAIT`` would wait for nothing (on Valkey and Redis 7.2+, a connection that wrote
    nothing has nothing to wait for)."""
    streams = streams_on(replica_pair.redis, wait_ms=3000)
    await streams.open(RID, "fp", "u", start())
    taken = await streams.take(RID, "w")
    assert await streams.append_final(RID, taken.fence, 1, DONE) is Final.WRITTEN
    with paused(replica_pair.replica):
        await replica_pair.replica_lag()
        again = streams.append_final(RID, taken.fence, 1, DONE)
        pending = asyncio.ensure_future(again)
        done, _ = await asyncio.wait({pending}, timeout=BLOCKED_S)
        assert not done, "the retried final counted before the replica caught up"
    assert await pending is Final.WRITTEN


async def test_a_replica_always_slower_than_the_wait_is_waited_for(lagging_pair: Pair) -> None:
    """Redis before 7.2 moves a connection's own WAIT target with each WAIT: waiting again
    chased it (review of stop 48: 154 s on Redis 7.0); the offset ROLE named holds still."""
    streams = streams_on(lagging_pair.redis, wait_ms=50, max_ms=2000)
    await streams.load_scripts()
    opened = await asyncio.wait_for(streams.open(RID, "fp", "u", start()), 2.5)
    assert (opened.state, opened.unreplicated) == (Opened.STARTED, False)
    assert await lagging_pair.replica_redis.exists(streams.keys.meta(RID)) == 1


async def test_a_replica_paused_past_the_longest_wait_lets_the_start_go_counted(
    replica_pair: Pair,
) -> None:
    streams = streams_on(replica_pair.redis, wait_ms=50, max_ms=300)
    await streams.load_scripts()
    with paused(replica_pair.replica):
        opened = await asyncio.wait_for(streams.open(RID, "fp", "u", start()), 2)
    assert (opened.state, opened.unreplicated) == (Opened.STARTED, True)


async def test_with_no_replica_online_the_start_waits_only_its_wait(replica_pair: Pair) -> None:
    streams = streams_on(replica_pair.redis, wait_ms=50)
    await streams.load_scripts()
    replica_pair.replica.kill()
    async with asyncio.timeout(10):
        while (await replica_pair.redis.execute_command("ROLE"))[2]:  # noqa: ASYNC110 - Redis pushes no signal
            await asyncio.sleep(0.02)
    opened = await asyncio.wait_for(streams.open(RID, "fp", "u", start()), 2)
    assert (opened.state, opened.unreplicated) == (Opened.STARTED, True)


async def test_the_wait_follows_a_script_redis_forgot(replica_pair: Pair) -> None:
    streams = streams_on(replica_pair.redis, wait_ms=3000)
    await replica_pair.redis.script_flush()
    meta = streams.keys.meta(RID)
    with paused(replica_pair.replica):
        opening = await held_back(
            streams.open(RID, "fp", "u", start()), lambda: replica_pair.redis.exists(meta)
        )
    assert (await opening).state is Opened.STARTED
    assert await replica_pair.replica_redis.exists(meta) == 1


@pytest.mark.cluster
async def test_on_a_cluster_the_wait_is_the_primary_of_the_opening_s(
    redis_cluster: RedisClusterServers,
) -> None:
    cluster_redis = create_redis(redis_cluster.url)
    try:
        streams = streams_on(cluster_redis, wait_ms=2000)
        meta = streams.keys.meta(RID)
        replica = redis_cluster.replica_of(redis_cluster.primary_of(meta))
        with paused(replica):
            opening = await held_back(
                streams.open(RID, "fp", "u", start()), lambda: cluster_redis.exists(meta)
            )
        opened = await opening
        assert (opened.state, opened.unreplicated) == (Opened.STARTED, False)
    finally:
        await cluster_redis.aclose()
