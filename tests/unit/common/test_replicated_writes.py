"""A chat's opening and its final count only once a replica holds them (``WAIT``): Redis
replicates asynchronously, and a failover that lost a started opening left an answer nobody
could end (the cluster chaos run's ``drained`` violation: resumes answered 404, no final
ever); one that lost a final left the answer to the gateway's deadline."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from deploy.local.servers import RedisClusterServers, RedisServer
from echotune.common.keys import Keys
from echotune.common.messages import DoneEvent, FinishReason, StartEvent, Timings
from echotune.common.redis import create_redis
from echotune.common.request_stream import Final, Opened, RequestStreams

RID = "r-open-replicated"


class Pair:
    """A Redis primary and its replica, each with a client."""

    def __init__(self, tmp_path: Path) -> None:
        (tmp_path / "p").mkdir()
        (tmp_path / "r").mkdir()
        self.primary = RedisServer(str(tmp_path / "p"))
        self.primary.start()
        follow = ["--replicaof", "127.0.0.1", str(self.primary.port)]
        self.replica = RedisServer(str(tmp_path / "r"), extra_args=follow)
        self.replica.start()
        self.redis = create_redis(self.primary.url)
        self.replica_redis = create_redis(self.replica.url)

    async def in_sync(self) -> None:
        async with asyncio.timeout(30):
            while (await self.replica_redis.info("replication"))["master_link_status"] != "up":  # noqa: ASYNC110 - Redis pushes no signal
                await asyncio.sleep(0.05)

    def pause_replica(self, paused: bool) -> None:
        assert self.replica.proc is not None
        os.kill(self.replica.proc.pid, signal.SIGSTOP if paused else signal.SIGCONT)

    async def close(self) -> None:
        self.pause_replica(False)
        await self.redis.aclose()
        await self.replica_redis.aclose()
        self.replica.stop()
        self.primary.stop()


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    pair = Pair(tmp_path)
    try:
        await pair.in_sync()
        yield pair
    finally:
        await pair.close()


def streams_on(redis: Redis, wait_ms: int) -> RequestStreams:
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    return RequestStreams(
        redis, keys, request_ttl_s=60, final_ttl_s=60, reader_ttl_ms=1000,
        wait_replicas=1, wait_ms=wait_ms,
    )  # fmt: skip


def start() -> StartEvent:
    return StartEvent(request_id=RID, provider="p", model="m")


async def test_an_opening_is_started_only_once_a_replica_holds_it(pair: Pair) -> None:
    streams = streams_on(pair.redis, wait_ms=3000)
    await streams.load_scripts()
    meta = streams.keys.meta(RID)
    pair.pause_replica(True)
    opening = asyncio.create_task(streams.open(RID, "fp", "u", start()))
    async with asyncio.timeout(10):  # the primary holds it, the replica cannot yet
        while not await pair.redis.exists(meta):  # noqa: ASYNC110 - Redis pushes no signal
            await asyncio.sleep(0.01)
    assert not opening.done(), "started before any replica held the opening"
    pair.pause_replica(False)
    opened = await opening
    assert (opened.state, opened.unreplicated) == (Opened.STARTED, False)
    assert await pair.replica_redis.exists(meta) == 1


async def test_a_final_is_written_only_once_a_replica_holds_it(pair: Pair) -> None:
    streams = streams_on(pair.redis, wait_ms=3000)
    await streams.open(RID, "fp", "u", start())
    taken = await streams.take(RID, "w")
    meta = streams.keys.meta(RID)
    timings = Timings(total_ms=1)
    done = DoneEvent(finish_reason=FinishReason.STOP, provider="p", model="m", timings=timings)
    pair.pause_replica(True)
    ending = asyncio.create_task(streams.append_final(RID, taken.fence, 1, done))
    async with asyncio.timeout(10):  # the primary holds it, the replica cannot yet
        while not await pair.redis.hexists(meta, "final_id"):  # noqa: ASYNC110 - no signal
            await asyncio.sleep(0.01)
    assert not ending.done(), "the final counted before any replica held it"
    pair.pause_replica(False)
    assert await ending is Final.WRITTEN
    assert await pair.replica_redis.hexists(meta, "final_id")


async def test_a_replica_that_does_not_answer_in_time_delays_the_start_only_that_long(
    pair: Pair,
) -> None:
    streams = streams_on(pair.redis, wait_ms=50)
    await streams.load_scripts()
    pair.pause_replica(True)
    opened = await asyncio.wait_for(streams.open(RID, "fp", "u", start()), 2)
    assert (opened.state, opened.unreplicated) == (Opened.STARTED, True)


async def test_the_wait_follows_a_script_redis_forgot(pair: Pair) -> None:
    streams = streams_on(pair.redis, wait_ms=3000)
    await pair.redis.script_flush()
    opened = await streams.open(RID, "fp", "u", start())
    assert (opened.state, opened.unreplicated) == (Opened.STARTED, False)
    assert await pair.replica_redis.exists(streams.keys.meta(RID)) == 1


@pytest.mark.cluster
async def test_on_a_cluster_the_wait_goes_to_the_primary_of_the_opening(
    redis_cluster: RedisClusterServers,
) -> None:
    cluster_redis = create_redis(redis_cluster.url)
    try:
        streams = streams_on(cluster_redis, wait_ms=2000)
        opened = await streams.open(RID, "fp", "u", start())
        assert (opened.state, opened.unreplicated) == (Opened.STARTED, False)
    finally:
        await cluster_redis.aclose()
