"""A chat's opening and its final count only once a replica holds them (``WAIT``): Redis
replicates asynchronously, and a failover that lost a started opening left an answer nobody
could end (the cluster chaos run's ``drained`` violation: resumes answered 404, no final
ever); one that lost a final left the answer to the gateway's deadline."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from deploy.local.servers import RedisClusterServers, RedisServer, redis_binary, valkey_binary
from echotune.common.keys import Keys
from echotune.common.messages import DoneEvent, FinishReason, StartEvent, Timings
from echotune.common.redis import create_redis
from echotune.common.request_stream import Final, Opened, RequestStreams

RID = "r-open-replicated"
BLOCKED_S = 0.3
"""How long a write must stay unanswered while its replica is stopped (it waits up to 3 s)."""
SERVERS = {"redis": redis_binary(), "valkey": valkey_binary()}


@contextmanager
def paused(server: RedisServer) -> Iterator[None]:
    """SIGSTOP ``server`` (a replica: it acknowledges nothing) until the block ends."""
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


class Pair:
    """A primary and its replica, each with a client."""

    def __init__(self, tmp_path: Path, binary: str) -> None:
        (tmp_path / "p").mkdir()
        (tmp_path / "r").mkdir()
        self.primary = RedisServer(str(tmp_path / "p"), binary=binary)
        follow = ["--replicaof", "127.0.0.1", str(self.primary.port)]
        self.replica = RedisServer(str(tmp_path / "r"), extra_args=follow, binary=binary)
        self.redis = create_redis(self.primary.url)
        self.replica_redis = create_redis(self.replica.url)

    async def start(self) -> None:
        self.primary.start()
        self.replica.start()
        async with asyncio.timeout(30):
            while (await self.replica_redis.info("replication"))["master_link_status"] != "up":  # noqa: ASYNC110 - Redis pushes no signal
                await asyncio.sleep(0.05)

    async def replica_lag(self) -> None:
        """A write on a connection of its own that the (stopped) replica does not hold."""
        other = create_redis(self.primary.url)
        try:
            await other.set(f"lag-{uuid.uuid4().hex}", 1)
        finally:
            await other.aclose()

    async def close(self) -> None:
        await self.redis.aclose()
        await self.replica_redis.aclose()
        self.replica.stop()
        self.primary.stop()


@pytest.fixture(params=[name for name, binary in SERVERS.items() if binary])
async def pair(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Pair]:
    pair = Pair(tmp_path, SERVERS[request.param] or "")
    try:
        await pair.start()
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


DONE = DoneEvent(
    finish_reason=FinishReason.STOP, provider="p", model="m", timings=Timings(total_ms=1)
)


async def held_back(
    write: Awaitable[Any], stored: Callable[[], Awaitable[Any]]
) -> asyncio.Task[Any]:
    """Start ``write``; once ``stored`` says the primary holds it, check it stays unanswered."""
    task = asyncio.ensure_future(write)
    async with asyncio.timeout(10):
        while not await stored():  # noqa: ASYNC110 - Redis pushes no signal
            await asyncio.sleep(0.01)
    done, _ = await asyncio.wait({task}, timeout=BLOCKED_S)
    assert not done, "the write counted before any replica held it"
    return task


async def test_an_opening_is_started_only_once_a_replica_holds_it(pair: Pair) -> None:
    streams = streams_on(pair.redis, wait_ms=3000)
    await streams.load_scripts()
    meta = streams.keys.meta(RID)
    with paused(pair.replica):
        opening = await held_back(
            streams.open(RID, "fp", "u", start()), lambda: pair.redis.exists(meta)
        )
    opened = await opening
    assert (opened.state, opened.unreplicated) == (Opened.STARTED, False)
    assert await pair.replica_redis.exists(meta) == 1


async def test_a_final_is_written_only_once_a_replica_holds_it(pair: Pair) -> None:
    streams = streams_on(pair.redis, wait_ms=3000)
    await streams.open(RID, "fp", "u", start())
    taken = await streams.take(RID, "w")
    meta = streams.keys.meta(RID)
    with paused(pair.replica):
        final = streams.append_final(RID, taken.fence, 1, DONE)
        ending = await held_back(final, lambda: pair.redis.hexists(meta, "final_id"))
    assert await ending is Final.WRITTEN
    assert await pair.replica_redis.hexists(meta, "final_id")


async def test_a_final_written_again_waits_for_the_replica_too(pair: Pair) -> None:
    """The retry of a final whose reply was lost finds it written: it writes again, or its
    ``WAIT`` would wait for nothing (on Valkey and Redis 7.2+, a connection that wrote
    nothing has nothing to wait for)."""
    streams = streams_on(pair.redis, wait_ms=3000)
    await streams.open(RID, "fp", "u", start())
    taken = await streams.take(RID, "w")
    assert await streams.append_final(RID, taken.fence, 1, DONE) is Final.WRITTEN
    with paused(pair.replica):
        await pair.replica_lag()
        again = streams.append_final(RID, taken.fence, 1, DONE)
        pending = asyncio.ensure_future(again)
        done, _ = await asyncio.wait({pending}, timeout=BLOCKED_S)
        assert not done, "the retried final counted before the replica caught up"
    assert await pending is Final.WRITTEN


async def test_a_replica_that_does_not_answer_in_time_delays_the_start_only_that_long(
    pair: Pair,
) -> None:
    streams = streams_on(pair.redis, wait_ms=50)
    await streams.load_scripts()
    with paused(pair.replica):
        opened = await asyncio.wait_for(streams.open(RID, "fp", "u", start()), 2)
    assert (opened.state, opened.unreplicated) == (Opened.STARTED, True)


async def test_the_wait_follows_a_script_redis_forgot(pair: Pair) -> None:
    streams = streams_on(pair.redis, wait_ms=3000)
    await pair.redis.script_flush()
    meta = streams.keys.meta(RID)
    with paused(pair.replica):
        opening = await held_back(
            streams.open(RID, "fp", "u", start()), lambda: pair.redis.exists(meta)
        )
    assert (await opening).state is Opened.STARTED
    assert await pair.replica_redis.exists(meta) == 1


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
