"""With REDIS_WAIT_REPLICAS, the relay hands out what it read only once a replica holds it.

The cluster chaos run (CI, stop 45) failed on it: a client got a final Redis had acknowledged
and then lost in a failover (its replica never held it); the worker wrote the final again, and
the client kept an event no one stored (``event_ids``: "1 not stored")."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from redis.asyncio import Redis
from redis.exceptions import AskError, MovedError, OutOfMemoryError, ResponseError

from deploy.local.servers import RedisClusterServers, RedisServer
from echotune.common.keys import Keys
from echotune.common.redis import create_redis
from echotune.common.request_stream import ReadBarrier, RequestStreams
from echotune.gateway.chat.relay import Entry, StreamRelay, Subscription
from tests.support.replicas import BLOCKED_S, Pair, paused


@asynccontextmanager
async def relay_on(
    redis: Redis, url: str, wait_ms: int, block_ms: int = 5000, max_ms: int = 3000
) -> AsyncIterator[StreamRelay]:
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    streams = RequestStreams(
        redis, keys, request_ttl_s=60, final_ttl_s=60, reader_ttl_ms=1000, wait_replicas=1,
        wait_max_ms=max_ms,
    )  # the relay's barrier writes the request's relayed mark, nothing of its own  # fmt: skip
    barrier = streams.read_barrier(wait_ms)
    relay = StreamRelay(url, keys, block_ms=block_ms, batch=100, barrier=barrier)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop()


async def held_until_resumed(
    redis: Redis, relay: StreamRelay, sub: Subscription, replica: RedisServer
) -> Entry:
    """Append to ``sub``'s stream while ``replica`` is stopped: nothing is relayed until it
    runs again."""
    with paused(replica):
        await redis.xadd(relay._keys.events(sub.request_id), {"type": "delta", "data": "held"})
        got = asyncio.ensure_future(sub.queue.get())
        done, _ = await asyncio.wait({got}, timeout=BLOCKED_S)
        assert not done, "relayed before a replica held it"
    return await asyncio.wait_for(got, 10)


async def test_an_entry_is_relayed_once_a_replica_holds_it(replica_pair: Pair) -> None:
    async with relay_on(replica_pair.redis, replica_pair.primary.url, wait_ms=3000) as relay:
        sub = relay.subscribe(f"r-{uuid.uuid4().hex}", "0-0")
        entry = await held_until_resumed(replica_pair.redis, relay, sub, replica_pair.replica)
        assert entry.data == "held"
        assert await replica_pair.replica_redis.xlen(sub.key) == 1
        assert unheld(relay) == 0, "handed out because the replica held it, not the wait"


async def test_an_online_replica_lagging_past_the_wait_holds_the_reads_back(
    replica_pair: Pair,
) -> None:
    """The cluster chaos run (CI, stop 48) failed again: reads went out once their 50 ms wait
    ran out, with a replica online but lagging; the primary was killed, the entry lost."""
    async with relay_on(replica_pair.redis, replica_pair.primary.url, wait_ms=50) as relay:
        sub = relay.subscribe(f"r-{uuid.uuid4().hex}", "0-0")
        entry = await held_until_resumed(replica_pair.redis, relay, sub, replica_pair.replica)
        assert entry.data == "held"
        assert unheld(relay) == 0
        assert barrier_of(relay).held_back == 1, "the read that waited past its wait"


async def test_a_replica_always_slower_than_the_wait_is_waited_for(lagging_pair: Pair) -> None:
    """Reading again wrote a new mark each time, so its wait never caught up: nothing was
    handed out while the replica confirmed everything, 160 ms late (review of stop 48)."""
    redis, url = lagging_pair.redis, lagging_pair.primary.url
    async with relay_on(redis, url, wait_ms=50, max_ms=2000) as relay:
        sub = relay.subscribe(f"r-{uuid.uuid4().hex}", "0-0")
        await lagging_pair.redis.xadd(sub.key, {"type": "delta", "data": "late"})
        entry = await asyncio.wait_for(sub.queue.get(), 2.5)
        assert entry.data == "late"
        assert await lagging_pair.replica_redis.xlen(sub.key) == 1
        assert (unheld(relay), barrier_of(relay).held_back) == (0, 1)


async def test_a_replica_paused_past_the_longest_wait_is_given_up_counted(
    replica_pair: Pair,
) -> None:
    """A replica online but stopped would stall every stream of the relay until Redis'
    repl-timeout (60 s): it waits ``wait_max_ms`` at most."""
    redis, primary = replica_pair.redis, replica_pair.primary
    async with relay_on(redis, primary.url, wait_ms=50, max_ms=300) as relay:
        sub = relay.subscribe(f"r-{uuid.uuid4().hex}", "0-0")
        with paused(replica_pair.replica):
            await redis.xadd(sub.key, {"type": "delta", "data": "given up"})
            entry = await asyncio.wait_for(sub.queue.get(), 3)
        assert entry.data == "given up"
        assert (unheld(relay), barrier_of(relay).held_back) == (1, 1)


async def test_with_no_replica_online_reads_go_after_their_wait_counted(
    replica_pair: Pair,
) -> None:
    """Nothing can hold them (a shard right after a failover): waiting would stall it."""
    replica_pair.replica.kill()
    async with asyncio.timeout(10):
        while (await replica_pair.redis.execute_command("ROLE"))[2]:  # noqa: ASYNC110 - Redis pushes no signal
            await asyncio.sleep(0.02)
    async with relay_on(replica_pair.redis, replica_pair.primary.url, wait_ms=50) as relay:
        sub = relay.subscribe(f"r-{uuid.uuid4().hex}", "0-0")
        added = time.monotonic()
        await replica_pair.redis.xadd(sub.key, {"type": "delta", "data": "alone"})
        entry = await asyncio.wait_for(sub.queue.get(), 2)
        waited = time.monotonic() - added
        assert entry.data == "alone"
        assert waited < 1, "a read waits its wait (50 ms: Redis' 100 ms ticks), twice if one was on"
        assert unheld(relay) == 1, "the read handed out unheld is counted (the empty ones not)"
        assert barrier_of(relay).held_back == 0


async def test_a_mark_redis_refuses_hands_the_reads_out_anyway(replica_pair: Pair) -> None:
    """Out of memory (maxmemory, noeviction) Redis refuses the mark's SET while reads go on:
    the relay handed out nothing, not even stored finals."""
    redis = replica_pair.redis
    async with relay_on(redis, replica_pair.primary.url, wait_ms=3000, block_ms=100) as relay:
        rid = f"r-{uuid.uuid4().hex}"
        await redis.xadd(relay._keys.events(rid), {"type": "delta", "data": "stored"})
        await redis.config_set("maxmemory", 1)  # the wake-up is refused too: a read in 0.1 s
        try:
            sub = relay.subscribe(rid, "0-0")
            entry = await asyncio.wait_for(sub.queue.get(), 5)
        finally:
            await redis.config_set("maxmemory", 0)
        assert entry.data == "stored"
        assert unheld(relay) >= 1


def barrier_of(relay: StreamRelay) -> ReadBarrier:
    barrier = relay._barrier
    assert barrier is not None
    return barrier


def unheld(relay: StreamRelay) -> int:
    return barrier_of(relay).unheld


@pytest.mark.cluster
async def test_on_a_cluster_an_entry_is_relayed_once_its_replica_holds_it_past_the_wait(
    redis_cluster: RedisClusterServers,
) -> None:
    cluster_redis = create_redis(redis_cluster.url)
    try:
        async with relay_on(cluster_redis, redis_cluster.url, wait_ms=50) as relay:
            rid = f"r-{uuid.uuid4().hex}"
            sub = relay.subscribe(rid, "0-0")
            replica = redis_cluster.replica_of(redis_cluster.primary_of(sub.key))
            entry = await held_until_resumed(cluster_redis, relay, sub, replica)
            assert entry.data == "held"
    finally:
        await cluster_redis.aclose()


ONLINE = ["master", 90, [["127.0.0.1", "6380", "80"]]]
CAUGHT_UP = ["master", 95, [["127.0.0.1", "6380", "90"]]]
ALONE = ["master", 90, []]


def replies_in_turn(*rounds: list[object]) -> Callable[[bytes, int], Awaitable[list[object]]]:
    """Stands in for the barrier's connection: each round of WAIT/ROLE replies in turn."""
    queued = list(rounds)

    async def again(packed: bytes, count: int) -> list[object]:
        assert (packed.split(b"\r\n")[2], packed.split(b"\r\n")[-2], count) == (b"WAIT", b"ROLE", 2)
        return queued.pop(0)

    return again


async def test_a_moved_mark_reads_again_an_asked_or_refused_one_hands_out_counted() -> None:
    """``MOVED``: the reads' node no longer serves the slot. ``ASK`` (a slot migrating: the
    events are still read here) and a refusal (out of memory) must not stall the reads."""
    barrier = ReadBarrier(Keys("t"), replicas=1, wait_ms=10, max_ms=1000)
    none = replies_in_turn()
    with pytest.raises(MovedError):
        await barrier.settle([MovedError("3999 127.0.0.1:6381"), 1, ONLINE], none, handing_out=True)
    await barrier.settle([AskError("3999 127.0.0.1:6381"), 0, ONLINE], none, handing_out=True)
    oom = OutOfMemoryError("command not allowed")
    await barrier.settle([oom, 0, ONLINE], none, handing_out=True)
    assert (barrier.unheld, barrier.held_back) == (2, 0)
    assert barrier.commands("r", asking=True)[0] == ("ASKING",)


async def test_reads_wait_for_an_online_replica_and_go_unheld_only_without_one() -> None:
    barrier = ReadBarrier(Keys("t"), replicas=1, wait_ms=10, max_ms=1000)
    await barrier.settle(["OK", 1, ONLINE], replies_in_turn(), handing_out=True)
    await barrier.settle(["OK", 0, ONLINE], replies_in_turn(), handing_out=False)
    assert (barrier.unheld, barrier.held_back) == (0, 0), "held, or nothing read"
    lagging = replies_in_turn([0, ONLINE], [0, CAUGHT_UP])  # WAIT chased its own target
    await barrier.settle(["OK", 0, ONLINE], lagging, handing_out=True)
    assert (barrier.unheld, barrier.held_back) == (0, 1), "held by the offset ROLE named"
    await barrier.settle(["OK", 0, ALONE], replies_in_turn(), handing_out=True)
    assert barrier.unheld == 1
    refused = ResponseError("NOPERM this user has no permissions to run the 'role' command")
    await barrier.settle(["OK", 0, refused], replies_in_turn(), handing_out=True)
    assert barrier.unheld == 2, "a refused ROLE says nothing: handed out, counted"
    wait_refused = ResponseError("NOPERM this user has no permissions to run the 'wait' command")
    await barrier.settle(["OK", wait_refused, ONLINE], replies_in_turn(), handing_out=True)
    assert barrier.unheld == 3, "a refused WAIT cannot be waited for: handed out, counted"
    assert barrier.commands("r")[-1] == ("ROLE",)
